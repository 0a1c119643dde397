"""Layer 7: the loop. accelerate, optimizers, the non-finite policy, EMA, checkpoints and logs;
the denoiser fits (analytic teachers, the bundled digits teacher)."""
