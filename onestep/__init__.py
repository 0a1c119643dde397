"""onestep: distill a pretrained diffusion model into a one-step generator."""

__version__ = "0.1.0"
