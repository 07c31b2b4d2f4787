"""Reading recipe YAML with the file and line of every value, and ``extends`` (a recipe built on a base).

Errors must name the file, the line and the field, also for values a recipe inherited, so each value's location
is kept next to the data (``Located``) through the merge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from qsam2_ext.errors import QSAM2Error

FieldPath = tuple  # a field path such as ("rules", 2, "bits")

# A recipe is a small hand-written file: bounds that no real one comes near, checked on the event stream before any
# node is built (PyYAML bounds neither alias expansion nor nesting: a few hundred bytes can take gigabytes).
MAX_RECIPE_BYTES = 256 * 1024
MAX_DEPTH = 16
MAX_EVENTS = 50_000
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


class RecipeError(QSAM2Error):
    """A recipe problem, located: ``file:line: field: message``."""

    def __init__(self, message: str, file: Optional[str] = None, line: Optional[int] = None, field: str = ""):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = ":".join(str(x) for x in (file, line) if x is not None)
        super().__init__(": ".join(x for x in (where, field, message) if x))


def field_name(path: FieldPath) -> str:
    """``("rules", 2, "bits")`` -> ``rules[2].bits``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Located:
    """Plain YAML data plus ``locations``: field path -> (file, line) of the value (of the mapping if missing)."""

    data: dict
    locations: dict = field(default_factory=dict)

    def where(self, path: FieldPath) -> tuple[Optional[str], Optional[int]]:
        """The location of ``path``, or of its closest located parent (a missing field: the enclosing mapping)."""
        path = tuple(path)
        while path not in self.locations and path:
            path = path[:-1]
        return self.locations.get(path, (None, None))

    def error(self, path: FieldPath, message: str) -> RecipeError:
        file, line = self.where(path)
        return RecipeError(message, file, line, field_name(path))


def _walk(node: yaml.Node, path: FieldPath, file: str, out: dict, line: Optional[int] = None) -> None:
    out[path] = (file, line or node.start_mark.line + 1)  # a field's line is its key's (a mapping value starts below)
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key, value in node.value:
            if key.value in seen:  # PyYAML silently keeps the last one: a typo guard
                raise RecipeError(f"duplicate key (first on line {seen[key.value]})", file, key.start_mark.line + 1,
                                  field_name(path + (key.value,)))
            seen[key.value] = key.start_mark.line + 1
            _walk(value, path + (key.value,), file, out, key.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _walk(value, path + (i,), file, out)


def _check_events(text: str, path: str) -> None:
    """Refuse anchors/aliases, nesting deeper than ``MAX_DEPTH`` and more than ``MAX_EVENTS`` YAML events."""
    depth = 0
    for count, event in enumerate(yaml.parse(text, Loader=yaml.SafeLoader)):
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise RecipeError("YAML anchors and aliases (&name, *name) are not allowed in recipes: write the "
                              "values out, or use `extends`", path, line)
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"nested deeper than {MAX_DEPTH} levels", path, line)
        elif isinstance(event, _CLOSE):
            depth -= 1
        if count >= MAX_EVENTS:
            raise RecipeError(f"more than {MAX_EVENTS} YAML values: not a recipe", path, line)


def read_yaml(path: str) -> Located:
    """One YAML file as a mapping with the location of every value (no ``extends`` handling)."""
    try:
        size = os.path.getsize(path)
        if size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{size} bytes: a recipe is at most {MAX_RECIPE_BYTES // 1024} KiB", path)
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"cannot read the recipe: {e.strerror or e}", path) from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"not UTF-8 text (byte {e.start})", path) from None
    try:
        _check_events(text, path)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise RecipeError(f"invalid YAML: {e.problem}", path, line) from None
    except yaml.YAMLError as e:
        raise RecipeError(f"invalid YAML: {' '.join(str(e).split())[:160]}", path) from None
    if not isinstance(data, dict):
        raise RecipeError("a recipe is a YAML mapping (model, defaults, rules, ...)", path, 1)
    locations: dict = {}
    _walk(node, (), path, locations)
    return Located(data, locations)


def _prefixed(locations: dict, prefix: FieldPath) -> dict:
    return {p[len(prefix):]: loc for p, loc in locations.items() if p[:len(prefix)] == prefix}


def _merge(base: Located, child: Located) -> Located:
    """Mappings merge key by key (the child wins); ``rules`` are the child's followed by the base's, so the
    child's rules are tried first (first match wins)."""
    data, locations = dict(base.data), dict(base.locations)
    for key, value in child.data.items():
        sub = Located(value if isinstance(value, dict) else {}, _prefixed(child.locations, (key,)))
        if key == "rules" and isinstance(value, list) and isinstance(base.data.get(key), list):
            offset = len(value)
            locations = {p: loc for p, loc in locations.items() if p[:1] != (key,)}
            for p, loc in _prefixed(base.locations, (key,)).items():
                locations[(key,) + ((p[0] + offset,) + p[1:] if p else ())] = loc
            locations.update({(key,) + p: loc for p, loc in sub.locations.items() if p})
            locations.setdefault((key,), child.locations[(key,)])
            data[key] = value + base.data[key]
            continue
        if isinstance(value, dict) and isinstance(base.data.get(key), dict):
            merged = _merge(Located(base.data[key], _prefixed(base.locations, (key,))), sub)
            value, sub = merged.data, merged
        locations = {p: loc for p, loc in locations.items() if p[:1] != (key,)}
        locations.update({(key,) + p: loc for p, loc in sub.locations.items()})
        locations[(key,)] = child.locations[(key,)]
        data[key] = value
    if () in child.locations:
        locations[()] = child.locations[()]  # the recipe itself is the child's file
    return Located(data, locations)


def load_located(path: str, find, _chain: tuple = ()) -> Located:
    """``path`` with its ``extends`` chain resolved; ``find(name, relative_to)`` locates a base recipe."""
    path = os.path.abspath(path)
    if path in _chain:
        raise RecipeError("recipes extend each other in a cycle: " + " -> ".join(_chain + (path,)), path)
    own = read_yaml(path)
    base_name = own.data.pop("extends", None)
    if base_name is None:
        return own
    if not isinstance(base_name, str) or not base_name:
        raise own.error(("extends",), f"must name a recipe or a path, got {base_name!r}")
    try:
        base_path = find(base_name, os.path.dirname(path))
    except RecipeError as e:
        raise own.error(("extends",), e.reason) from None
    own.locations = {p: loc for p, loc in own.locations.items() if p[:1] != ("extends",)}
    return _merge(load_located(base_path, find, _chain + (path,)), own)
