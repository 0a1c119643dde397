"""Layer 5: where samples come from: data sets, the analytic teacher's exact samples, and the
cache of teacher ODE samples (the data-free "real" side and the regression pairs)."""
