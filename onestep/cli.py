"""Command line: ``onestep distill | sample | export | train-teacher | demo | objectives | keys``.

User errors print one line (``onestep: error: ...``) and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .errors import OnestepError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line, like every other error."""

    def error(self, message):
        raise OnestepError(f"{message} (see `{self.prog} --help`)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onestep", description="Distill a diffusion model into a one-step generator.")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("distill", help="distill a teacher into a one-step generator")
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--output", required=True, help="run directory")
    p.add_argument("--resume", choices=["latest"], help="continue from the run's latest checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--attention", choices=["auto", "xformers", "flash", "efficient", "math"],
                   help="attention backend (overrides the config's attention key)")
    _add_common(p)

    p = sub.add_parser("sample", help="draw one-step samples from a run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--ema", action="store_true", help="use the EMA generator")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="FILE.npy (array) or FILE.png (image grid)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--class-label", type=int, action="append", default=None,
                   help="class label(s) for class-conditional runs (default: cycle over classes)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt(s) for text-to-image runs (default: the run's prompts file)")
    p.add_argument("--nrow", type=int, default=None, help="images per row of a .png grid")
    _add_common(p)

    p = sub.add_parser("export", help="export a run as a diffusers pipeline directory")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--ema", action="store_true", help="export the EMA generator")
    p.add_argument("--output", required=True, help="pipeline directory to write")
    _add_common(p)

    p = sub.add_parser("train-teacher", help="train a bundled teacher (EDM loss) as a diffusers pipeline")
    p.add_argument("--config", required=True, help="YAML teacher-training config (configs/digits-teacher.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output", required=True, help="pipeline directory to write")
    _add_common(p)

    p = sub.add_parser("demo", help="distill the bundled digits teacher, evaluate, export (make demo)")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--config", default=None, help="distillation config (default: the bundled digits.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per FD evaluation")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    sub.add_parser("objectives", help="list the registered objectives")
    sub.add_parser("keys", help="print every config key: what it accepts, its default, its meaning")
    return parser


def cmd_distill(args) -> int:
    from . import config as config_mod
    from .build import build_trainer
    from .core.rundir import latest_checkpoint

    overrides = list(args.overrides)
    if args.attention:
        overrides.append(f"attention={args.attention}")
    cfg = config_mod.load(args.config, overrides)
    if args.dry_run:
        print(config_mod.dump_yaml(cfg), end="")
        return 0
    out = Path(args.output)
    resume = None
    existing = latest_checkpoint(out)
    if args.resume == "latest":
        resume = existing  # None: nothing to resume yet, start fresh
    elif existing is not None:
        raise OnestepError(
            f"{out} already holds checkpoints; pass --resume latest to continue or choose a new --output"
        )
    trainer = build_trainer(cfg, out)
    trainer.fit(resume=resume)
    if trainer.acc.is_main_process:
        print(f"done: {trainer.step} steps, checkpoint {latest_checkpoint(out)}")
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from .core.samplers import generate
    from .runs import conditioning, default_device, load_generator

    if args.num_samples < 1:
        raise OnestepError("--num-samples must be at least 1")
    out = Path(args.output)
    if out.suffix not in (".npy", ".png"):
        raise OnestepError(f"--output must end in .npy or .png, got '{out.name}'")
    device = default_device()
    generator, cfg, step = load_generator(args.run, ema=args.ema, device=device)
    network = generator.network
    cond_fn, decode = conditioning(network, cfg, args.class_label, args.prompt)
    if out.suffix == ".png" and decode is None:
        raise OnestepError("PNG grids need an image run; use .npy for this run")
    samples = generate(generator, args.num_samples, args.seed, tuple(network.sample_shape), cond_fn=cond_fn,
                       batch_size=args.batch_size, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, samples.numpy())
    else:
        from .core.images import save_grid

        nrow = args.nrow or (len(args.class_label) if args.class_label else None)
        if nrow is None and network.cond_kind == "class":
            nrow = network.num_classes
        save_grid(decode(samples.to(device)).cpu(), out, nrow=nrow)
    print(f"wrote {len(samples)} samples from step {step} to {out}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    path = export_run(args.run, args.output, ema=args.ema)
    print(f"exported {args.run} to {path}")
    return 0


def cmd_train_teacher(args) -> int:
    from . import config as config_mod
    from .train.teacher_training import TeacherTrainingConfig, train_teacher

    cfg = config_mod.load(args.config, args.overrides, cls=TeacherTrainingConfig)
    info = train_teacher(cfg, args.output, progress=cfg.progress)
    print(f"trained teacher ({info['parameters']} parameters, {info['steps']} steps, {info['seconds']}s, "
          f"final loss {info['final_loss']:.4f}) -> {args.output}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .resources import DEMO_CONFIG as DEFAULT_CONFIG

    run_demo(args.output, args.config or DEFAULT_CONFIG, args.overrides, args.num_samples, args.seed)
    print(f"demo written to {args.output}/ (report.md, samples.png, teacher.png, fd_vs_nfe.png, pipeline/)")
    return 0


def cmd_objectives(args) -> int:
    from .objectives import table

    print(table())
    return 0


def cmd_keys(args) -> int:
    from .config.keys import key_table

    print(key_table())
    return 0


COMMANDS = {"distill": cmd_distill, "sample": cmd_sample, "export": cmd_export,
            "train-teacher": cmd_train_teacher, "demo": cmd_demo, "objectives": cmd_objectives, "keys": cmd_keys}


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings in one line: ours as ``onestep: warning: ...``, others with their category."""
    ours = category.__module__.startswith("onestep")
    return f"onestep: warning: {message}\n" if ours else f"{category.__name__}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.formatwarning = _format_warning
    debug = "--debug" in argv or os.environ.get("ONESTEP_DEBUG") == "1"
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except OnestepError as exc:
        if debug:
            raise
        print(f"onestep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onestep: interrupted; resume with --resume latest", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
