"""``onestep demo``: distill a bundled teacher, evaluate against it, export, report.

Presets: ``digits`` (``make demo``, the embedded default: the bundled 8x8 digits teacher, FD-digits
on 1,000 samples, the teacher swept at run time) and ``fashion`` (``make fashion``: the
Fashion-MNIST teacher trained here, FD-fashion on 5,000 samples against the 10,000 test images at
evaluation seeds 0, 1 and 2; what depends only on the teacher is read from its stored
evaluation, ``evaluation.teacher_eval``).

Writes ``<output>/``: ``run/`` (the distillation run), ``report.json``, ``report.md``,
``samples.png`` (student, one row per class), ``teacher.png`` (teacher at its best NFE, same
noise), ``fd_vs_nfe.png``, ``discriminator.png`` and ``pipeline/`` (the exported one-step
pipeline). Every stage resumes: an interrupted demo continues from the run's last checkpoint,
and the digits teacher sweep is cached in ``teacher_sweep.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .build import build_trainer, load_config
from .core.images import save_grid
from .core.io import atomic_write_text
from .core.paths import new_output_dir
from .core.rundir import is_temporary, latest_valid_checkpoint
from .core.samplers import per_index_noise
from .data.datasets import load_named
from .errors import OnestepError
from .evaluation.copy_check import copy_report, has_held_out, with_held_out
from .evaluation.discriminator import discriminator_summary
from .evaluation.fd import FDScorer
from .evaluation.nfe import nfe_sweep, student_samples, teacher_samples_at
from .evaluation.plots import read_stats, save_discriminator_plot, save_fd_plot
from .evaluation.teacher_eval import (
    GRID_FILE,
    TeacherProtocol,
    grid_labels,
    read_evaluation,
    save_teacher_grid,
)
from .export import export_run
from .resources import DEMO_CONFIG, FASHION_CONFIG
from .runs import load_generator

# what the demo writes into its output directory (anything else there is the user's: refused)
DEMO_FILES = {"run", "pipeline", "pipeline.partial", "report.json", "report.md", "samples.png", "teacher.png",
              "fd_vs_nfe.png", "discriminator.png", "teacher_sweep.json", "timings.json"}


@dataclass(frozen=True)
class Preset:
    """A benchmark: its config, feature network, data set and evaluation protocol."""

    name: str
    config: Path
    features: str
    dataset: str  # FD against its test split (the digits: their one set), copy check against its train split
    num_samples: int
    seeds: tuple[int, ...]  # evaluation seeds; the first is reported, all are recorded
    teacher: TeacherProtocol | None  # None: the teacher is swept at run time (cached in the output)
    sweep_nfes: tuple[int, ...] = (1, 3, 7, 15, 31, 63)

    def dataset_at(self, size: int) -> str:
        """Its data set for models of ``size`` x ``size`` samples (the digits' 16x16 variant, digits16)."""
        return "digits16" if self.dataset == "digits" and size == 16 else self.dataset


PRESETS = {
    "digits": Preset("digits", DEMO_CONFIG, "digits", "digits", 1000, (0,), None),
    "fashion": Preset("fashion", FASHION_CONFIG, "fashion", "fashion-mnist", 5000, (0, 1, 2),
                      TeacherProtocol("fashion", "fashion-mnist")),
}


def run_demo(output="runs/demo", config=None, overrides=(), num_samples: int | None = None, seed: int = 0,
             preset: str = "digits", download: bool = False) -> dict:
    p = PRESETS[preset]
    out = Path(output)
    run = out / "run"
    config = config or p.config
    cfg = load_config(config, list(overrides))
    if out.is_dir():
        foreign = sorted(f.name for f in out.iterdir() if f.name not in DEMO_FILES and not is_temporary(f.name))
        if foreign:
            raise OnestepError(f"{out} holds files that are not the demo's ({', '.join(foreign[:3])}); choose another "
                               f"--output")
    n = num_samples or p.num_samples
    seeds = (seed, *(s for s in p.seeds[1:] if s != seed)) if p.teacher is not None else (seed,)
    reference = load_named(p.dataset, "test", download=download)[0]
    train = load_named(p.dataset, "train")[0]
    where = Path(cfg.teacher.path) if Path(cfg.teacher.path).is_absolute() else Path(config).parent / cfg.teacher.path
    if p.teacher is not None and not (where / "model_index.json").is_file():
        raise OnestepError(f"the {p.name} teacher is not at {where}: train it with `onestep train-teacher "
                           f"--config configs/{p.name}-teacher.yaml --output DIR`, evaluate it once with "
                           f"`python eval/teacher_eval.py --teacher DIR`, and pass --set teacher.path=DIR")
    teacher_eval = read_evaluation(cfg.teacher.path, p.teacher) if p.teacher is not None else None
    out.mkdir(parents=True, exist_ok=True)
    timings = _read_json(out / "timings.json")

    # 1. distill (resumes from the last sound checkpoint; a finished run is not retrained)
    resume = latest_valid_checkpoint(run)[0]
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, run)
    trainer.fit(resume=resume)
    if trainer.step > (int(resume.stem.split("-")[1]) if resume else 0) or "distill_seconds" not in timings:
        timings["distill_seconds"] = timings.get("distill_seconds", 0.0) + time.perf_counter() - t0
    atomic_write_text(json.dumps(timings), out / "timings.json")
    teacher, schedule = trainer.teacher, cfg.schedule
    del trainer
    if reference.shape[-1] != teacher.sample_shape[-1]:  # the 16x16 digits variant
        reference = train = load_named(p.dataset_at(teacher.sample_shape[-1]))[0]

    # 2. the teacher: swept here (cached) or read from its stored evaluation; the student's FD
    scorer = FDScorer(reference, p.features)
    teacher_rows, best = _teacher_rows(p, teacher, schedule, scorer, n, seed, out, teacher_eval)
    use_ema = cfg.train.ema_halflife_kimg > 0
    generator, _, step = load_generator(run, ema=use_ema)
    student_fd, x_student, student_ips = {}, None, None
    for s in seeds:
        x, ips = student_samples(generator, n, s, teacher.num_classes)
        student_fd[str(s)] = scorer(x)
        if x_student is None:
            x_student, student_ips = x, ips
    student = {"fd": student_fd[str(seed)], "images_per_s": student_ips, "objective": _objective_label(cfg)}
    floor = {str(s): scorer.floor(train, n, s) for s in seeds}

    # 3. pictures: one row per class for student and teacher (at its best NFE), the same noise
    labels = grid_labels(teacher.num_classes) if teacher.num_classes else None
    z = per_index_noise(seed + 1, 0, len(labels) if labels is not None else 100, teacher.sample_shape)
    with torch.no_grad():
        save_grid(generator(z, labels), out / "samples.png", nrow=10)
    shipped_grid = Path(cfg.teacher.path) / GRID_FILE
    if teacher_eval is not None and seed == 0 and shipped_grid.is_file():
        shutil.copyfile(shipped_grid, out / "teacher.png")  # made from the same noise (seed 1)
    else:
        save_teacher_grid(teacher, schedule, best["nfe"], out / "teacher.png", seed + 1)
    save_fd_plot(teacher_rows, student, out / "fd_vs_nfe.png", title=f"FD-{p.features} vs NFE")
    run_stats = read_stats(run / "stats.jsonl")
    has_discriminator = save_discriminator_plot(run_stats, out / "discriminator.png")

    # 3b. copy check: the student may not win by reproducing training images
    if teacher_eval is not None:
        copies = copy_report(x_student, teacher_eval["nearest_training_distance"], train)
    else:
        x_teacher, _ = teacher_samples_at(teacher, schedule, best["nfe"], n, seed)
        copies = copy_report(x_student, x_teacher, train)
    if has_held_out(reference, train):  # fashion's test split
        copies = with_held_out(copies, reference, train, n, seed, student=x_student)

    # 4. export (replacing the demo's own earlier export)
    export_run(run, new_output_dir(out / "pipeline", "the demo's pipeline", overwrite=True), ema=use_ema)

    report = {
        "preset": p.name, "features": p.features, "objective": student["objective"],
        "student": {"fd": student["fd"], "fd_by_seed": student_fd, "nfe": 1, "images_per_s": student_ips,
                    "ema": use_ema, "step": step},
        "teacher": [{"nfe": r["nfe"], "fd": r["fd"], "images_per_s": r["images_per_s"]} for r in teacher_rows],
        "teacher_best": best,
        "fd_ratio_student_to_best_teacher": student["fd"] / best["fd"],
        "fd_ratio_by_seed": {s: student_fd[s] / best["fd_by_seed"][s] for s in student_fd if s in best["fd_by_seed"]},
        "speedup_vs_best_teacher": student_ips / best["images_per_s"],
        "real_vs_real_fd": floor[str(seed)], "real_vs_real_fd_by_seed": floor,
        "nearest_training_distance": copies,
        "discriminator_plot": has_discriminator,
        "discriminator": discriminator_summary(run_stats) or None,
        "distill_seconds": timings["distill_seconds"],
        "num_samples": n, "seed": seed, "seeds": list(seeds), "config": str(config),
    }
    atomic_write_text(json.dumps(report, indent=1), out / "report.json")
    atomic_write_text(_markdown(report), out / "report.md")
    print(_markdown(report))
    return report


def _teacher_rows(p: Preset, teacher, schedule, scorer, n: int, seed: int, out: Path, stored: dict | None):
    """(the teacher's FD-by-NFE rows, its best setting {"nfe", "fd", "fd_by_seed", "images_per_s"})."""
    if stored is not None:
        best_nfe = stored["best_nfe"]
        speed = next(r["images_per_s"] for r in stored["sweep"] if r["nfe"] == best_nfe)
        if str(seed) not in stored["fd"] or n != stored["protocol"]["num_samples"]:
            raise OnestepError(f"the teacher's stored evaluation has {stored['protocol']['num_samples']} samples at "
                               f"seeds {', '.join(stored['fd'])}; use those, or evaluate it again (eval/teacher_eval.py)")
        return stored["sweep"], {"nfe": best_nfe, "fd": stored["fd"][str(seed)], "fd_by_seed": stored["fd"],
                                 "images_per_s": speed}
    sweep_file = out / "teacher_sweep.json"
    sweep = _read_json(sweep_file).get("rows")
    if not sweep:
        print("evaluating the teacher at NFE " + ", ".join(map(str, p.sweep_nfes)) + " ...", flush=True)
        sweep = nfe_sweep(teacher, schedule, scorer, p.sweep_nfes, n, seed)
        atomic_write_text(json.dumps({"rows": sweep}), sweep_file)
    best = min(sweep, key=lambda r: r["fd"])
    return sweep, {"nfe": best["nfe"], "fd": best["fd"], "fd_by_seed": {str(seed): best["fd"]},
                   "images_per_s": best["images_per_s"]}


def _objective_label(cfg) -> str:
    o = cfg.objective
    return f"{o.name}({o.f})" if o.f else o.name


def _read_json(path: Path) -> dict:
    """A cache file of the demo's own; unreadable (a torn write) counts as absent and is remade."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def _markdown(r: dict) -> str:
    fd = f"FD-{r['features']}"
    best = r["teacher_best"]
    lines = [
        f"# onestep demo ({r['preset']}): the teacher in one step",
        "",
        f"Objective: `{r['objective']}`; distillation took {r['distill_seconds']:.0f} s on this machine.",
        "",
        f"| sampler | NFE | {fd} | images/s |",
        "|---|---:|---:|---:|",
    ]
    for t in r["teacher"]:
        lines.append(f"| teacher (Heun) | {t['nfe']} | {t['fd']:.2f} | {t['images_per_s']:.0f} |")
    s = r["student"]
    lines.append(f"| **one-step student** | 1 | **{s['fd']:.2f}** | {s['images_per_s']:.0f} |")
    lines += ["", f"Student {fd} / best teacher {fd} (NFE {best['nfe']}): "
              f"**{r['fd_ratio_student_to_best_teacher']:.2f}**; speed-up over it: "
              f"**{r['speedup_vs_best_teacher']:.0f}x**. Real-vs-real floor: {r['real_vs_real_fd']:.2f} "
              f"({r['num_samples']} samples)."]
    if len(r["fd_ratio_by_seed"]) > 1:
        lines += ["", "| evaluation seed | student | best teacher | ratio | real-vs-real floor |",
                  "|---:|---:|---:|---:|---:|"]
        for seed, ratio in r["fd_ratio_by_seed"].items():
            lines.append(f"| {seed} | {s['fd_by_seed'][seed]:.2f} | {best['fd_by_seed'][seed]:.2f} | {ratio:.2f} | "
                         f"{r['real_vs_real_fd_by_seed'].get(seed, float('nan')):.2f} |")
    c = r["nearest_training_distance"]
    lines += [
        "",
        f"Copy check (L2 distance to the nearest training image): student median {c['student_median']:.3f}, "
        f"teacher median {c['teacher_median']:.3f}; {100 * c['student_below_teacher_p5']:.1f}% of student samples "
        f"lie closer than the teacher's 5th percentile (5% if it copies no more than its teacher)."
        + (f" Real held-out images by the same measure: median {c['held_out_median']:.3f}, "
           f"{100 * c['held_out_below_teacher_p5']:.1f}% below the teacher's 5th percentile."
           if "held_out_median" in c else ""),
    ]
    if c.get("data_copying", {}).get("cells_used"):
        dc = c["data_copying"]
        verdict = ("closer to the training images than real images it never saw (data-copying)" if dc["c_t"] < 0
                   else "no closer to the training images than real images it never saw (no data-copying)")
        lines += ["", f"Data-copying test (Meehan et al. 2020: nearest-training-image distances of the student's "
                  f"samples against held-out real images', Mann-Whitney Z per k-means cell of the training set, "
                  f"{dc['cells_used']} of {dc['cells']} cells): C_T = **{dc['c_t']:+.1f}** (global Z_U "
                  f"{dc['z_u']:+.1f}): the student's samples lie {verdict}."]
    lines += [""]
    d = r.get("discriminator")
    if d and d.get("disc_acc_bins"):
        edges = d["sigma_bins"]
        names = [f"{edges[k]:g}-{edges[k + 1]:g}" for k in range(len(edges) - 1)] + [f"> {edges[-1]:g}"]
        lines += [f"Discriminator (mean of the last {d['rows']} held-out checks: real images it never trained on against fresh "
                  f"student samples): accuracy {d['disc_acc_heldout']:.3f}.", "",
                  "| sigma | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
                  "| held-out accuracy | " + " | ".join(f"{v:.2f}" for v in d["disc_acc_bins"]) + " |",
                  "| std of log r | " + " | ".join(f"{v:.2f}" for v in d["logr_std"]) + " |", ""]
    lines += [
        "![student](samples.png) ![teacher](teacher.png) ![FD vs NFE](fd_vs_nfe.png)"
        + (" ![discriminator](discriminator.png)" if r.get("discriminator_plot") else ""),
        "",
    ]
    return "\n".join(lines)
