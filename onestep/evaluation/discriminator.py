"""What a run's log says about its discriminator: the summary a report or a benchmark row gives."""

from __future__ import annotations

import statistics

from ..core.rundir import SPREAD_EDGES


def discriminator_summary(stats: list[dict], last: int = 5) -> dict:
    """Means over the last ``last`` log rows that carry a held-out check (``{}`` if none): held-out
    accuracy overall (``disc_acc_heldout``) and per sigma bin (``disc_acc_bins``), head loss, the
    spread of log r per sigma bin (``logr_std``; bins: ``sigma_bins``), and the largest normalised
    f-weight the run used (``h_max``)."""
    rows = [r for r in stats if "disc_acc_heldout" in r][-last:]
    if not rows:
        return {}
    mean = statistics.fmean
    out = {"disc_acc_heldout": mean(r["disc_acc_heldout"] for r in rows),
           "loss_disc": mean(r["loss_disc"] for r in rows if "loss_disc" in r) if "loss_disc" in rows[0] else None,
           "sigma_bins": [0.0, *SPREAD_EDGES], "rows": len(rows)}
    for key in ("logr_std", "disc_acc_bins"):
        if key in rows[0]:
            out[key] = [mean(r[key][i] for r in rows) for i in range(len(rows[0][key]))]
    h = [r["h_max"] for r in stats if "h_max" in r]
    out["h_max"] = max(h) if h else None
    return out
