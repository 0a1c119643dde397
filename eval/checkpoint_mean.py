"""FD of a run's generator at kept checkpoints: the raw generator or its EMA at one step, or the
plain mean of the weights of several checkpoints (a post-hoc average over a window). It answers
how much of a student is its EMA and whether a longer or shorter average would do better
(docs/results.md, Fashion-MNIST, runs H and I) without training again. The run is read, not
changed.

    python eval/checkpoint_mean.py --preset fashion --run runs/fashion/H --steps 1000            # EMA
    python eval/checkpoint_mean.py --preset fashion --run runs/fashion/H --raw --steps 700,800,900,1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from onestep import PRESETS, FDScorer, OnestepError, load_generator, load_named, student_samples


def mean_generator(run: Path, steps: list[int], ema: bool):
    """The generator whose weights are the mean of those at ``steps`` (raw or EMA); one step: as stored."""
    generator, _, _ = load_generator(run, ema=ema, step=steps[0])
    if len(steps) > 1:
        states = [generator.state_dict()] + [load_generator(run, ema=ema, step=s)[0].state_dict() for s in steps[1:]]
        generator.load_state_dict({k: (sum(st[k].double() for st in states) / len(states)).to(v.dtype)
                                   for k, v in states[0].items()})
    return generator.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="digits", help="its FD features and test split")
    ap.add_argument("--run", required=True, help="the run directory")
    ap.add_argument("--steps", required=True, help="comma-separated steps of kept checkpoints, e.g. 800,900,1000")
    ap.add_argument("--raw", action="store_true", help="the raw generator's weights (default: the EMA's)")
    ap.add_argument("--seed", type=int, default=0, help="evaluation seed")
    ap.add_argument("--num-samples", type=int, default=None, help="default: the preset's (1,000 digits, 5,000 fashion)")
    args = ap.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        print(f"checkpoint_mean: error: --steps {args.steps!r} is not a comma-separated list of steps", file=sys.stderr)
        return 2
    preset = PRESETS[args.preset]
    try:
        generator = mean_generator(Path(args.run), steps, ema=not args.raw)
        reference = load_named(preset.dataset_at(generator.network.sample_shape[-1]), "test")[0]
    except OnestepError as exc:
        print(f"checkpoint_mean: error: {exc}", file=sys.stderr)
        return 2
    n = args.num_samples or preset.num_samples
    with torch.no_grad():
        x, _ = student_samples(generator, n, args.seed, generator.network.num_classes)
    fd = FDScorer(reference, preset.features)(x)
    print(json.dumps({"run": args.run, "weights": "raw" if args.raw else "ema", "steps": steps, "seed": args.seed,
                      "num_samples": n, f"fd_{preset.features}": fd}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
