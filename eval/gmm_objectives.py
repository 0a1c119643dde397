"""Every objective (and every f) on the analytic Gaussian mixture, for a fixed budget.

Prints a table (MMD to exact samples, the exact-vs-exact MMD floor, mass found in each
mode next to its true weight, mass between modes, seconds) and saves one PNG with a
scatter panel per objective: the mode-seeking vs mode-covering picture.

    python eval/gmm_objectives.py --config configs/gmm.yaml --output runs/gmm_objectives
    python eval/gmm_objectives.py --steps 300 --only dmd,f_distill:fkl   # a quick subset
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from onestep import (
    F_NAMES,
    GaussianMixture,
    OneStepGenerator,
    build_teacher,
    build_trainer,
    generate,
)
from onestep import config as config_mod
from onestep import evaluate_mixture_samples as evaluate_samples

GAN_FOR_SIDA = 1e-2


def variants() -> list[tuple[str, dict]]:
    """(label, overrides) for every objective, f-divergences expanded."""
    out = [
        ("diff_instruct", {"objective.name": "diff_instruct"}),
        ("dmd", {"objective.name": "dmd"}),
        ("sid", {"objective.name": "sid"}),
        ("sida", {"objective.name": "sida", "gan.weight": GAN_FOR_SIDA}),
        ("sim", {"objective.name": "sim"}),
    ]
    for family in ("f_distill", "uni_instruct"):
        for f in F_NAMES:
            out.append((f"{family}:{f}", {"objective.name": family, "objective.f": f}))
    return out


def run_one(base: config_mod.Config, overrides: dict, teacher, gmm, num_samples: int, seed: int) -> dict:
    data = config_mod.to_dict(base)
    # each variant names its own objective: the base's objective parameters belong to the base's
    data["objective"] = {"name": data["objective"]["name"]}
    data = config_mod.apply_overrides(data, [f"{k}={v}" for k, v in overrides.items()])
    cfg = config_mod.from_dict(data)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, tmp, teacher=teacher)
        trainer.fit()
        seconds = time.perf_counter() - t0
        generator = trainer.method.nets.plain_generator
        x = generate(generator, num_samples, seed, teacher.sample_shape)
    return {**evaluate_samples(x, gmm), "seconds": seconds, "samples": x}


def format_table(rows: list[dict], weights: list[float]) -> str:
    head = f"{'objective':24s} {'MMD':>8s} {'floor':>8s} {'between':>8s} {'secs':>6s}  mass per mode (true: {', '.join(f'{w:.2f}' for w in weights)})"
    lines = [head, "-" * len(head)]
    for r in rows:
        mass = ", ".join(f"{m:.2f}" for m in r["mass"])
        lines.append(f"{r['label']:24s} {r['mmd']:8.4f} {r['mmd_floor']:8.4f} {r['between']:8.3f} {r['seconds']:6.1f}  {mass}")
    return "\n".join(lines)


def save_figure(rows: list[dict], reference: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [{"label": "teacher (exact)", "samples": reference, "mmd": None}] + rows
    cols = 6
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.6 * nrows), squeeze=False)
    lim = float(reference.abs().max()) * 1.25
    for ax, panel in zip(axes.flat, panels):
        x = panel["samples"].numpy()
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="black" if panel["mmd"] is None else "tab:blue")
        title = panel["label"] if panel["mmd"] is None else f"{panel['label']}\nMMD {panel['mmd']:.3f}"
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/gmm.yaml")
    ap.add_argument("--output", default="runs/gmm_objectives")
    ap.add_argument("--steps", type=int, default=None, help="iterations per objective (default: the config's)")
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated labels, e.g. dmd,f_distill:fkl")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    overrides = ["train.progress=false", *args.overrides]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    base = config_mod.load(args.config, overrides)
    if base.teacher.kind != "gmm":
        print("gmm_objectives.py needs a gmm teacher config", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    gmm = GaussianMixture(base.teacher.means, base.teacher.stds, base.teacher.weights)
    t0 = time.perf_counter()
    teacher = build_teacher(base, out, progress=False)
    print(f"teacher MLP fitted in {time.perf_counter() - t0:.1f}s; budget {base.train.steps} iterations, "
          f"batch {base.train.batch_size}", flush=True)
    init = evaluate_samples(generate(OneStepGenerator(teacher.network, base.generator.sigma_init),
                                     args.num_samples, args.seed, teacher.sample_shape), gmm)
    print(f"generator at initialisation: MMD {init['mmd']:.4f}", flush=True)

    chosen = variants()
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [v for v in chosen if v[0] in wanted]
    rows = []
    for label, ov in chosen:
        result = run_one(base, ov, teacher, gmm, args.num_samples, args.seed)
        result["label"] = label
        rows.append(result)
        print(f"  {label:24s} MMD {result['mmd']:.4f}  between {result['between']:.3f}  {result['seconds']:.1f}s", flush=True)

    table = format_table(rows, gmm.weights.tolist())
    print()
    print(table)
    reference, _ = gmm.sample(args.num_samples, torch.Generator().manual_seed(args.seed))
    save_figure(rows, reference, out / "gmm_objectives.png")
    (out / "table.txt").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(
        {"config": args.config, "steps": base.train.steps, "init_mmd": init["mmd"],
         "rows": [{k: v for k, v in r.items() if k != "samples"} for r in rows]}, indent=1))
    print(f"\nwrote {out / 'gmm_objectives.png'}, {out / 'table.txt'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
