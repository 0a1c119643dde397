"""The config schema: typed sections loaded from YAML, validated, overridable with ``--set``.

The resolved config is the single source of truth of a run: it is printed by ``--dry-run``,
written to ``<run>/config.yaml`` and stored inside every checkpoint. Each key declares its
type, domain and meaning (``core.schema.key``); unknown keys, values of the wrong type or
outside their domain, and inconsistent combinations are errors that name the key. The
``objective:`` section takes the chosen objective's own parameters (its dataclass in
``objectives/``) next to the keys every objective shares. Renamed keys keep working for one
release with a one-line deprecation warning naming the new key (``RENAMED``).
"""

from __future__ import annotations

from ..core.schedule import ScheduleConfig
from .loading import (
    RENAMED,
    ConfigDeprecationWarning,
    apply_overrides,
    dump_yaml,
    from_dict,
    load,
    loads,
    read_yaml,
    resolve_paths,
    to_dict,
    validate,
)
from .objective import ObjectiveConfig
from .sections import (
    Config,
    DataConfig,
    DiscriminatorConfig,
    GanConfig,
    GeneratorConfig,
    NetworkConfig,
    RegressionConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "RENAMED", "Config", "ConfigDeprecationWarning", "DataConfig", "DiscriminatorConfig", "GanConfig",
    "GeneratorConfig", "NetworkConfig", "ObjectiveConfig", "RegressionConfig", "ScheduleConfig", "TeacherConfig",
    "TrainConfig", "apply_overrides", "dump_yaml", "from_dict", "load", "loads", "read_yaml", "resolve_paths",
    "to_dict", "validate",
]
