"""Train the digits feature network (FD-digits) and write it to onestep/resources/.

    python eval/train_digits_features.py --output onestep/resources/digits-features.safetensors

Splits the 1,797 digits 80/20 (fixed seed), trains on the 80%, reports held-out accuracy,
writes the weights (safetensors) and a JSON record (accuracy, seconds, command) beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from onestep import DigitsClassifier, atomic_save, load_named, train_classifier
from onestep import classifier_accuracy as accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="onestep/resources/digits-features.safetensors")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    x, y = load_named("digits")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    cut = int(0.8 * len(x))
    train, test = perm[:cut], perm[cut:]
    model = train_classifier(x[train], y[train], DigitsClassifier, steps=args.steps, seed=args.seed)
    acc_test = accuracy(model, x[test], y[test])
    acc_train = accuracy(model, x[train], y[train])
    seconds = time.perf_counter() - t0
    out = Path(args.output)
    atomic_save(model.state_dict(), out)
    record = {
        "command": "python eval/train_digits_features.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "held_out_accuracy": round(acc_test, 4), "train_accuracy": round(acc_train, 4),
        "held_out_size": len(test), "steps": args.steps, "seconds": round(seconds, 1),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"held-out accuracy {acc_test:.4f} ({len(test)} digits), train {acc_train:.4f}, {seconds:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
