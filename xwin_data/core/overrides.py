"""`--set a.b=value`: one reader of overrides for recipes, study configs and training configs, and the YAML value
rules every config file of the toolkit is read with.

The rules are YAML 1.2's: only `true` / `false` are booleans (`no`, `off`, `yes`, `on` stay words, which a field
that wants a boolean converts: pydantic and the training configs both do), `1e-3` is a number, `null` / `~` is
None, `[a, b]` a list, `{k: v}` a mapping, and an empty value is the empty string. PyYAML alone follows YAML 1.1,
where `save_strategy: no` would turn into False.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from xwin_data.core.errors import OverrideError

_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"


class YamlLoader(yaml.SafeLoader):
    """Safe loading (no code from YAML) with YAML 1.2 booleans and floats."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
YamlLoader.add_implicit_resolver(_FLOAT, re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)"
    r"|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - YamlLoader derives from SafeLoader


def load_yaml_file(path: str | Path) -> Any:
    return load_yaml(Path(path).read_text(encoding="utf-8"))


def parse_value(raw: str) -> Any:
    """An override's value by the rules above; text that is not valid YAML stays text."""
    if not raw.strip():
        return ""
    try:
        return load_yaml(raw)
    except yaml.YAMLError:
        return raw


def parse_override(expr: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value)."""
    if "=" not in expr:
        raise OverrideError(f"--set expects key=value, got {expr!r}")
    key, raw = expr.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise OverrideError(f"--set has an empty key in {expr!r}")
    return parts, parse_value(raw)


def set_path(data: dict, path: list, value: Any, expr: str) -> None:
    """Put `value` at `path` (keys, or indexes into lists) in `data`, making missing mappings on the way."""
    node: Any = data
    for key in path[:-1]:
        nxt = node[key] if isinstance(node, list) else node.get(key)
        if nxt is None:
            nxt = {}
            node[key] = nxt
        if not isinstance(nxt, (dict, list)):
            raise OverrideError(f"--set {expr}: cannot set inside {key!r}, it is a {type(nxt).__name__}")
        node = nxt
    node[path[-1]] = value


def apply_overrides(data: dict, exprs: list[str]) -> dict:
    """Each `a.b=value` applied in order to a config mapping (changed in place and returned)."""
    for expr in exprs:
        parts, value = parse_override(expr)
        set_path(data, parts, value, expr)
    return data
