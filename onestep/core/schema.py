"""Typed sections: dataclasses whose fields declare a type, a domain and a one-line doc.

``build(cls, data, prefix)`` turns a YAML mapping into ``cls``: unknown keys, values of the
wrong type and values outside a field's domain (range, sign, finiteness, list length) are
errors that name the key and say what it accepts. A dataclass may add relations between its
fields in a ``check(self, prefix)`` method, called after its fields are built. The same
metadata renders the key table of docs/configuration.md (``rows``), so the documentation cannot drift from
what is enforced.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Literal, Union

from ..errors import OnestepError


@dataclass(frozen=True)
class Domain:
    """What a number (or each number of a list) may be; lists may also need a length."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = True
    length: int | None = None  # lists: exactly this many entries
    nonempty: bool = False  # lists and strings: at least one entry

    def admits(self, v: float) -> bool:
        if self.finite and not math.isfinite(v):
            return False
        return not ((self.gt is not None and not v > self.gt) or (self.ge is not None and not v >= self.ge)
                    or (self.lt is not None and not v < self.lt) or (self.le is not None and not v <= self.le))

    def describe(self) -> str:
        bounds = ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
        return " and ".join(f"{op} {_num(b)}" for op, b in bounds if b is not None)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def key(default: Any = MISSING, doc: str = "", *, default_factory: Any = MISSING, gt=None, ge=None, lt=None,
        le=None, finite: bool = True, length: int | None = None, nonempty: bool = False) -> Any:
    """A dataclass field with a domain and a doc line (``doc`` goes into the key table of docs/configuration.md)."""
    meta = {"doc": doc, "domain": Domain(gt, ge, lt, le, finite, length, nonempty)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def domain_of(f: dataclasses.Field) -> Domain:
    return f.metadata.get("domain", Domain())


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " or null"
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def accepts(tp: Any, dom: Domain) -> str:
    """What a key accepts, in words: ``a number > 0``, ``one of: a | b``, ``a list of 2 numbers``."""
    base = typing.get_origin(tp)
    optional = base in (Union, types.UnionType) and type(None) in typing.get_args(tp)
    if optional:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        base = typing.get_origin(tp)
    if base is Literal:
        text = "one of: " + " | ".join(str(a) for a in typing.get_args(tp))
    elif base in (list, tuple):
        inner = typing.get_args(tp)[0]
        count = f"{dom.length} " if dom.length else ("one or more " if dom.nonempty else "")
        text = f"a list of {count}{type_name(inner)}s" + (f", each {dom.describe()}" if dom.describe() else "")
    else:
        text = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, type_name(tp))
        if dom.describe():
            text += " " + dom.describe()
    return text + (" (or null)" if optional else "")


def _fail(key: str, tp: Any, dom: Domain, value: Any) -> OnestepError:
    return OnestepError(f"config key '{key}': expected {accepts(tp, dom)}, got {value!r}")


def coerce(value: Any, tp: Any, key: str, dom: Domain = Domain()) -> Any:
    """``value`` as type ``tp`` within ``dom``, or an OnestepError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, dom)
            except OnestepError:
                pass
        raise _fail(key, tp, dom, value)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise _fail(key, tp, dom, value)
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)) or (dom.length is not None and len(value) != dom.length) \
                or (dom.nonempty and not value):
            raise _fail(key, tp, dom, value)
        item_dom = dataclasses.replace(dom, length=None, nonempty=False)
        out = []
        for v in value:
            try:
                out.append(coerce(v, inner, key, item_dom))
            except OnestepError:
                raise _fail(key, tp, dom, value) from None
        return out if origin is list else tuple(out)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if dom.admits(value):
            return value
    elif tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string: accept any float spelling
            v = float(value)
        except ValueError:
            raise _fail(key, tp, dom, value) from None
        if dom.admits(v):
            return v
    elif tp is str and isinstance(value, str):
        if value or not dom.nonempty:
            return value
    raise _fail(key, tp, dom, value)


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from a mapping; every error names its key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"config section '{prefix}'" if prefix else "config file"
        raise OnestepError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            full = f"{prefix}.{name}" if prefix else str(name)
            raise OnestepError(f"unknown config key '{full}' (valid keys here: {', '.join(fields)})")
    kwargs = {name: coerce(data[name], hints[name], f"{prefix}.{name}" if prefix else name, domain_of(f))
              for name, f in fields.items() if name in data}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check(prefix)
    return obj


def rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, accepts, default, doc) for every leaf key of ``cls``, depth first."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        full = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += rows(tp, full)
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        shown = "null" if default is None else str(list(default) if isinstance(default, tuple) else default)
        out.append((full, accepts(tp, domain_of(f)), shown, f.metadata.get("doc", "")))
    return out
