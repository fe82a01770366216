"""YAML loading that remembers where every key stood, so errors can name the file, the line and the key."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from xwin_data.core.errors import XwinError


class RecipeError(XwinError, ValueError):
    """A recipe problem found before any work: names the file, the line and the key."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, key: str | None = None):
        self.file, self.line, self.key = file, line, key
        where = ""
        if file:
            where = f"{file}:{line}" if line else file
        prefix = f"{where}: " if where else ""
        keypart = f"{key}: " if key else ""
        super().__init__(f"{prefix}{keypart}{message}")


class _Loader(yaml.SafeLoader):
    """Safe loader (no code from YAML) that records the line of each mapping key and sequence item."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    lines: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise RecipeError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1, key=str(key))
        out[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    _LINES[id(out)] = (out, lines)
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> list:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    _LINES[id(items)] = (items, {i: child.start_mark.line + 1 for i, child in enumerate(node.value)})
    return items


_LINES: dict[int, tuple[Any, dict]] = {}
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


class LineMap:
    """Maps a key path (tuple of keys and indexes) to the line it was written on."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {}

    def line_of(self, path: tuple) -> int | None:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def _collect(obj: Any, path: tuple, linemap: LineMap) -> None:
    entry = _LINES.get(id(obj))
    if entry is None or entry[0] is not obj:
        return
    for key, line in entry[1].items():
        linemap.lines[path + (key,)] = line
        child = obj[key]
        _collect(child, path + (key,), linemap)


def load_yaml_with_lines(path: str | Path) -> tuple[Any, LineMap]:
    """Load a YAML file safely and return (data, line map)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("file not found", file=str(path)) from None
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, filename: str = "<string>") -> tuple[Any, LineMap]:
    _LINES.clear()
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except RecipeError as err:
        raise RecipeError(str(err).split(": ", 1)[-1], file=filename, line=err.line, key=None) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        raise RecipeError(f"invalid YAML: {err.problem or err}", file=filename, line=line) from None
    linemap = LineMap()
    _collect(data, (), linemap)
    _LINES.clear()
    return data, linemap
