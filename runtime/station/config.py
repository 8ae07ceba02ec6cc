"""A station's configuration file (`zsad-edge watch --config station.toml`), read with the standard
library's TOML reader (its `tomli` original on Python 3.10).

    bundle = "/opt/zsad-edge/bundles/line1"
    out = "/var/lib/zsad-edge/line1"

    [watch]                 # any `watch` option, spelled as on the command line (dashes or underscores)
    follow = true
    save = "anomalies"
    mqtt = "mqtt://broker/line1/{source}"

    [[source]]              # as many as there are cameras and folders
    name = "cam1"
    uri = "rtsp://op:${file:$CREDENTIALS_DIRECTORY/cam1-password}@10.0.0.11/stream1"
    roi = [[100, 80], [1180, 80], [1180, 640], [100, 640]]   # or {x = 100, y = 80, width = 1080, height = 560}
    image_threshold = 0.62  # this camera's own thresholds (optional)
    map_threshold = 0.5

    [retention]             # the same as --keep-days / --max-disk-gb
    keep_days = 30
    max_disk_gb = 50

Flags on the command line override the file. Every mistake is named with its place in the file
and what is expected (`--check-config` checks a file without starting).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6): the same reader, as a package
    import tomli as tomllib

from ..errors import ZsadEdgeError
from .source_rules import RegionOfInterest, SourceRules

TOP_LEVEL = {"bundle", "out", "memory_bank", "watch", "source", "retention"}
SOURCE_KEYS = {"name", "uri", "roi", "image_threshold", "map_threshold"}
RETENTION_KEYS = {"keep_days", "max_disk_gb"}
FROM_FILE_ONLY = {"config", "check_config", "sources"}


@dataclass
class StationConfig:
    """What a file says: option values by argparse dest, the sources' specs and their rules."""

    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    rules: dict[str, SourceRules] = field(default_factory=dict)


def load_config(path: Path, parser: argparse.ArgumentParser) -> StationConfig:
    """Read and check a station file against the `watch` parser's options."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ZsadEdgeError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ZsadEdgeError(f"{path}: not valid TOML ({exc})") from None
    config = StationConfig(Path(path))
    _refuse_unknown(raw, TOP_LEVEL, str(path))
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", *FROM_FILE_ONLY)}
    for key in ("bundle", "out", "memory_bank"):
        if key in raw:
            config.options[key] = Path(_typed(raw[key], str, f"{path}: {key}"))
    watch = raw.get("watch", {})
    _refuse_unknown({key.replace("-", "_"): v for key, v in watch.items()}, set(actions), f"{path}: [watch]")
    for key, value in watch.items():
        dest = key.replace("-", "_")
        config.options[dest] = _option(actions[dest], value, f"{path}: [watch] {key}")
    retention = raw.get("retention", {})
    _refuse_unknown(retention, RETENTION_KEYS, f"{path}: [retention]")
    for key, value in retention.items():
        config.options[key] = _option(actions[key], value, f"{path}: [retention] {key}")
    for index, source in enumerate(raw.get("source", [])):
        _source(config, source, f"{path}: [[source]] #{index + 1}")
    return config


def _source(config: StationConfig, source: Any, where: str) -> None:
    if not isinstance(source, dict):
        raise ZsadEdgeError(f"{where}: expected a table with name and uri")
    _refuse_unknown(source, SOURCE_KEYS, where)
    if "uri" not in source:
        raise ZsadEdgeError(f"{where}: uri is missing (a video file, folder, camera or stream URL)")
    uri = _typed(source["uri"], str, f"{where} uri")
    name = _typed(source.get("name", f"source{len(config.sources)}"), str, f"{where} name")
    if name in config.rules:
        raise ZsadEdgeError(f"{where}: the name {name!r} is used twice; every source needs its own")
    roi = RegionOfInterest.parse(source["roi"], f"{where} roi") if "roi" in source else None
    thresholds = {key: float(_typed(source[key], (int, float), f"{where} {key}"))
                  for key in ("image_threshold", "map_threshold") if key in source}  # fmt: skip
    config.sources.append(f"{name}={uri}")
    config.rules[name] = SourceRules(roi, **thresholds)


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser, config: StationConfig) -> None:
    """Fill in what the command line left at its default from the file (the command line wins)."""
    defaults = {action.dest: action.default for action in parser._actions}
    for dest, value in config.options.items():
        if getattr(args, dest, None) == defaults.get(dest):
            setattr(args, dest, value)
    if not args.sources:
        args.sources = config.sources


def _refuse_unknown(table: Any, known: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ZsadEdgeError(f"{where}: expected a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ZsadEdgeError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ZsadEdgeError(f"{where}: expected {names}, got {value!r}")
    return value


def _option(action: argparse.Action, value: Any, where: str) -> Any:
    """A value for one parser option, checked the way the command line would check it."""
    if isinstance(action, argparse._StoreTrueAction):
        return _typed(value, bool, where)
    if isinstance(action, argparse._AppendAction):
        return [_option_value(action, item, where) for item in _typed(value, list, where)]
    return _option_value(action, value, where)


def _option_value(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise ZsadEdgeError(f"{where}: expected a single value, got {value!r}")
    try:
        converted = action.type(value) if action.type else str(value)
    except (TypeError, ValueError):
        raise ZsadEdgeError(f"{where}: expected {getattr(action.type, '__name__', 'a value')}, got {value!r}") from None
    if action.choices and converted not in action.choices:
        raise ZsadEdgeError(f"{where}: expected one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted
