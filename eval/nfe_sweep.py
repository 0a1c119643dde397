"""Teacher FD at NFE 1, 3, 7, 15, 31, 63 (EDM Heun) next to the one-step student's FD,
with images per second for each; prints a table, saves a PNG plot and sample grids.

    python eval/nfe_sweep.py --run runs/demo/run --output runs/nfe_sweep
    python eval/nfe_sweep.py --teacher assets/digits-teacher --output runs/nfe_sweep   # teacher only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from onestep import (
    FDScorer,
    build_teacher,
    default_features,
    load_generator,
    load_named,
    nfe_sweep,
    save_fd_plot,
    save_grid,
    student_samples,
)
from onestep import config as config_mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a distillation run directory (its teacher is swept too)")
    ap.add_argument("--teacher", help="a teacher pipeline directory (without --run)")
    ap.add_argument("--ema", action="store_true", help="score the run's EMA generator")
    ap.add_argument("--output", default="runs/nfe_sweep")
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nfe", default="1,3,7,15,31,63")
    args = ap.parse_args(argv)
    if not (args.run or args.teacher):
        ap.error("give --run or --teacher")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.run:
        generator, cfg, step = load_generator(args.run, ema=args.ema)
    else:
        generator, step = None, None
        cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": args.teacher}})
    teacher = build_teacher(cfg, progress=False)
    features = default_features(torch.zeros(1, *teacher.image_shape))
    if features == "digits":  # the bundled digits (their one set), at the teacher's size
        reference = load_named("digits16" if teacher.sample_shape[-1] == 16 else "digits")[0]
    elif features == "fashion":  # the 10,000 test images
        reference = load_named("fashion-mnist", "test")[0]
    else:
        ap.error("nfe_sweep.py scores digits (8x8, 16x16) or Fashion-MNIST (28x28) teachers")
    scorer = FDScorer(reference, features)
    floor = scorer.floor(reference, args.num_samples)
    nfes = [int(v) for v in args.nfe.split(",")]
    sweep = nfe_sweep(teacher, cfg.schedule, scorer, nfes, args.num_samples, args.seed, keep_samples=True)
    student = None
    if generator is not None:
        x, ips = student_samples(generator, args.num_samples, args.seed, teacher.num_classes)
        student = {"fd": scorer(x), "images_per_s": ips, "objective": cfg.objective.name, "step": step}
        save_grid(x[:100], out / "student.png", nrow=10)

    lines = [f"{'sampler':24s} {'NFE':>4s} {'FD-' + features:>10s} {'images/s':>10s}", "-" * 52]
    for r in sweep:
        lines.append(f"{'teacher Heun':24s} {r['nfe']:4d} {r['fd']:10.2f} {r['images_per_s']:10.0f}")
        save_grid(r.pop("samples")[:100], out / f"teacher_nfe{r['nfe']}.png", nrow=10)
    if student:
        lines.append(f"{'student (' + student['objective'] + ')':24s} {1:4d} {student['fd']:10.2f} {student['images_per_s']:10.0f}")
    lines.append(f"{'real vs real (floor)':24s} {'':>4s} {floor:10.2f}")
    table = "\n".join(lines)
    print(table)
    save_fd_plot(sweep, student, out / "fd_vs_nfe.png")
    (out / "table.txt").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"teacher": sweep, "student": student, "floor": floor,
                                                  "num_samples": args.num_samples, "seed": args.seed}, indent=1))
    print(f"wrote {out}/fd_vs_nfe.png, table.txt, results.json and sample grids")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
