"""Policy loading: profiles, files, overrides, and one clear message for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import PolicyError
from corral.policy import PROFILE_NAMES, Policy, load_policy, parse_duration, parse_size


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_builtin_profiles_load(name: str) -> None:
    policy = load_policy(name)
    assert policy.name == name


def test_strict_is_tighter_than_default() -> None:
    strict, default = load_policy("strict"), load_policy("default")
    assert strict.network.mode == "none"
    assert strict.resources.memory < default.resources.memory
    assert strict.resources.pids < default.resources.pids
    assert strict.resources.cpus < default.resources.cpus


def test_none_means_default() -> None:
    assert load_policy(None) == load_policy("default")


def test_file_with_extends_and_units(tmp_path: Path) -> None:
    p = write(tmp_path, "extends: strict\nname: mine\nresources:\n  memory: 1G\n"
                        "  command_timeout: 90s\n")
    policy = load_policy(p)
    assert policy.name == "mine"
    assert policy.resources.memory == 1024**3
    assert policy.resources.command_timeout == 90
    assert policy.resources.pids == load_policy("strict").resources.pids


def test_overrides_change_single_fields() -> None:
    policy = load_policy("strict", {"resources.cpus": 2, "resources.memory": "256MiB"})
    assert policy.resources.cpus == 2 and policy.resources.memory == 256 * 1024**2


def test_unknown_field_names_file_field_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\nresources:\n  cpus: 1\n  memroy: 1G\n")
    with pytest.raises(PolicyError) as info:
        load_policy(p)
    message = str(info.value)
    assert str(p) in message and "resources.memroy (line 4): unknown field" in message


def test_wrong_type(tmp_path: Path) -> None:
    p = write(tmp_path, "resources:\n  pids: many\n")
    with pytest.raises(PolicyError, match=r"resources\.pids \(line 2\): Input should be a valid"):
        load_policy(p)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("resources:\n  cpus: 0\n", "resources.cpus"),
        ("resources:\n  memory: 1KiB\n", "memory must be at least 16MiB"),
        ("resources:\n  command_timeout: 2h\n  sandbox_timeout: 1h\n",
         "command_timeout cannot exceed sandbox_timeout"),
        ("resources:\n  disk: lots\n", "expected a size"),
        ("network:\n  mode: internet\n", "network.mode"),
        ("network:\n  mode: gateway\n  allow:\n    - cidr: 10.0.0.0/33\n", "not a valid CIDR"),
        ("network:\n  mode: gateway\n  allow:\n    - domain: ''\n", "domain must not be empty"),
        ("network:\n  mode: gateway\n  allow:\n    - domain: '*.com'\n", "too broad"),
        ("network:\n  mode: gateway\n  allow:\n    - domain: a.example\n      ports: [70000]\n",
         "out of range"),
        ("network:\n  mode: gateway\n  allow:\n    - domain: a.example\n      cidr: 1.2.3.0/24\n",
         "exactly one of"),
        ("network:\n  allow:\n    - domain: a.example\n", "allow rules need mode 'gateway'"),
        ("gpu:\n  devices: [0, 0]\n", "unique"),
        ("filesystem:\n  workspace_path: relative\n", "absolute"),
        ("response:\n  high: explode\n", "response.high"),
    ],
)
def test_impossible_values_are_named(tmp_path: Path, yaml_text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, yaml_text))
    assert expected in str(info.value)


def test_allow_rule_error_names_the_rule_index(tmp_path: Path) -> None:
    p = write(tmp_path, "network:\n  mode: gateway\n  allow:\n    - domain: ok.example\n"
                        "    - cidr: nope\n")
    with pytest.raises(PolicyError, match=r"network\.allow\.1\.cidr \(line 5\)"):
        load_policy(p)


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    p = write(tmp_path, "resources:\n  cpus: [1\n")
    with pytest.raises(PolicyError, match=r"YAML syntax error at line \d+, column \d+"):
        load_policy(p)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="top level must be a mapping"):
        load_policy(write(tmp_path, "- a\n- b\n"))


def test_missing_file_and_unknown_profile() -> None:
    with pytest.raises(PolicyError, match="no such policy file or profile"):
        load_policy("nosuchprofile")


def test_unknown_extends(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="extends: unknown profile 'lax'"):
        load_policy(write(tmp_path, "extends: lax\n"))


def test_override_errors_name_the_flag() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy("default", {"resources.memory": "lots", "resources.pids": -5},
                    override_names={"resources.memory": "--memory", "resources.pids": "--pids"})
    message = str(info.value)
    assert "--memory: expected a size" in message and "--pids:" in message


def test_policy_is_immutable() -> None:
    policy = load_policy("default")
    with pytest.raises(ValueError, match="frozen"):
        policy.resources.cpus = 8  # type: ignore[misc]
    assert isinstance(policy, Policy)


@pytest.mark.parametrize(("text", "value"), [("512", 512), ("4KiB", 4096), ("2G", 2 * 1024**3),
                                             ("1.5MiB", 1572864), ("10MB", 10_000_000)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("90", 90), ("250ms", 0.25), ("5m", 300),
                                             ("1h", 3600), (2.5, 2.5)])
def test_parse_duration(text: str | float, value: float) -> None:
    assert parse_duration(text) == value
