"""The discriminator's held-out accuracy and log-ratio spread per sigma bin at a run's checkpoint,
measured on many more samples than the training log's checks.

During training every log row carries a held-out check on 256 real images (never trained on)
against 256 fresh generator samples, about 51 of each per sigma bin: a standard error of about
0.05 on one check's accuracy in a bin, 0.02 on the mean of five. This script repeats the same
check (``Trainer.evaluate_discriminator``: the same sigmas, bins and networks) ``--repeats`` times
on ``--samples`` images each, every repeat with its own random stream, and prints per bin the
mean accuracy and log-r spread with the accuracy's standard error over the repeats. The run
directory is read, not trained: its lock is held while the script runs, so a run being trained
is refused.

    python eval/discriminator_heldout.py --run runs/fashion-long/run [--step 2700] [--samples 2560] [--repeats 4]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from onestep import SPREAD_EDGES, OnestepError, build_trainer, checkpoint_of, load_config


def bin_labels() -> list[str]:
    """``< 0.05``, ``0.05-0.2``, ..., ``> 5``: the sigma bins of ``SPREAD_EDGES``."""
    edges = list(SPREAD_EDGES)
    return [f"< {edges[0]:g}", *(f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])), f"> {edges[-1]:g}"]


def heldout(run: Path, step: int | None, samples: int, repeats: int) -> dict:
    """Per bin: mean held-out accuracy, its standard error over ``repeats``, mean log-r spread."""
    path = checkpoint_of(run, step)
    cfg = load_config(run / "config.yaml", ["train.progress=false"])
    trainer = build_trainer(cfg, run)
    try:
        trainer.restore(path)
        if trainer.method.critic is None or trainer.holdout is None:
            raise OnestepError(f"{run} trains no discriminator against held-out data: nothing to check")
        checks = []
        for k in range(repeats):
            # streams of their own, apart from the training log's (seed * 1,000,003 + step)
            rng = torch.Generator().manual_seed(7_777_777 + 1_000 * k + trainer.step)
            checks.append(trainer.method.evaluate_discriminator(trainer.holdout, rng, samples, trainer.device))
    finally:
        trainer.close()
    bins = []
    for b, label in enumerate(bin_labels()):
        acc = [c["disc_acc_bins"][b] for c in checks]
        spread = [c["logr_std"][b] for c in checks]
        se = statistics.stdev(acc) / math.sqrt(len(acc)) if len(acc) > 1 else math.nan
        bins.append({"sigma": label, "accuracy": statistics.fmean(acc), "accuracy_se": se,
                     "logr_std": statistics.fmean(spread)})
    return {"run": str(run), "step": trainer.step, "samples": samples, "repeats": repeats,
            "pairs_per_bin": samples // len(bins), "bins": bins,
            "accuracy_all": statistics.fmean(c["disc_acc_heldout"] for c in checks)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run directory with a checkpoint")
    ap.add_argument("--step", type=int, default=None, help="a kept checkpoint's step (default: the last)")
    ap.add_argument("--samples", type=int, default=2560, help="real and generator samples per repeat")
    ap.add_argument("--repeats", type=int, default=4, help="independent checks to average")
    args = ap.parse_args(argv)
    if args.samples < 10 or args.repeats < 1:
        print("discriminator_heldout: error: --samples must be at least 10 and --repeats at least 1", file=sys.stderr)
        return 2
    try:
        result = heldout(Path(args.run), args.step, args.samples, args.repeats)
    except OnestepError as exc:
        print(f"discriminator_heldout: error: {exc}", file=sys.stderr)
        return 2
    print(f"step {result['step']}: {args.repeats} checks of {args.samples} real vs {args.samples} generator "
          f"samples (about {result['pairs_per_bin']} of each per bin)")
    print("| sigma | held-out accuracy (± s.e.) | log-r std |")
    print("|---|---:|---:|")
    for row in result["bins"]:
        print(f"| {row['sigma']} | {row['accuracy']:.3f} ± {row['accuracy_se']:.3f} | {row['logr_std']:.3f} |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
