"""Package data needed at run time: the bundled digits teacher, the FD-digits and FD-fashion feature
networks and the demo's config. Made by this project's own scripts (resources/README.md records how)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
DIGITS_TEACHER = ROOT / "digits-teacher"
DIGITS_FEATURES = ROOT / "digits-features.safetensors"
FASHION_FEATURES = ROOT / "fashion-features.safetensors"
DEMO_CONFIG = ROOT / "digits.yaml"
FASHION_TEACHER = ROOT / "fashion-teacher"
FASHION_CONFIG = ROOT / "fashion.yaml"
