"""Layer 8: sample quality. FID/KID/IS/precision-recall (torch-fidelity), FD in the bundled
digits features, teacher NFE sweeps, and the analytic mixture's MMD and mode masses."""
