"""How much each term of the generator's loss pulls: the norm of the gradient with respect to the
generator's parameters of the objective, of the weighted GAN term and of the weighted regression
term, each on its own, at a run's checkpoint (the same batches for all three), and of their sum.

Balancing the added terms against the objective is part of a recipe (docs/objectives.md, "Added
terms"); this measures the balance instead of guessing it from the weights. The run directory is
read, not trained: its lock is held while the script runs, so a run being trained is refused.

    python eval/term_gradients.py --run runs/fashion/B [--step 1000] [--batches 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from onestep import OnestepError, build_trainer, checkpoint_of, load_config


def gradient_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    """The L2 norm of d loss / d params over all of them (0 where the loss does not reach them)."""
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def term_gradients(run: Path, step: int | None, batches: int) -> dict:
    path = checkpoint_of(run, step)
    cfg = load_config(run / "config.yaml", ["train.progress=false"])
    trainer = build_trainer(cfg, run)
    try:
        trainer.restore(path)
        method = trainer.method
        params = [p for p in method.nets.plain_generator.parameters() if p.requires_grad]
        rows = []
        for _ in range(batches):
            with method.critics_frozen():
                out = method.generator_loss(trainer.draws, trainer.step, trainer.acc.autocast)
            row = {name: gradient_norm(term, params) for name, term in out.terms.items()}
            row["total"] = gradient_norm(out.loss, params)
            rows.append(row)
    finally:
        trainer.close()
    names = list(rows[0])
    return {"run": str(run), "step": trainer.step, "batches": batches,
            "mean": {n: statistics.fmean(r[n] for r in rows) for n in names},
            "per_batch": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run directory with a checkpoint")
    ap.add_argument("--step", type=int, default=None, help="a kept checkpoint's step (default: the last)")
    ap.add_argument("--batches", type=int, default=8, help="batches to average over")
    args = ap.parse_args(argv)
    if args.batches < 1:
        print("term_gradients: error: --batches must be at least 1", file=sys.stderr)
        return 2
    try:
        result = term_gradients(Path(args.run), args.step, args.batches)
    except OnestepError as exc:
        print(f"term_gradients: error: {exc}", file=sys.stderr)
        return 2
    mean = result["mean"]
    print(f"step {result['step']}, mean over {args.batches} batches: gradient norm "
          + ", ".join(f"{name} {value:.3f}" for name, value in mean.items()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
