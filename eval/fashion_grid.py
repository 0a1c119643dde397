"""The f grid on Fashion-MNIST (issue 20, item 7): every row one ``eval/benchmark_row.py --preset
fashion`` run over one shared, shorter budget, resumable (a finished row is skipped, an
interrupted one continues from its checkpoint), then a table.

Rows: ``f_distill`` x {rkl, js, fkl, jeffreys}, ``uni_instruct`` x {rkl, js, fkl}, and ``dmd``,
``sid``, ``sida`` as baselines, at training seed 0; ``--seed 1 --only LABELS`` adds a second
training seed for the chosen rows. Each row is scored on 5,000 samples at evaluation seeds 1
and 2 (eval/PROTOCOL.md: select on 1 and 2; the shipped recipe is then reported at seed 0).
Every row inherits the recipe's GAN and regression terms at the recipe's balance: the weights are
set next to the recipe's objective (``f_distill``, whose gradient is a per-value mean), and each row's
are converted with the registry's ``reduction`` of its objective (``onestep.objective_gradient_scale``:
``sid``, ``sida`` and ``uni_instruct`` sum theirs over the 1 x 28 x 28 values of a sample, so their
weights, and the gradient-clipping threshold of the generator's whole gradient, are 784 times
larger; docs/objectives.md, "Added terms"; a ``--set`` of either weight or of ``train.grad_clip``
is read at the recipe objective's scale and converted alike).

    python eval/fashion_grid.py --output runs/fashion-grid --set train.steps=400   # the grid
    python eval/fashion_grid.py --output runs/fashion-grid --set train.steps=400 train.lr_decay=none
        # the grid as recorded in docs/results.md (before the recipe's rate decayed)
    python eval/fashion_grid.py --output runs/fashion-grid --dry-run               # the commands only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from onestep import PRESETS, Plan, load_config, objective_gradient_scale

HERE = Path(__file__).resolve().parent
ROWS = {
    **{f"f_distill:{f}": ["objective.name=f_distill", f"objective.f={f}"] for f in ("rkl", "js", "fkl", "jeffreys")},
    **{f"uni_instruct:{f}": ["objective.name=uni_instruct", f"objective.f={f}"] for f in ("rkl", "js", "fkl")},
    # (the recipe's objective.f is unset for the objectives without one)
    "dmd": ["objective.name=dmd", "objective.f=null"],
    "sid": ["objective.name=sid", "objective.f=null"],
    "sida": ["objective.name=sida", "objective.f=null"],
}


VALUES_PER_SAMPLE = 1 * 28 * 28  # Fashion-MNIST: one channel, 28 x 28


def balance(objective: str, recipe_objective: str, gan_weight: float, regression_weight: float,
            grad_clip: float = 0.0) -> list[str]:
    """The overrides that keep the recipe's GAN and regression weights and its gradient clipping
    (set next to ``recipe_objective``) in balance with ``objective`` (none when both reduce
    alike): the whole generator gradient scales by the same factor, so the clipping threshold
    does too (else a summed objective's gradient, hundreds of times the threshold, would be
    clipped at every step)."""
    factor = (objective_gradient_scale(objective, VALUES_PER_SAMPLE)
              / objective_gradient_scale(recipe_objective, VALUES_PER_SAMPLE))
    if factor == 1.0:
        return []
    out = [f"gan.weight={gan_weight * factor:g}", f"regression.weight={regression_weight * factor:g}"]
    return out + ([f"train.grad_clip={grad_clip * factor:g}"] if grad_clip > 0 else [])


def warmup_checkpoints(label: str, overrides: list[str]) -> list[str]:
    """For ``uni_instruct`` rows, the checkpoint settings that keep the checkpoint of the ratio
    warm-up's last step, which ``--divergence-check`` (issue 20, item 6) scores ([] otherwise)."""
    if objective_of(label) != "uni_instruct":
        return []
    cfg = load_config(PRESETS["fashion"].config, overrides)
    warmup = Plan.from_config(cfg).ratio_warmup
    if warmup < 1:
        return []
    return [f"train.checkpoint_every={warmup}", f"train.keep_checkpoints={cfg.train.steps // warmup + 1}"]


def objective_of(label: str) -> str:
    """The objective of a row: ``f_distill:js`` -> ``f_distill``."""
    return label.split(":")[0]


def row_dir(output: Path, label: str, seed: int) -> Path:
    return output / f"{label.replace(':', '_')}_s{seed}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="runs/fashion-grid")
    ap.add_argument("--seed", type=int, default=0, help="training seed of these rows")
    ap.add_argument("--only", default=None, help="comma-separated labels, e.g. f_distill:js,dmd")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of every row (the budget)")
    ap.add_argument("--eval-seeds", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--num-samples", type=int, default=None)
    ap.add_argument("--dry-run", action="store_true", help="print each row's command and exit")
    args = ap.parse_args(argv)

    labels = args.only.split(",") if args.only else list(ROWS)
    unknown = [label for label in labels if label not in ROWS]
    if unknown:
        print(f"fashion_grid: error: unknown row(s) {', '.join(unknown)} (valid: {', '.join(ROWS)})", file=sys.stderr)
        return 2
    output = Path(args.output)
    recipe = load_config(PRESETS["fashion"].config, args.set)
    results = []
    for label in labels:
        out = row_dir(output, label, args.seed)
        overrides = [*ROWS[label], f"train.seed={args.seed}", *args.set,
                     *balance(objective_of(label), recipe.objective.name, recipe.gan.weight, recipe.regression.weight,
                             recipe.train.grad_clip)]
        keep = warmup_checkpoints(label, overrides)
        cmd = [sys.executable, str(HERE / "benchmark_row.py"), "--preset", "fashion", "--output", str(out),
               "--eval-seeds", *map(str, args.eval_seeds), "--set", *overrides, *keep]
        if keep:
            cmd.append("--divergence-check")
        if args.num_samples:
            cmd += ["--num-samples", str(args.num_samples)]
        if args.dry_run:
            print(" ".join(cmd))
            continue
        done = out / "benchmark.json"
        if not done.is_file():
            print(f"== {label} (seed {args.seed})", flush=True)
            if subprocess.run(cmd).returncode != 0:
                print(f"fashion_grid: row {label} failed; rerun to continue it", file=sys.stderr)
                return 1
        results.append((label, json.loads(done.read_text())))
    if args.dry_run:
        return 0
    lines = ["| row | seed | " + " | ".join(f"FD seed {s}" for s in args.eval_seeds)
             + " | mean | held-out disc. acc. | acc. sigma < 0.05 / 0.05-0.2 | copy check | diverged | seconds |",
             "|---|---:|" + "---:|" * (len(args.eval_seeds) + 6)]
    for label, row in results:
        fds = [row[f"fd_seed{s}"] for s in args.eval_seeds]
        acc = row.get("disc_acc_heldout")
        copies = row.get("copy_check", {}).get("student_below_teacher_p5")
        bins = row.get("disc_acc_bins")
        low = "-" if not bins else f"{bins[0]:.2f} / {bins[1]:.2f}"
        check = row.get("divergence")  # uni_instruct rows: issue 20's criteria after the warm-up
        diverged = "-" if check is None else ("yes" if check["diverged"] else "no")
        lines.append(f"| {label} | {args.seed} | " + " | ".join(f"{v:.2f}" for v in fds)
                     + f" | {sum(fds) / len(fds):.2f} | {'-' if acc is None else f'{acc:.3f}'} | {low} | "
                     + f"{'-' if copies is None else f'{100 * copies:.1f}%'} | {diverged} | {row.get('train_seconds') or 0:.0f} |")
    table = "\n".join(lines)
    print(table)
    (output / f"table_s{args.seed}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
