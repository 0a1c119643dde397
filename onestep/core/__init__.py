"""Layer 1: torch-level building blocks that know no teacher, objective or loop: the config
schema machinery, noise schedules, tensor and module helpers, samplers, atomic I/O and the
run-directory layout."""
