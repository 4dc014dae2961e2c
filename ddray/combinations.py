"""The combinations of a ``sweep:`` section: dotted keys, their values, every setting of them.

Pure and schema-agnostic (it walks whatever pydantic model it is given), so the config's own
validator (``ddray/config.py``) can check every combination before anything runs, and
``ddray/sweep.py`` can plan the runs, without either importing the other.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import types
import typing
from typing import Any, Callable

from pydantic import BaseModel

SEED = "seed"
NOT_SWEPT = {
    "sweep": "a sweep cannot sweep itself",
    "storage": "every run of a sweep is stored under the sweep's own folder (and storage prefix)",
    "dataset.path": "a sweep reads one data set path; sweep other dataset keys, or run one sweep per path",
}
NAME_MAX = 64  # a run's folder name is also its run id under storage (ddray/run_dir.py: RUN_ID_MAX)


def expand(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, in the order of the keys (the last key varies fastest)."""
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``a.b.c`` set to ``value`` (missing or null sections become mappings)."""
    return apply(data, {key: value})


def apply(data: dict[str, Any], setting: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``data`` with every dotted key of ``setting`` set."""
    out = copy.deepcopy(data)
    for key, value in setting.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    return out


def describe(setting: dict[str, Any]) -> str:
    """``decomposition.grid=[2, 2], seed=0``: how messages name a combination."""
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in setting.items())


def key_problem(model: type[BaseModel], key: str) -> str | None:
    """Why ``key`` is no dotted field of ``model`` (names the key and what exists there), or None."""
    if not key or any(not part for part in key.split(".")):
        return f"'{key}' is not a dotted config key such as decomposition.grid or training.lr"
    for banned, why in NOT_SWEPT.items():
        if key == banned or key.startswith(banned + "."):
            return f"'{key}' cannot be swept: {why}"
    node: Any = model
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if node is dict:  # a free mapping (e.g. tune.space): the config's validation checks the rest
            return None
        fields = node.model_fields
        if part not in fields:
            return f"unknown key '{key}': {where} has no '{part}' (it has {', '.join(fields)})"
        node = _section(fields[part].annotation)
        if node is None and i < len(parts) - 1:
            return f"unknown key '{key}': {'.'.join(parts[: i + 1])} is a value, not a section"
    return None


def _section(annotation: Any) -> type[BaseModel] | type[dict] | None:
    """The model (or ``dict``) an annotation such as ``TuneConfig | None`` holds, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is dict:
        return dict
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _section(arg)
            if found is not None:
                return found
    return None


def problems(
    base: dict[str, Any],
    sweep: dict[str, list[Any]],
    model: type[BaseModel],
    check: Callable[[dict[str, Any]], list[str]],
    max_runs: int,
) -> list[str]:
    """Everything wrong with a sweep, before any run: bad keys, empty lists, too many runs, and every
    combination ``check`` refuses (each problem names the combination and the key)."""
    out = []
    for key, values in sweep.items():
        problem = key_problem(model, key)
        if problem:
            out.append(f"sweep.{key}: {problem}")
        elif not isinstance(values, list) or not values:
            out.append(f"sweep.{key}: give a non-empty list of values, e.g. {key}: [a, b]")
    if out:
        return out
    count = 1
    for values in sweep.values():
        count *= len(values)
    if count > max_runs:
        return [f"sweep: {count} combinations is above the limit {max_runs} (set DDRAY_MAX_SWEEP_RUNS to lift it)"]
    settings = expand(sweep)
    for k, setting in enumerate(settings, 1):
        for problem in check(apply(base, setting)):
            out.append(f"sweep combination {k} of {len(settings)} ({describe(setting)}): {problem}")
        if len(out) >= 20:
            out.append("... (further combinations not checked)")
            break
    return out


def _slug(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        text = "x".join(str(v) for v in value)
    elif isinstance(value, list):
        text = "-".join(_slug(v) for v in value) or "none"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def run_names(settings: list[dict[str, Any]]) -> list[str]:
    """A folder name per combination: ``grid-2x2_seed-0``; the full dotted key when two keys end alike;
    ``run-003`` when a name would be too long for a run id or repeat another."""
    if not settings:
        return []
    keys = list(settings[0])
    last = [k.rsplit(".", 1)[-1] for k in keys]
    labels = {k: (k if last.count(k.rsplit(".", 1)[-1]) > 1 else k.rsplit(".", 1)[-1]) for k in keys}
    names = ["_".join(f"{labels[k]}-{_slug(v)}" for k, v in s.items()) or "run" for s in settings]
    width = max(3, len(str(len(settings))))
    return [
        name if len(name) <= NAME_MAX and names.count(name) == 1 and name not in (".", "..") else f"run-{i:0{width}d}"
        for i, name in enumerate(names)
    ]
