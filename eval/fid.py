"""FID-style evaluation: make reference statistics once, then score a run, pipeline or images.
(``onestep eval`` is the command for this; this script keeps the `ref` / `calc` split.)

    python eval/fid.py ref  --name digits --images digits --features digits
    python eval/fid.py calc --ref digits --run runs/demo/run --ema --features digits
    python eval/fid.py calc --ref cifar10-train --pipeline runs/cifar/pipeline --features inception \\
        --inception-weights ~/weights-inception-2015-12-05-6726825d.pth --num-samples 50000

``--images`` takes a .npy array (N, C, H, W) in [-1, 1], a folder of PNGs, or ``digits``.
Samples use per-index seeds (eval/PROTOCOL.md), so results do not depend on batch size.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from onestep import (
    OnestepError,
    OneStepPipeline,
    compute_metrics,
    cycled_labels,
    load_generator,
    load_pipeline,
    make_reference,
    student_samples,
)
from onestep import evaluate_images as evaluate


def _images(spec: str):
    if spec in ("digits", "digits16", "fashion-mnist"):
        from onestep import load_named

        return load_named(spec, "test")[0]
    return spec


def _samples(args) -> torch.Tensor:
    if args.images:
        return _images(args.images)
    if args.run:
        generator, _, _ = load_generator(args.run, ema=args.ema)
        return student_samples(generator, args.num_samples, args.seed, generator.network.num_classes)[0]
    pipe = load_pipeline(args.pipeline)
    classes = getattr(pipe.unet.config, "num_class_embeds", None) or 0
    chunks = []
    for start in range(0, args.num_samples, args.batch_size):
        k = min(args.batch_size, args.num_samples - start)
        labels = cycled_labels(start, k, classes).tolist() if classes else None
        gens = OneStepPipeline.index_generators(args.seed, k, start)
        out = pipe(batch_size=k, class_labels=labels, generator=gens, output_type="pt").images
        chunks.append(out * 2 - 1)
    return torch.cat(chunks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ref = sub.add_parser("ref", help="featurise a reference set into the cache")
    ref.add_argument("--name", required=True)
    ref.add_argument("--images", required=True)
    calc = sub.add_parser("calc", help="score samples against a cached reference")
    calc.add_argument("--ref", required=True, help="reference: a name given to `ref`, digits, or an image path")
    calc.add_argument("--ref-images", help="reference images (needed if the cache is cold)")
    src = calc.add_mutually_exclusive_group(required=True)
    src.add_argument("--run")
    src.add_argument("--pipeline")
    src.add_argument("--images")
    calc.add_argument("--ema", action="store_true")
    calc.add_argument("--num-samples", type=int, default=1000)
    calc.add_argument("--seed", type=int, default=0)
    calc.add_argument("--batch-size", type=int, default=250)
    calc.add_argument("--metrics", default="fid,kid,isc,prc")
    for p in (ref, calc):
        p.add_argument("--features", default="digits", choices=["digits", "inception"])
        p.add_argument("--inception-weights", default=None)
        p.add_argument("--cache-root", default=None)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "ref":
            root = make_reference(args.name, _images(args.images), args.features, args.cache_root,
                                  args.inception_weights)
            print(f"cached reference '{args.name}' ({args.features} features) under {root}")
            return 0
        metrics = tuple(args.metrics.split(","))
        if args.ref_images:  # featurise these images into the cache under --ref
            result = compute_metrics(_samples(args), _images(args.ref_images), args.features, metrics,
                                     reference_name=args.ref, cache_root=args.cache_root,
                                     weights=args.inception_weights)
        else:  # --ref: a bundled set, an image path, or statistics cached by `ref` under that name
            result = evaluate(_samples(args), args.ref, args.features, metrics, args.cache_root, args.inception_weights)
        print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}, indent=1))
        return 0
    except OnestepError as exc:
        print(f"fid.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
