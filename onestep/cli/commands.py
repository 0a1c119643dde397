"""What each ``onestep`` command does, with the checks that keep bad input to one line and leave
every file the user made untouched."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import OnestepError, OnestepWarning

# run files this project writes: a directory holding any of them (or nothing) is a run directory
RUN_MARKERS = (".onestep.lock", "network.json", "stats.jsonl", "checkpoints", "teacher_cache.safetensors",
               "teacher_network.safetensors")


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resume_point(out: Path, resume: str | None) -> Path | None:
    """The checkpoint a ``distill`` run starts from (None: step 0), after refusing an --output that
    holds somebody else's files or a finished run the user did not ask to continue."""
    from ..core.rundir import latest_valid_checkpoint, list_checkpoints

    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_MARKERS and p.name != "config.yaml")
        if foreign and not any((out / m).exists() for m in RUN_MARKERS):
            raise OnestepError(f"--output {out} holds files that are not a run's ({', '.join(foreign[:3])}); "
                               f"choose a new or empty directory")
    if resume is None:
        if list_checkpoints(out):
            raise OnestepError(f"{out} already holds checkpoints; pass --resume latest to continue or choose a new "
                               f"--output")
        return None
    if not out.is_dir():
        raise OnestepError(f"nothing to resume: {out} does not exist; check the path, or drop --resume to start a run")
    path, skipped = latest_valid_checkpoint(out)
    for bad, why in skipped:
        warnings.warn(f"skipping {bad.name}: {why}", OnestepWarning, stacklevel=2)
    if path is None and skipped:
        raise OnestepError(f"no readable checkpoint in {out}/checkpoints ({len(skipped)} damaged); start a new run")
    if path is None:
        warnings.warn(f"no checkpoint in {out} yet; starting at step 0", OnestepWarning, stacklevel=2)
    elif skipped:
        warnings.warn(f"resuming from {path.name}", OnestepWarning, stacklevel=2)
    return path


def cmd_distill(args) -> int:
    from .. import config as config_mod
    from ..build import build_trainer, load_config
    from ..core.paths import writable_dir
    from ..core.rundir import latest_checkpoint, latest_valid_checkpoint
    from ..train.state import check_checkpoint

    overrides = list(args.overrides)
    if args.attention:
        overrides.append(f"attention={args.attention}")
    cfg = load_config(args.config, overrides)
    if args.download and cfg.data.dataset == "fashion-mnist":  # into the user cache, where the run finds it
        from ..data.fashion import locate

        locate(cfg.data.root, download=True)
    if args.processes is not None and not args.dry_run:
        raise OnestepError("--processes sets the process count of --dry-run's memory estimate only; launch N "
                           "processes with torchrun --nproc_per_node N or accelerate launch --num_processes N")
    if args.dry_run:
        processes = args.processes if args.processes is not None else int(os.environ.get("WORLD_SIZE", "1"))
        if processes < 1:
            raise OnestepError(f"--processes must be at least 1, got {processes}")
        print(config_mod.dump_yaml(cfg), end="")
        print(_memory_estimate(cfg, processes))
        return 0
    out = writable_dir(args.output, "--output")
    if _is_main_rank():
        resume = resume_point(out, args.resume)
    else:  # the other ranks of a multi-process run follow rank 0's checks
        resume = latest_valid_checkpoint(out)[0] if args.resume else None
    if resume is not None:
        check_checkpoint(resume, cfg)  # a changed config is refused before anything is loaded or written
    trainer = build_trainer(cfg, out)
    trainer.fit(resume=resume)
    if trainer.acc.is_main_process:
        print(f"done: {trainer.step} steps, checkpoint {latest_checkpoint(out)}")
    return 0


def _memory_estimate(cfg, processes: int) -> str:
    """The per-GPU memory table (YAML comments), or one comment line saying why there is none."""
    from ..train.memory import estimate

    try:
        return estimate(cfg, processes).format()
    except OnestepError as exc:
        return f"# memory estimate unavailable: {exc}"
    except Exception as exc:  # a network the meta-device trace does not handle: the config still printed
        return f"# memory estimate unavailable: the network could not be traced on the meta device ({type(exc).__name__})"


def cmd_sample(args) -> int:
    import numpy as np

    from ..core.images import save_grid
    from ..core.io import atomic_write
    from ..core.paths import writable_file
    from ..core.samplers import generate
    from ..runs import conditioning, default_device, load_generator

    for flag, value in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size),
                        ("--nrow", args.nrow if args.nrow is not None else 1)):
        if value < 1:
            raise OnestepError(f"{flag} must be at least 1, got {value}")
    out = writable_file(args.output, "--output", (".npy", ".png"))
    device = default_device()
    generator, cfg, step = load_generator(args.run, ema=args.ema, device=device)
    network = generator.network
    if args.class_label is not None and network.cond_kind == "class":
        bad = [c for c in args.class_label if not 0 <= c < network.num_classes]
        if bad:
            raise OnestepError(f"--class-label {bad[0]} is out of range: this run has classes 0..{network.num_classes - 1}")
    cond_fn, decode = conditioning(network, cfg, args.class_label, args.prompt)
    if out.suffix == ".png" and decode is None:
        raise OnestepError("PNG grids need an image run; use .npy for this run")
    samples = generate(generator, args.num_samples, args.seed, tuple(network.sample_shape), cond_fn=cond_fn,
                       batch_size=args.batch_size, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":  # (written whole or not at all)
        atomic_write(out, lambda tmp: np.save(tmp, samples.numpy()))
    else:
        nrow = args.nrow or (len(args.class_label) if args.class_label else None)
        if nrow is None and network.cond_kind == "class":
            nrow = network.num_classes
        save_grid(decode(samples.to(device)).cpu(), out, nrow=nrow)
    print(f"wrote {len(samples)} samples from step {step} to {out}")
    return 0


def cmd_export(args) -> int:
    from ..core.paths import new_output_dir

    protect = (args.run, _run_teacher(args.run))
    if args.lora:
        from ..export_lora import KIND, export_lora

        output = new_output_dir(args.output, "--output", overwrite=args.overwrite, protect=protect, kind=KIND)
        path = export_lora(args.run, output, ema=args.ema)
        print(f"exported the LoRA of {args.run} to {path} (README.md says how to load it)")
        return 0
    from ..export import export_run

    output = new_output_dir(args.output, "--output", overwrite=args.overwrite, protect=protect)
    path = export_run(args.run, output, ema=args.ema)
    print(f"exported {args.run} to {path}")
    return 0


def _run_teacher(run) -> str | None:
    """The teacher directory a run was distilled from (its config.yaml), which an export must never replace."""
    import yaml

    try:
        teacher = yaml.safe_load((Path(run) / "config.yaml").read_text()).get("teacher", {})
        return teacher.get("path") if isinstance(teacher, dict) else None
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def cmd_eval(args) -> int:
    import json

    from ..core.io import atomic_write_text
    from ..core.paths import writable_file
    from ..evaluation import score
    from ..teachers.diffusers import read_prompts

    for flag, value in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size)):
        if value < 2:
            raise OnestepError(f"{flag} must be at least 2, got {value}")
    out = writable_file(args.output, "--output", (".json",)) if args.output else None
    if args.run:  # checked before the evaluation, not after it
        writable_file(Path(args.run) / "eval.json", "the run's eval.json", (".json",))
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.run:
        images = score.run_samples(args.run, args.ema, args.num_samples, args.seed, args.batch_size)
    else:
        prompts = read_prompts(args.prompts) if args.prompts else None
        images = score.pipeline_samples(args.pipeline, args.num_samples, args.seed, args.batch_size, prompts)
    result = score.evaluate(images, args.ref, args.features, metrics, args.cache_root, args.inception_weights,
                            args.batch_size, download=args.download)
    result.update(seed=args.seed, source=str(args.run or args.pipeline), ema=bool(args.ema))
    text = json.dumps(result, indent=1)
    print(score.table(result))
    print(text)
    if out is not None:
        atomic_write_text(text, out)
    if args.run:  # the run's model card (onestep export) quotes it
        atomic_write_text(text, Path(args.run) / "eval.json")
    return 0


def cmd_train_teacher(args) -> int:
    from .. import config as config_mod
    from ..core.paths import new_output_dir, writable_dir
    from ..train.teacher_training import TeacherTrainingConfig, train_teacher, work_dir_for

    cfg = config_mod.load(args.config, args.overrides, cls=TeacherTrainingConfig)
    output = new_output_dir(args.output, "--output", overwrite=args.overwrite, kind="EDMPipeline")
    work = writable_dir(args.checkpoints or work_dir_for(output), "--checkpoints")
    if work.resolve() == output.resolve() or output.resolve() in work.resolve().parents:
        raise OnestepError(f"--checkpoints {work} lies inside --output {output}, which is replaced when training "
                           f"ends; choose a directory beside it")
    info = train_teacher(cfg, output, progress=cfg.progress, work_dir=work, resume=args.resume,
                         download=args.download)
    print(f"trained teacher ({info['parameters']} parameters, {info['steps']} steps, {info['seconds']}s, "
          f"final loss {info['final_loss']:.4f}) -> {output} (checkpoints: {work})")
    return 0


def cmd_demo(args) -> int:
    from ..core.paths import writable_dir
    from ..demo import run_demo

    if args.num_samples is not None and args.num_samples < 2:
        raise OnestepError(f"--num-samples must be at least 2 (a Frechet distance needs a covariance), got {args.num_samples}")
    out = writable_dir(args.output or ("runs/demo" if args.preset == "digits" else f"runs/{args.preset}"), "--output")
    run_demo(out, args.config, args.overrides, args.num_samples, args.seed, preset=args.preset,
             download=args.download)
    print(f"demo written to {out}/ (report.md, samples.png, teacher.png, fd_vs_nfe.png, pipeline/)")
    return 0


def cmd_pairs(args) -> int:
    import time

    import torch

    from ..build import build_teacher, load_config, make_pairs

    cfg = load_config(args.config, list(args.overrides) + ["data.pairs=null"])
    out = Path(args.output)
    if out.exists():
        raise OnestepError(f"--output {out} exists; choose another path (a pairs file is never overwritten)")
    if not out.parent.is_dir():
        raise OnestepError(f"--output {out}: its directory {out.parent} does not exist")
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the teacher's sampling, where it is fastest
    teacher = build_teacher(cfg, device=device, progress=cfg.train.progress).to(device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    n = make_pairs(teacher, cfg, out, dtype, device=device, progress=cfg.train.progress)
    print(f"{n} teacher pairs ({cfg.data.cache_steps} Heun steps, NFE {2 * cfg.data.cache_steps - 1}, {args.dtype}) "
          f"-> {out} in {time.perf_counter() - t0:.0f}s; name it in data.pairs")
    return 0


def cmd_objectives(args) -> int:
    from ..objectives import table

    print(table())
    return 0


def cmd_keys(args) -> int:
    from ..config.keys import key_table

    print(key_table())
    return 0
