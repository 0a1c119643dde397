"""One row of a benchmark (docs/results.md "The discriminator on digits", and the Fashion-MNIST
f grid): distill a preset's teacher with config overrides, then score the EMA generator's FD at
evaluation seeds 0, 1 and 2 (eval/PROTOCOL.md: select on 1 and 2, report 0), with the
discriminator's held-out accuracy and the spread of its log-ratio per sigma bin over the run's
last five log lines, and the copy check at the first seed (nearest-training-image distances of
the student's samples and of the teacher's at its best NFE, as in the demo report).

    python eval/benchmark_row.py --config configs/digits-uni-instruct.yaml --output runs/bench/ui_js_s1 \\
        --set train.steps=1000 objective.f=js gan.weight=0.1 train.seed=1
    python eval/benchmark_row.py --output runs/bench/ui_js_s1 --score-only   # a finished run
    python eval/benchmark_row.py --preset fashion --output runs/fashion-grid/fd_js --eval-seeds 1 2 \\
        --set objective.f=js

Presets (``onestep.demo.PRESETS``): ``digits`` (FD-digits on 1,000 samples against all digits,
teacher at NFE 31) and ``fashion`` (FD-fashion on 5,000 samples against the 10,000 test images;
the teacher's best NFE, FD and copy-check distances from its stored evaluation).

``--divergence-check`` adds issue 20's criteria of training without divergence after the
ratio's warm-up (every step finite, gradient norm within 10x of its value at the warm-up's end,
raw-generator FD at the end no worse than there); keep the warm-up's checkpoint
(``train.checkpoint_every``, ``train.keep_checkpoints``).

An interrupted row resumes from its last checkpoint. Prints one JSON line and writes it to
``OUTPUT/benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onestep import (
    PRESETS,
    FDScorer,
    OnestepError,
    Plan,
    build_teacher,
    build_trainer,
    copy_report,
    discriminator_summary,
    has_held_out,
    latest_checkpoint,
    load_config,
    load_generator,
    load_named,
    read_evaluation,
    read_stats,
    student_samples,
    teacher_samples_at,
    with_held_out,
)

DIGITS_TEACHER_NFE = 31  # the digits teacher's best Heun setting (docs/results.md, make demo)


def divergence_summary(run: Path, cfg, scorer, n: int, seed: int, num_classes) -> dict:
    """Issue 20's criteria of training "without divergence" after the ratio's warm-up: every step
    finite, the generator's gradient norm before clipping (the log rows' window means) within 10x
    of its value at the warm-up's end, and the raw generator's FD at the end no worse than at the
    warm-up's end (both at evaluation seed ``seed``)."""
    warmup = Plan.from_config(cfg).ratio_warmup
    rows = [r for r in read_stats(run / "stats.jsonl") if "grad_norm_generator" in r]
    at_end_of_warmup = next((r for r in rows if r["step"] >= warmup), None)
    after = [r["grad_norm_generator"] for r in rows if r["step"] > warmup]
    if at_end_of_warmup is None or not after:
        raise OnestepError(f"{run}/stats.jsonl has no log row after the warm-up (step {warmup})")
    fds = {}
    for label, step in (("warmup", warmup), ("end", None)):
        generator, _, _ = load_generator(run, ema=False, step=step)
        fds[label] = scorer(student_samples(generator, n, seed, num_classes)[0])
    norm0 = at_end_of_warmup["grad_norm_generator"]
    out = {"warmup_step": warmup, "nonfinite_skipped": rows[-1].get("nonfinite_skipped", 0),
           "grad_norm_at_warmup": norm0, "grad_norm_max_after": max(after),
           "fd_raw_at_warmup": fds["warmup"], "fd_raw_at_end": fds["end"]}
    out["diverged"] = bool(out["nonfinite_skipped"] > 0 or max(after) > 10 * norm0 or fds["end"] > fds["warmup"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    ap.add_argument("--config", default=None, help="default: the preset's bundled config")
    ap.add_argument("--output", required=True, help="the run directory")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--eval-seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--num-samples", type=int, default=None, help="default: the preset's (1,000 digits, 5,000 fashion)")
    ap.add_argument("--score-only", action="store_true", help="score a finished run, do not train")
    ap.add_argument("--step", type=int, default=None,
                    help="with --score-only: score the kept checkpoint of this step instead of the last one "
                         "(a point of the run's learning curve; written to benchmark_step<N>.json)")
    ap.add_argument("--divergence-check", action="store_true",
                    help="also check the run against the criteria of a divergence after the ratio's warm-up "
                         "(needs the checkpoint of the warm-up's last step: set train.checkpoint_every and "
                         "train.keep_checkpoints to keep it)")
    args = ap.parse_args(argv)
    if args.step is not None and not args.score_only:
        print("benchmark_row: error: --step scores a kept checkpoint; add --score-only", file=sys.stderr)
        return 2

    preset = PRESETS[args.preset]
    n = args.num_samples or preset.num_samples
    out = Path(args.output)
    seconds = None
    try:
        if not args.score_only:
            cfg = load_config(args.config or preset.config, ["train.progress=false", *args.set])
            start = time.time()
            build_trainer(cfg, out).fit(resume=latest_checkpoint(out))
            seconds = time.time() - start
        generator, cfg, step = load_generator(out, ema=True, step=args.step)
        stored = read_evaluation(cfg.teacher.path, preset.teacher) if preset.teacher is not None else None
        name = preset.dataset_at(generator.network.sample_shape[-1])
        reference, train = load_named(name, "test")[0], load_named(name, "train")[0]
    except OnestepError as exc:
        print(f"benchmark_row: error: {exc}", file=sys.stderr)
        return 2
    scorer = FDScorer(reference, preset.features)
    num_classes = generator.network.num_classes
    row = {"preset": preset.name, "features": preset.features, "output": str(out), "overrides": args.set,
           "step": step, "train_seconds": seconds, "num_samples": n}
    for seed in args.eval_seeds:
        x, _ = student_samples(generator, n, seed, num_classes)
        row[f"fd_seed{seed}"] = scorer(x)
        if seed == args.eval_seeds[0]:
            if stored is not None:
                row["copy_check"] = copy_report(x, stored["nearest_training_distance"], train)
                row["teacher_best"] = {"nfe": stored["best_nfe"], "fd": stored["fd"]}
            else:
                teacher = build_teacher(cfg, progress=False)
                x_teacher, _ = teacher_samples_at(teacher, cfg.schedule, DIGITS_TEACHER_NFE, n, seed)
                row["copy_check"] = copy_report(x, x_teacher, train)
            if has_held_out(reference, train):
                row["copy_check"] = with_held_out(row["copy_check"], reference, train, n, seed, student=x)
    row.update(discriminator_summary([r for r in read_stats(out / "stats.jsonl") if r.get("step", 0) <= step]))
    if args.divergence_check:
        try:
            row["divergence"] = divergence_summary(out, cfg, scorer, n, args.eval_seeds[0], num_classes)
        except OnestepError as exc:
            print(f"benchmark_row: error: {exc}", file=sys.stderr)
            return 2
    line = json.dumps(row)
    print(line)
    (out / ("benchmark.json" if args.step is None else f"benchmark_step{step}.json")).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
