"""``onestep demo``: distill the bundled digits teacher, evaluate, export, report.

Writes ``<output>/``: ``run/`` (the distillation run), ``report.json``, ``report.md``,
``samples.png`` (student, one row per class), ``teacher.png`` (teacher at its best NFE),
``fd_vs_nfe.png`` and ``pipeline/`` (the exported one-step pipeline). Every stage resumes:
an interrupted demo continues from the run's last checkpoint, and the teacher sweep is
cached in ``teacher_sweep.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .build import build_trainer, load_config
from .core.images import save_grid
from .core.io import atomic_write_text
from .core.paths import new_output_dir
from .core.rundir import is_temporary, latest_valid_checkpoint
from .core.samplers import edm_sample, heun_steps_for_nfe, per_index_noise
from .data.datasets import load_digits
from .errors import OnestepError
from .evaluation.copy_check import copy_report
from .evaluation.fd import FDScorer
from .evaluation.nfe import nfe_sweep, student_samples, teacher_samples_at
from .evaluation.plots import read_stats, save_discriminator_plot, save_fd_plot
from .export import export_run
from .resources import DEMO_CONFIG
from .runs import load_generator

NFES = (1, 3, 7, 15, 31, 63)
# what the demo writes into its output directory (anything else there is the user's: refused)
DEMO_FILES = {"run", "pipeline", "pipeline.partial", "report.json", "report.md", "samples.png", "teacher.png",
              "fd_vs_nfe.png", "discriminator.png", "teacher_sweep.json", "timings.json"}


def _class_rows(num_classes: int, per_class: int) -> torch.Tensor:
    """Labels for a grid with one row per class."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def run_demo(output="runs/demo", config=DEMO_CONFIG, overrides=(), num_samples: int = 1000,
             seed: int = 0) -> dict:
    out = Path(output)
    run = out / "run"
    cfg = load_config(config, list(overrides))
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_FILES and not is_temporary(p.name))
        if foreign:
            raise OnestepError(f"{out} holds files that are not the demo's ({', '.join(foreign[:3])}); choose another "
                               f"--output")
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

    # 2. teacher NFE sweep (cached) and the student's one-step FD
    reference, _ = load_digits(size=teacher.sample_shape[-1])
    scorer = FDScorer(reference)
    sweep_file = out / "teacher_sweep.json"
    sweep = _read_json(sweep_file).get("rows")
    if not sweep:
        print("evaluating the teacher at NFE " + ", ".join(map(str, NFES)) + " ...", flush=True)
        sweep = nfe_sweep(teacher, schedule, scorer, NFES, num_samples, seed)
        atomic_write_text(json.dumps({"rows": sweep}), sweep_file)
    use_ema = cfg.train.ema_halflife_kimg > 0
    generator, _, step = load_generator(run, ema=use_ema)
    x_student, student_ips = student_samples(generator, num_samples, seed, teacher.num_classes)
    student = {"fd": scorer(x_student), "images_per_s": student_ips, "objective": _objective_label(cfg),
               "ema": use_ema, "step": step}
    best = min(sweep, key=lambda r: r["fd"])
    floor = scorer.floor(reference, num_samples)

    # 3. pictures: one row per class for student and teacher (at its best NFE)
    labels = _class_rows(teacher.num_classes, 10)
    z = per_index_noise(seed + 1, 0, len(labels), teacher.sample_shape)
    with torch.no_grad():
        save_grid(generator(z, labels), out / "samples.png", nrow=10)
        save_grid(edm_sample(teacher.denoise, z, schedule, heun_steps_for_nfe(best["nfe"]), labels),
                  out / "teacher.png", nrow=10)
    save_fd_plot(sweep, student, out / "fd_vs_nfe.png")
    has_discriminator = save_discriminator_plot(read_stats(run / "stats.jsonl"), out / "discriminator.png")

    # 3b. copy check: the student may not win by reproducing training digits
    x_teacher, _ = teacher_samples_at(teacher, schedule, best["nfe"], num_samples, seed)
    copies = copy_report(x_student, x_teacher, reference)

    # 4. export (replacing the demo's own earlier export)
    export_run(run, new_output_dir(out / "pipeline", "the demo's pipeline", overwrite=True), ema=use_ema)

    report = {
        "objective": student["objective"],
        "student": {"fd_digits": student["fd"], "nfe": 1, "images_per_s": student["images_per_s"],
                    "ema": use_ema, "step": step},
        "teacher": [{"nfe": r["nfe"], "fd_digits": r["fd"], "images_per_s": r["images_per_s"]} for r in sweep],
        "teacher_best": {"nfe": best["nfe"], "fd_digits": best["fd"]},
        "fd_ratio_student_to_best_teacher": student["fd"] / best["fd"],
        "speedup_vs_best_teacher": student["images_per_s"] / best["images_per_s"],
        "real_vs_real_fd": floor,
        "nearest_training_distance": copies,
        "discriminator_plot": has_discriminator,
        "distill_seconds": timings["distill_seconds"],
        "num_samples": num_samples, "seed": seed, "config": str(config),
    }
    atomic_write_text(json.dumps(report, indent=1), out / "report.json")
    atomic_write_text(_markdown(report), out / "report.md")
    print(_markdown(report))
    return report


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
    lines = [
        "# onestep demo: the digits teacher in one step",
        "",
        f"Objective: `{r['objective']}`; distillation took {r['distill_seconds']:.0f} s on this machine.",
        "",
        "| sampler | NFE | FD-digits | images/s |",
        "|---|---:|---:|---:|",
    ]
    for t in r["teacher"]:
        lines.append(f"| teacher (Heun) | {t['nfe']} | {t['fd_digits']:.2f} | {t['images_per_s']:.0f} |")
    s = r["student"]
    lines.append(f"| **one-step student** | 1 | **{s['fd_digits']:.2f}** | {s['images_per_s']:.0f} |")
    lines += [
        "",
        f"Student FD / best teacher FD (NFE {r['teacher_best']['nfe']}): "
        f"**{r['fd_ratio_student_to_best_teacher']:.2f}**; speed-up over it: "
        f"**{r['speedup_vs_best_teacher']:.0f}x**. Real-vs-real floor: {r['real_vs_real_fd']:.2f} "
        f"({r['num_samples']} samples against all 1,797 digits).",
        "",
        f"Copy check (L2 distance to the nearest training digit): student median "
        f"{r['nearest_training_distance']['student_median']:.3f}, teacher median "
        f"{r['nearest_training_distance']['teacher_median']:.3f}; "
        f"{100 * r['nearest_training_distance']['student_below_teacher_p5']:.1f}% of student samples lie closer "
        f"than the teacher's 5th percentile (5% if it copies no more than its teacher).",
        "",
        "![student](samples.png) ![teacher](teacher.png) ![FD vs NFE](fd_vs_nfe.png)"
        + (" ![discriminator](discriminator.png)" if r.get("discriminator_plot") else ""),
        "",
    ]
    return "\n".join(lines)
