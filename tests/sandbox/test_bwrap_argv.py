"""The bwrap argv is a pure function of its parameters: check each isolation decision."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from corral.errors import SandboxUnavailable
from corral.policy import load_policy
from corral.sandbox.bwrap import BwrapParams, build_argv
from corral.sandbox.etcview import PLACEHOLDERS, etc_view
from corral.sandbox.runtime import _gpu_device_nodes


def params(**kw: object) -> BwrapParams:
    base: dict[str, object] = {"bwrap": "/usr/bin/bwrap", "init_binary": "/x/init",
                               "policy": load_policy("default"), "seccomp_fd": 7, "info_fd": 8}
    base.update(kw)
    return BwrapParams(**base)  # type: ignore[arg-type]


def test_all_namespaces_and_no_nested_userns() -> None:
    argv = build_argv(params())
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup", "--unshare-net", "--disable-userns", "--new-session",
                 "--die-with-parent", "--as-pid-1", "--clearenv"):
        assert flag in argv, flag
    assert argv[argv.index("--seccomp") + 1] == "7"


def test_joined_netns_keeps_the_prepared_namespace() -> None:
    assert "--unshare-net" not in build_argv(params(joined_netns=True))


def test_nothing_of_the_host_home_is_bound_and_root_is_read_only() -> None:
    argv = build_argv(params())
    binds = ("--bind", "--ro-bind", "--dev-bind")
    sources = [argv[i + 1] for i, a in enumerate(argv) if a in binds]
    assert not any(s.startswith(("/root", "/home", "/var", "/run", "/sys")) for s in sources)
    assert "--bind" not in argv and "--dev-bind" not in argv  # nothing host-writable
    last_mount = max(i for i, a in enumerate(argv) if a == "--remount-ro")
    assert argv[last_mount + 1] == "/"
    assert argv[-2:] == ["/.corral/init", "serve"]


def test_writable_dirs_are_size_capped_tmpfs() -> None:
    policy = load_policy("default", {"resources.disk": "5MiB"})
    argv = build_argv(params(policy=policy))
    for path in ("/workspace", "/tmp", "/home/agent"):
        i = argv.index(path)
        assert argv[i - 1] == "--tmpfs" and argv[i - 5 : i - 3] == ["--size", str(5 * 1024**2)]


def test_etc_view_copies_only_world_readable_entries(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "ssl" / "private").mkdir(parents=True)
    (etc / "ssl" / "private" / "key.pem").write_text("PRIVATE")
    (etc / "ssl" / "private").chmod(0o700)
    (etc / "ssl" / "openssl.cnf").write_text("cnf")
    (etc / "shadow").write_text("root:hash")
    (etc / "hostname").write_text("host-name-leak")
    (etc / "alternatives").mkdir()
    (etc / "alternatives" / "python").symlink_to("/usr/bin/python3")
    view = etc_view(tmp_path / "views", etc)
    assert (view / "ssl" / "openssl.cnf").read_text() == "cnf"
    assert not (view / "ssl" / "private").exists()
    assert not (view / "shadow").exists()
    assert (view / "alternatives" / "python").readlink() == Path("/usr/bin/python3")
    for name in PLACEHOLDERS:
        assert (view / name).read_text() == ""  # host identity never copied
    assert stat.S_IMODE(view.stat().st_mode) == 0o755
    assert etc_view(tmp_path / "views", etc) == view  # unchanged host: same view reused


def test_granted_gpu_nodes_are_bound_and_nothing_else() -> None:
    argv = build_argv(params(gpu_devices=("/dev/nvidia1", "/dev/nvidiactl")))
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--dev-bind"]
    assert binds == ["/dev/nvidia1", "/dev/nvidiactl"]
    assert "--dev-bind" not in build_argv(params())


def test_gpu_nodes_resolved_from_policy(tmp_path: Path) -> None:
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()
    assert _gpu_device_nodes([0], tmp_path) == (str(tmp_path / "nvidia0"),
                                                 str(tmp_path / "nvidiactl"))
    assert _gpu_device_nodes([], tmp_path) == ()
    with pytest.raises(SandboxUnavailable, match="nvidia3 does not exist"):
        _gpu_device_nodes([3], tmp_path)
