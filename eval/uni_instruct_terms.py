"""Where Uni-Instruct's generator gradient comes from, per sigma bin, as a run trains.

For every generator step, the per-sample size of the three directions the loss pushes ``x_g``
along (docs/objectives.md, Uni-Instruct): ``|h Delta|`` (L_sim's direct part), ``|L_di|`` and
``|L_x|`` (the pushes ``q |Delta|^2 / (2 sigma^2) Delta`` and ``r h' <Delta, Df - x_g> / sigma^2
Delta``, or with ``objective.log_ratio_gradient: discriminator`` the same with ``sigma^2 g`` for
``Delta``, g the discriminator's ``grad log r``), medians per sigma bin (edges 0.05, 0.2, 1, 5),
next to ``loss_g`` and the generator's gradient norm before clipping. One JSON line per reported
step.

    python eval/uni_instruct_terms.py --config configs/digits-uni-instruct.yaml --output runs/ui-terms \\
        --set train.steps=1000 gan.weight=0.1 objective.f=js --steps 150
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import torch

from onestep import build_trainer, load_config, uni_instruct_pushes

EDGES = (0.05, 0.2, 1.0, 5.0)


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def term_sizes(inp, params) -> tuple[torch.Tensor, ...]:
    """(sigma, |h Delta|, |L_di push|, |L_x push|), each (B,), of one generator step's inputs."""
    di, x = uni_instruct_pushes(inp, params)
    return inp.sigma, (inp.weights.h * _norm((inp.Dr - inp.Df).detach())).abs(), _norm(di), _norm(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--output", required=True, help="the run directory (a fresh one)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=150, help="iterations to run")
    ap.add_argument("--every", type=int, default=5, help="report every this many iterations")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, [*args.set, "train.progress=false"])
    if cfg.objective.name != "uni_instruct":
        print("uni_instruct_terms: the config's objective must be uni_instruct", file=sys.stderr)
        return 2
    trainer = build_trainer(cfg, args.output)
    records = []
    spec = trainer.method.spec

    def recorded(inp, params):
        with torch.no_grad():
            if inp.weights is not None:
                records.append([t.float().cpu() for t in term_sizes(inp, params)])
        return spec.fn(inp, params)

    trainer.method.spec = dataclasses.replace(spec, fn=recorded)
    for it in range(args.steps):
        stats = trainer.iteration()
        if it % args.every and it != args.steps - 1:
            continue
        row = {"step": it, "loss_g": stats.get("loss_g"), "grad_norm_generator": stats.get("grad_norm_generator")}
        if records:
            sigma, sim, di, x = (torch.cat(t) for t in zip(*records, strict=True))
            idx = torch.bucketize(sigma, torch.tensor(EDGES))
            for k in range(len(EDGES) + 1):
                m = idx == k
                row[f"bin{k}"] = ({name: round(float(t[m].median()), 5) for name, t in
                                   (("sim", sim), ("di", di), ("x", x))} if m.any() else None)
        records.clear()
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                          for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
