"""Train the Fashion-MNIST feature network (FD-fashion) and write it to onestep/resources/.

    python eval/train_fashion_features.py --output onestep/resources/fashion-features.safetensors

Trains on the 60,000 training images only (random horizontal flips, small input noise), reports
the accuracy on the 10,000 test images, and writes the weights (safetensors) and a JSON record
(accuracies, seconds, command) beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from onestep import (
    FashionClassifier,
    OnestepError,
    atomic_save,
    atomic_write_text,
    load_fashion_mnist,
    train_classifier,
)
from onestep import classifier_accuracy as accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="onestep/resources/fashion-features.safetensors")
    ap.add_argument("--steps", type=int, default=6000, help="Adam steps of batch --batch-size")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None, help="where Fashion-MNIST is (as data.root)")
    ap.add_argument("--download", action="store_true", help="download Fashion-MNIST if it is nowhere here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    try:
        x, y = load_fashion_mnist("train", args.data_root, args.download)
        x_test, y_test = load_fashion_mnist("test", args.data_root)
    except OnestepError as exc:
        print(f"train_fashion_features: error: {exc}", file=sys.stderr)
        return 2
    bar = tqdm(total=args.steps, desc="train fashion features", leave=False)

    def progress(step, loss):
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    model = train_classifier(x, y, FashionClassifier, steps=args.steps, batch_size=args.batch_size,
                             seed=args.seed, flip=True, progress=progress)
    bar.close()
    acc_test, acc_train = accuracy(model, x_test, y_test), accuracy(model, x, y)
    seconds = time.perf_counter() - t0
    out = Path(args.output)
    atomic_save(model.state_dict(), out)
    record = {
        "command": "python eval/train_fashion_features.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "test_accuracy": round(acc_test, 4), "train_accuracy": round(acc_train, 4), "test_size": len(y_test),
        "train_size": len(y), "steps": args.steps, "batch_size": args.batch_size, "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_text(json.dumps(record, indent=1) + "\n", out.with_suffix(".json"))
    print(f"test accuracy {acc_test:.4f} ({len(y_test)} images), train {acc_train:.4f}, {seconds:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
