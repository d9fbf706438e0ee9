"""YAML -> typed RunConfig, with `defaults:` composition and `key=value` overrides.

Every error names the file (or "command line") and the dotted key path, e.g.
`configs/x.yaml: train.optim.lr: expected float, got 'fast'`.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from .paths import check_path_keys
from .pixel_norm import resolve_pixel_norm
from .schema import RunConfig, check_layout, check_values

CMDLINE = "command line"
DEFAULTS_KEY = "defaults"
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A config problem; the message names the source and the key path."""


def resolve_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config path as given, relative to the including file, or under the repo's configs/."""
    p = Path(name)
    for cand in ([relative_to / p] if relative_to else []) + [p, REPO_CONFIGS / p,
                                                              REPO_CONFIGS / f"{p}.yaml"]:
        if cand.is_file():
            return cand
    raise ConfigError(f"{relative_to or '.'}: config file not found: {name}")


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())  # safe: no Python objects from YAML
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(dst: Dict[str, Any], src: Dict[str, Any], origin: Dict[str, str], source: str | None,
           prefix: str = "") -> None:
    """Deep-merge src into dst, recording which file set each leaf key (source None: keep the
    provenance the included file already recorded)."""
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v, origin, source, key + ".")
        else:
            dst[k] = v
            if source is None:
                continue
            origin[key] = source
            if isinstance(v, dict):
                for sub in _leaf_keys(v, key + "."):
                    origin[sub] = source


def _leaf_keys(d: Dict[str, Any], prefix: str) -> List[str]:
    out = []
    for k, v in d.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def load_raw(path: Path, origin: Dict[str, str], _stack: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    path = path.resolve()
    if path in _stack:
        raise ConfigError(f"{path}: defaults include cycle: {' -> '.join(map(str, _stack + (path,)))}")
    data = _read_yaml(path)
    includes = data.pop(DEFAULTS_KEY, [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise ConfigError(f"{path}: {DEFAULTS_KEY}: expected a list of config files")
    merged: Dict[str, Any] = {}
    for inc in includes:
        _merge(merged, load_raw(resolve_path(inc, path.parent), origin, _stack + (path,)), origin, None)
    _merge(merged, data, origin, str(path))
    return merged


def parse_override(item: str) -> Tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"{CMDLINE}: override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(raw: Dict[str, Any], overrides: List[str], origin: Dict[str, str]) -> None:
    for item in overrides:
        key, value = parse_override(item)
        node = raw
        parts = key.split(".")
        for n, part in enumerate(parts[:-1]):
            if part not in node:  # a section the command line creates (maybe a misspelt one)
                origin[".".join(parts[:n + 1])] = CMDLINE
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{CMDLINE}: {key}: {part} is not a section")
        node[parts[-1]] = value
        origin[key] = CMDLINE


def _where(origin: Dict[str, str], key: str) -> str:
    probe = key
    while probe:
        if probe in origin and origin[probe]:
            return origin[probe]
        probe = probe.rpartition(".")[0]
    return "<defaults>"


def _convert(tp: Any, value: Any, key: str, origin: Dict[str, str]) -> Any:
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{_where(origin, key)}: {key}: {msg}")

    origin_tp = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a section (mapping), got {value!r}")
        return build(tp, value, origin, key + ".")
    if origin_tp is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, origin)
    if origin_tp is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise fail(f"expected one of {list(choices)}, got {value!r}")
        return value
    if origin_tp is dict:
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {value!r}")
        k_tp, v_tp = typing.get_args(tp)
        return {_convert(k_tp, k, f"{key}.{k}", origin): _convert(v_tp, v, f"{key}.{k}", origin)
                for k, v in value.items()}
    if origin_tp in (list, List):
        if not isinstance(value, list):
            raise fail(f"expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected str, got {value!r}")
        return value
    raise fail(f"unsupported schema type {tp}")


def build(cls: type, raw: Dict[str, Any], origin: Dict[str, str], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            key = f"{prefix}{k}"
            raise ConfigError(f"{_where(origin, key)}: {key}: unknown key "
                              f"(known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, f"{prefix}{k}", origin) for k, v in raw.items()}
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: List[str] | None = None,
                world_size: int | None = None, check_files: bool = False) -> RunConfig:
    """Load, compose, override, type-check and value-check a run config (check_files: also
    require every local path key to exist with its format, see config/paths.py)."""
    origin: Dict[str, str] = {}
    raw = load_raw(resolve_path(path), origin) if path else {}
    apply_overrides(raw, overrides or [], origin)
    cfg = build(RunConfig, raw, origin)
    resolve_pixel_norm(cfg)
    errs = check_values(cfg) + (check_layout(cfg, world_size) if world_size else [])
    # every path key: exists and has its format (data folders, weights, tokenizers)
    errs += check_path_keys(cfg) if check_files else []
    if errs:
        raise ConfigError("\n".join(f"{_where(origin, k)}: {k}: {why}" for k, why in errs))
    return cfg


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
