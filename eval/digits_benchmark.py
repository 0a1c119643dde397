"""One row of the digits benchmark (docs/results.md "The discriminator on digits"): distill the bundled
teacher with config overrides, then score the EMA generator's FD-digits at evaluation seeds
0, 1 and 2 (eval/PROTOCOL.md: select on 1 and 2, report 0), with the discriminator's held-out
accuracy and the spread of its log-ratio per sigma bin over the run's last five log lines, and
the copy check at seed 0 (nearest-training-digit distances of the student's samples and of
the teacher's at NFE 31, as in the demo report).

    python eval/digits_benchmark.py --config configs/digits-uni-instruct.yaml --output runs/bench/ui_js_s1 \\
        --set train.steps=1000 objective.f=js gan.weight=0.1 train.seed=1
    python eval/digits_benchmark.py --output runs/bench/ui_js_s1 --score-only   # a finished run

An interrupted row resumes from its last checkpoint. Prints one JSON line and writes it to
``OUTPUT/benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from onestep import build_teacher, build_trainer, load_generator
from onestep import config as config_mod
from onestep.core.rundir import latest_checkpoint
from onestep.data.datasets import load_digits
from onestep.errors import OnestepError
from onestep.evaluation.copy_check import copy_report
from onestep.evaluation.fd import FDScorer
from onestep.evaluation.nfe import student_samples, teacher_samples_at
from onestep.evaluation.plots import read_stats

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
TEACHER_NFE = 31  # the digits teacher's best Heun setting (docs/results.md, make demo)


def discriminator_summary(stats: list[dict], last: int = 5) -> dict:
    """Mean held-out accuracy, head loss and per-bin log-ratio spread over the last log lines."""
    rows = [r for r in stats if "disc_acc_heldout" in r][-last:]
    if not rows:
        return {}
    mean = statistics.fmean
    out = {"disc_acc_heldout": mean(r["disc_acc_heldout"] for r in rows),
           "loss_disc": mean(r["loss_disc"] for r in rows if "loss_disc" in r) if "loss_disc" in rows[0] else None}
    if "logr_std" in rows[0]:
        out["logr_std"] = [mean(r["logr_std"][i] for r in rows) for i in range(len(rows[0]["logr_std"]))]
    h = [r["h_max"] for r in stats if "h_max" in r]
    out["h_max"] = max(h) if h else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--output", required=True, help="the run directory")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--eval-seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--score-only", action="store_true", help="score a finished run, do not train")
    args = ap.parse_args(argv)

    out = Path(args.output)
    seconds = None
    try:
        if not args.score_only:
            cfg = config_mod.load(args.config, ["train.progress=false", *args.set])
            start = time.time()
            build_trainer(cfg, out).fit(resume=latest_checkpoint(out))
            seconds = time.time() - start
        generator, cfg, step = load_generator(out, ema=True)
    except OnestepError as exc:
        print(f"digits_benchmark: error: {exc}", file=sys.stderr)
        return 2
    reference, _ = load_digits(size=generator.network.sample_shape[-1])
    scorer = FDScorer(reference)
    num_classes = generator.network.num_classes
    row = {"output": str(out), "overrides": args.set, "step": step, "train_seconds": seconds}
    for seed in args.eval_seeds:
        x, _ = student_samples(generator, args.num_samples, seed, num_classes)
        row[f"fd_seed{seed}"] = scorer(x)
        if seed == args.eval_seeds[0]:
            teacher = build_teacher(cfg, progress=False)
            x_teacher, _ = teacher_samples_at(teacher, cfg.schedule, TEACHER_NFE, args.num_samples, seed)
            row["copy_check"] = copy_report(x, x_teacher, reference)
    row.update(discriminator_summary(read_stats(out / "stats.jsonl")))
    line = json.dumps(row)
    print(line)
    (out / "benchmark.json").write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
