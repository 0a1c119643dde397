"""Does the student copy its training images? Meehan et al.'s data-copying test, student next to teacher.

The fashion report's copy check counts the student's samples closer to a training image than the
teacher's 5th percentile; that share also grows when a student merely moves toward the data (real
test images score 19% on it). Meehan, Chaudhuri & Dasgupta (AISTATS 2020) compare instead the
nearest-training-image distances of generated samples with those of real images that were never
trained on, per k-means cell of the training set (``onestep.evaluation.copy_check.data_copying``):
C_T < 0 where the samples sit closer to the training set than unseen real data does (copying),
C_T > 0 where they sit farther (under-fitting), about 0 for a model of the data law itself.

This script scores, on the same number of samples and the same held-out test images:
the teacher's shipped ODE samples (its pairs file, Heun at NFE 31), the run's EMA student, and
other test images (a reference that neither copies nor under-fits: C_T near 0).

    python eval/data_copying.py --run runs/fashion/run                 # the benchmark's run
    python eval/data_copying.py --run runs/fashion/run --step 1000 --num-samples 2000
    python eval/data_copying.py --run RUN --pairs my-teacher/pairs.safetensors   # another teacher's run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from onestep import (
    PRESETS,
    DataCopyingTest,
    OnestepError,
    distance_quantiles,
    load_config,
    load_generator,
    load_named,
    nearest_distances,
    student_samples,
)


def row(name: str, x: torch.Tensor, distances: torch.Tensor, test: DataCopyingTest, teacher_p5: float) -> dict:
    """One set's line: ``distances`` are its samples' ``nearest_distances`` to the training set."""
    result = test(x, distances=distances)
    return {"samples": name, "median": distance_quantiles(distances)["median"],
            "below_teacher_p5": float((distances < teacher_p5).float().mean()), "c_t": result["c_t"],
            "z_u": result["z_u"], "min_cell_z": min(result["per_cell"]) if result["per_cell"] else float("nan"),
            "cells_used": result["cells_used"], "cells": result["cells"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=["fashion"], default="fashion")
    ap.add_argument("--run", required=True, help="a distillation run directory (its EMA generator is scored)")
    ap.add_argument("--step", type=int, default=None, help="a kept checkpoint (default: the last)")
    ap.add_argument("--pairs", default=None, help="the teacher's pairs file (default: the preset config's data.pairs)")
    ap.add_argument("--num-samples", type=int, default=2000, help="per set (at most the pairs file's count)")
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    try:
        path = Path(args.pairs or load_config(preset.config, []).data.pairs)
        if not path.is_file():
            raise OnestepError(f"no pairs file at {path}; name one with --pairs (made by `onestep pairs`)")
        pairs = load_file(path)
        generator, _, step = load_generator(args.run, ema=True, step=args.step)
        test, train = load_named(preset.dataset, "test")[0], load_named(preset.dataset, "train")[0]
    except OnestepError as exc:
        print(f"data_copying: error: {exc}", file=sys.stderr)
        return 2
    n = args.num_samples
    if not 0 < n <= min(len(pairs["x"]), len(test) // 2):
        print(f"data_copying: error: --num-samples must be 1-{min(len(pairs['x']), len(test) // 2)}", file=sys.stderr)
        return 2
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
    held_out, other = test[order[:n]], test[order[n:2 * n]]
    student, _ = student_samples(generator, n, args.seed, generator.network.num_classes)
    teacher = "teacher (shipped pairs, Heun NFE 31)"
    sets = {teacher: pairs["x"][:n].float(),
            f"student ({args.run}, step {step}, EMA)": student,
            "real test images (not the held-out ones)": other}
    distances = {name: nearest_distances(x, train) for name, x in sets.items()}
    teacher_p5 = distance_quantiles(distances[teacher])["p5"]
    test = DataCopyingTest(held_out, train, args.cells)  # the partition and the held-out side, once
    rows = [row(name, x, distances[name], test, teacher_p5) for name, x in sets.items()]
    print(f"{n} samples each against {n} held-out test images and the {len(train)} training images; "
          f"{args.cells} k-means cells")
    print("| samples | median distance | below teacher p5 | C_T | global Z_U | lowest cell Z_U |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['samples']} | {r['median']:.3f} | {100 * r['below_teacher_p5']:.1f}% | {r['c_t']:+.2f} | "
              f"{r['z_u']:+.2f} | {r['min_cell_z']:+.2f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
