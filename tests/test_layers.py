"""The package's shape stays true: every import (function-level ones included) points down the
layers of docs/architecture.md, there are no cycles, and no class or module outgrows its job."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onestep"

# docs/architecture.md: a module may import only modules of its own layer or below
LAYERS = {
    "onestep.errors": 0, "onestep.portable": 0, "onestep.resources": 0,
    "onestep.core": 1,
    "onestep.objectives": 2, "onestep.nets": 2,
    "onestep.config": 3,
    "onestep.teachers": 4,
    "onestep.data": 5, "onestep.sampling": 5,
    "onestep.distill": 6,
    "onestep.train": 7,
    "onestep.evaluation": 8, "onestep.runs": 8, "onestep.export": 8, "onestep.export_lora": 8,
    "onestep.build": 9,
    "onestep.cli": 10, "onestep.demo": 10, "onestep.__main__": 10, "onestep": 10,
}
# same-layer or lower imports that are still forbidden
FORBIDDEN = [
    ("onestep.objectives", "onestep.nets"), ("onestep.nets", "onestep.objectives"),
    ("onestep.portable", "onestep."),  # copied into exports: torch and diffusers only
    ("onestep.evaluation", "onestep.train"), ("onestep.evaluation", "onestep.distill"),
    ("onestep.evaluation", "onestep.objectives"), ("onestep.runs", "onestep.train"),
    ("onestep.runs", "onestep.distill"), ("onestep.export", "onestep.train"), ("onestep.export", "onestep.distill"),
    ("onestep.export_lora", "onestep.train"), ("onestep.export_lora", "onestep.distill"),
]
MAX_CLASS, MAX_MODULE = 300, 400


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every onestep module ``name`` imports, resolved to the deepest existing module."""
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".")
            if node.level:
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` depends on pkg.sub (pkg's __init__ only when a name is not a module)
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("onestep"):
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def _is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def test_every_module_has_a_layer():
    for name in MODULES:
        assert any(name == p or name.startswith(p + ".") for p in LAYERS if p != "onestep") or name == "onestep", name


def test_imports_point_down():
    upward = [(a, b) for a, deps in GRAPH.items() for b in deps if _layer(b) > _layer(a)]
    assert not upward, "upward imports: " + ", ".join(f"{a} -> {b}" for a, b in upward)


def test_forbidden_imports():
    bad = [(a, b) for a, deps in GRAPH.items() for b in deps for src, dst in FORBIDDEN
           if _is_within(a, src) and _is_within(b, dst) and not _is_within(b, src)]
    assert not bad, ", ".join(f"{a} -> {b}" for a, b in bad)


def test_no_import_cycles():
    """Tarjan's strongly connected components; a package importing its own children is no cycle."""
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w in MODULES and MODULES[v].name == "__init__.py" and w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_test_detects_what_it_should():
    """The checks are not vacuous: the graph has edges, and a planted upward edge is seen."""
    assert sum(len(d) for d in GRAPH.values()) > 100
    assert "onestep.core.schedule" in GRAPH["onestep.objectives.ratio"]
    assert _layer("onestep.train.trainer") > _layer("onestep.distill.method") > _layer("onestep.objectives.dmd")


def test_no_class_or_module_outgrows_its_job():
    for name, path in MODULES.items():
        if name.startswith("onestep.resources."):  # generated: portable.bundle() of portable/ as one file
            continue
        text = path.read_text()
        assert len(text.splitlines()) <= MAX_MODULE, f"{name}: {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= MAX_CLASS, f"{name}.{node.name}: {size} lines"


def test_no_reference_leaves_the_repository():
    """Docs the code and README cite exist in the repository (no DESIGN.md / ECOSYSTEM.md outside it)."""
    root = PACKAGE.parent
    files = [*root.glob("onestep/**/*.py"), root / "README.md", *root.glob("eval/*.py"), *root.glob("configs/*.yaml"),
             *(p for p in root.glob("tests/*.py") if p.name != "test_layers.py")]
    texts = [p.read_text() for p in files]
    for ref in ("DESIGN.md", "ECOSYSTEM.md", "ARCHITECTURE.md"):
        assert not any(ref in t for t in texts), ref
    for t in texts:
        for word in t.replace("`", " ").replace("(", " ").replace(")", " ").split():
            if word.startswith("docs/") and word.rstrip(".,;:").endswith(".md"):
                assert (root / word.rstrip(".,;:")).is_file(), word


def _kind_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing a teacher's ``kind`` (``teacher.kind``, ``config.teacher.kind``, ``t.kind``) to a string."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        strings = any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides)
        for s in sides:
            if isinstance(s, ast.Attribute) and s.attr == "kind":
                owner = s.value.attr if isinstance(s.value, ast.Attribute) else getattr(s.value, "id", "")
                if strings and owner in ("teacher", "t"):
                    found.append(node.lineno)
    return found


def test_teacher_kinds_are_looked_up_not_compared():
    """Each teacher kind is one entry of teachers/kinds.py; nothing else compares teacher.kind to a name."""
    bad = [f"{name}:{line}" for name, path in MODULES.items() if name != "onestep.teachers.kinds"
           and not name.startswith("onestep.resources.")
           for line in _kind_comparisons(ast.parse(path.read_text()))]
    assert not bad, "teacher.kind compared to a name (use teachers.kinds.get(kind)): " + ", ".join(bad)
    planted = ast.parse("if config.teacher.kind == 'gmm':\n    pass\nif t.kind != 'diffusers':\n    pass\n")
    assert _kind_comparisons(planted) == [1, 3]
