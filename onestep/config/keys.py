"""The table of every config key (type and domain, default, meaning), generated from the schema.

``onestep keys`` prints it; docs/configuration.md carries it between ``<!-- keys:start -->`` and
``<!-- keys:end -->``, and a test keeps the two equal.
"""

from __future__ import annotations

from ..core import schema
from ..objectives import REGISTRY
from .objective import GENERAL_OBJECTIVE_KEYS, ObjectiveConfig
from .sections import Config


def _row(key: str, accepts: str, default: str, doc: str) -> str:
    cells = [f"`{key}`", accepts, f"`{default}`", doc]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def key_table() -> str:
    """Markdown: every section's keys, then each objective's own parameters."""
    lines = ["| key | accepts | default | meaning |", "|---|---|---|---|"]
    for key, accepts, default, doc in schema.rows(Config):
        if key.startswith("objective."):
            continue
        lines.append(_row(key, accepts, default, doc))
    for key, accepts, default, doc in schema.rows(ObjectiveConfig, "objective"):
        if key == "objective.name":
            accepts = "one of: " + " | ".join(REGISTRY)
        if key.split(".")[1] in GENERAL_OBJECTIVE_KEYS:
            lines.append(_row(key, accepts, default, doc))
    seen: dict[tuple, list[str]] = {}
    for name, spec in REGISTRY.items():
        for key, accepts, default, doc in schema.rows(spec.params, "objective"):
            seen.setdefault((key, accepts, default, doc), []).append(name)
    for (key, accepts, default, doc), names in seen.items():
        lines.append(_row(key, accepts, default, f"({', '.join(names)}) {doc}"))
    return "\n".join(lines)


START, END = "<!-- keys:start -->", "<!-- keys:end -->"


def update_readme(path) -> bool:
    """Rewrite the key table between the markers of a markdown file (docs/configuration.md); returns whether it changed."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    i, j = text.index(START) + len(START), text.index(END)
    new = text[:i] + "\n" + key_table() + "\n" + text[j:]
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":  # python -m onestep.config.keys docs/configuration.md
    import sys

    print("updated" if update_readme(sys.argv[1]) else "up to date")
