"""Layer 2: networks in the one denoiser language (``denoiser.Denoiser``), the generator and fake
score built from them, the discriminator, and attention kernels. Nothing here knows a loss."""
