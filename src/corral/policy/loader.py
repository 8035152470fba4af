"""Load a policy from a built-in profile name or a YAML file, with single-field overrides.

Every failure becomes one :class:`PolicyError` that names the source (file and
line, profile or flag), the field and the problem; nothing is started on error.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.errors import PolicyError
from corral.policy.model import Policy

PROFILE_NAMES = ("strict", "default", "networked")


def list_profiles() -> list[str]:
    return list(PROFILE_NAMES)


def load_policy(
    source: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    override_names: Mapping[str, str] | None = None,
) -> Policy:
    """Build a policy.

    ``source`` is a profile name (``strict``, ``default``, ...), a YAML file path,
    or None for ``default``. ``overrides`` maps dotted field paths
    (``resources.cpus``) to values; ``override_names`` maps the same paths to
    what the user typed (``--cpus``) so errors can name it.
    """
    label, data, document = _read_source(source)
    merged = copy.deepcopy(data)
    for dotted, value in (overrides or {}).items():
        _set_dotted(merged, dotted, value)
    try:
        return Policy.model_validate(merged)
    except ValidationError as exc:
        raise PolicyError(label, _describe(exc, document, override_names or {})) from None


def _read_source(source: str | Path | None) -> tuple[str, dict[str, Any], yaml.Node | None]:
    if source is None:
        source = "default"
    text = str(source)
    if isinstance(source, str) and text in PROFILE_NAMES:
        label, data, document = _parsed_profile(text)
        return label, copy.deepcopy(data), document
    path = Path(text)
    if not path.exists():
        hint = f" (built-in profiles: {', '.join(PROFILE_NAMES)})" if "/" not in text else ""
        raise PolicyError(text, [f"no such policy file or profile{hint}"])
    if path.is_dir():
        raise PolicyError(text, ["is a directory, not a policy file"])
    try:
        body = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(text, [f"cannot read: {exc}"]) from None
    label, data, document = _load_yaml(text, body)
    base_name = data.pop("extends", None)
    if base_name is None:
        return label, data, document
    if base_name not in PROFILE_NAMES:
        raise PolicyError(
            label, [f"extends: unknown profile {base_name!r} (choose {', '.join(PROFILE_NAMES)})"]
        )
    _, base, _ = _load_yaml(base_name, _profile_text(base_name))
    base.pop("name", None)
    return label, _deep_merge(base, data), document


@functools.cache
def _profile_text(name: str) -> str:
    return resources.files("corral.policy").joinpath(f"profiles/{name}.yaml").read_text("utf-8")


@functools.cache
def _parsed_profile(name: str) -> tuple[str, dict[str, Any], yaml.Node | None]:
    return _load_yaml(f"profile '{name}'", _profile_text(name))


def _load_yaml(label: str, body: str) -> tuple[str, dict[str, Any], yaml.Node | None]:
    try:
        document = yaml.compose(body, Loader=yaml.SafeLoader)
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(label, [f"YAML syntax error{where}: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(label, [f"top level must be a mapping, got {type(data).__name__}"])
    return label, data, document


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _describe(
    exc: ValidationError, document: yaml.Node | None, override_names: Mapping[str, str]
) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # Pydantic appends validator-internal segments (e.g. "function-after"); drop them.
        loc = [p for p in loc if not p.startswith(("function-", "constrained-"))]
        field = ".".join(loc) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        message = message.removeprefix("Value error, ")
        flag = _flag_for(loc, override_names)
        if flag:
            problems.append(f"{flag}: {message}")
            continue
        line = _line_of(document, loc)
        at = f" (line {line})" if line else ""
        problems.append(f"{field}{at}: {message}")
    return problems


def _flag_for(loc: list[str], override_names: Mapping[str, str]) -> str | None:
    for depth in range(len(loc), 0, -1):
        flag = override_names.get(".".join(loc[:depth]))
        if flag:
            return flag
    return None


def _line_of(node: yaml.Node | None, loc: list[str]) -> int | None:
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
            key = next((k for k, _ in node.value if k.value == part), None)
            if match is None:
                break
            line = (key or match).start_mark.line + 1
            node = match
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line
