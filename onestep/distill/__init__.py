"""Layer 6: the distillation algorithm, one iteration as losses. It knows no optimizer and no
accelerate: ``train/`` owns the loop and steps what these losses return."""
