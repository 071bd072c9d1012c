"""Typed stage configuration: a dataclass per stage, loaded from YAML/TOML, overridden on the command line.

    cfg = load_config(MaskingConfig, "run.yaml", section="masking", overrides=["seed=7", "mix.pile=0.5"])

Unknown keys are errors (a typo must not silently fall back to a default); values are checked against
the field's type; nested dataclasses and dicts of plain values are supported.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import ConfigError

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML (`.yaml`/`.yml`) or TOML (`.toml`) file into a mapping."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn `["a.b=3", "c=[1, 2]"]` into a nested mapping; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`, checking keys and types."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"allowed here: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, where + name) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_mapping(hint, value, where=key + ".")
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vtype = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vtype, v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    *,
    section: str | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """Defaults of `cls`, then the file (or its `section`), then `values` (e.g. from flags), then overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_config_file(path)
        if section is not None:
            raw = raw.get(section, {}) or {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
        data = raw
    if values:
        data = merge(data, {k: v for k, v in values.items() if v is not None})
    data = merge(data, parse_overrides(overrides))
    return from_mapping(cls, data)
