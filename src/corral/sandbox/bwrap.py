"""A pure function from one typed parameter object to a bubblewrap argv.

Nothing here runs anything, so every isolation decision can be read and tested
on its own. Sections: namespaces, identity, filesystem, process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from corral.policy import Policy

SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_USER = "agent"
SANDBOX_HOME = "/home/agent"
SANDBOX_HOSTNAME = "corral"
INIT_PATH = "/.corral/init"

# Top-level directories that on merged-/usr systems are symlinks into /usr.
_USR_ALIASES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# /etc is an allowlist: what programs need to run, never shadow, sudoers, ssh host keys
# or anything else that identifies or authenticates the host.
ETC_ALLOWLIST = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "issue",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "login.defs",
    "magic",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "perl",
    "profile",
    "protocols",
    "python3",
    "python3.11",
    "rpc",
    "services",
    "ssl",
    "timezone",
    "xattr.conf",
)


@dataclass(frozen=True, slots=True)
class DataFile:
    """A file whose content bwrap copies from an fd, bound read-only at ``dest``."""

    dest: str
    fd: int


@dataclass(frozen=True, slots=True)
class BwrapParams:
    bwrap: str
    init_binary: str
    policy: Policy
    seccomp_fd: int
    info_fd: int
    data_files: tuple[DataFile, ...] = ()
    # True when the launcher already entered a prepared network namespace (gateway mode).
    joined_netns: bool = False
    host_root: str = "/"
    # Paths to mask, each with whether it is a directory (resolved on the host by the caller).
    hidden: tuple[tuple[str, bool], ...] = ()
    # A prepared directory holding the /etc allowlist (see etcview); None binds entry by entry.
    etc_view: str | None = None
    # Datagram socket on which each command's process reports its (host-translated) pid.
    report_fd: int | None = None
    # Host device nodes of the GPUs the policy grants (resolved and checked by the caller).
    gpu_devices: tuple[str, ...] = ()


def build_argv(p: BwrapParams) -> list[str]:
    fs = p.policy.filesystem
    res = p.policy.resources
    root = Path(p.host_root)
    argv = [p.bwrap]

    # --- namespaces ---------------------------------------------------------
    # A new user namespace maps the sandbox uid to one unprivileged host uid; the
    # others keep the workload from seeing or signalling host processes (pid),
    # mounts (mnt), SysV IPC (ipc), the hostname (uts) and host cgroup paths.
    argv += ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    argv += ["--unshare-cgroup"]
    if not p.joined_netns:
        # Only loopback: no route anywhere, not even to the host's own services.
        argv += ["--unshare-net"]
    # Nested user namespaces would hand the workload a full capability set again.
    argv += ["--disable-userns"]
    argv += ["--hostname", SANDBOX_HOSTNAME]

    # --- identity -----------------------------------------------------------
    argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]

    # --- filesystem ---------------------------------------------------------
    # Read-only system: /usr and its top-level aliases, plus an /etc allowlist.
    argv += ["--ro-bind", str(root / "usr"), "/usr"]
    for name in _USR_ALIASES:
        host = root / name
        if host.is_symlink():
            argv += ["--symlink", str(host.readlink()), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    if p.etc_view is not None:
        argv += ["--ro-bind", p.etc_view, "/etc"]
    else:
        for name in ETC_ALLOWLIST:
            argv += ["--ro-bind-try", str(root / "etc" / name), f"/etc/{name}"]
    for bind in fs.read_only:
        argv += ["--ro-bind", bind.source, bind.dest]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    # Only the granted GPUs' nodes: without CAP_MKNOD the workload cannot make others.
    for dev in p.gpu_devices:
        argv += ["--dev-bind", dev, dev]
    # Writable: the workspace, /tmp and home, each a private tmpfs capped at the disk
    # quota. They live only in the sandbox's mount namespace, so nothing can leak to
    # (or be left behind on) the host.
    for path in (fs.workspace_path, "/tmp", SANDBOX_HOME):
        argv += ["--size", str(res.disk), "--perms", "0755", "--tmpfs", path]
    argv += ["--symlink", "../tmp", "/var/tmp"]
    argv += ["--ro-bind", p.init_binary, INIT_PATH]
    for data in p.data_files:
        argv += ["--perms", "0644", "--ro-bind-data", str(data.fd), data.dest]
    for path, is_dir in p.hidden:
        if is_dir:
            argv += ["--perms", "0000", "--tmpfs", path, "--remount-ro", path]
        else:
            argv += ["--ro-bind", "/dev/null", path]
    # Everything not explicitly writable above becomes read-only, including the root.
    argv += ["--remount-ro", "/"]

    # --- process ------------------------------------------------------------
    argv += ["--seccomp", str(p.seccomp_fd)]
    argv += ["--info-fd", str(p.info_fd)]
    # A new session detaches from any controlling terminal (TIOCSTI injection).
    argv += ["--new-session", "--die-with-parent", "--as-pid-1"]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin"]
    argv += ["--chdir", fs.workspace_path]
    argv += ["--", INIT_PATH, "serve"]
    if p.report_fd is not None:
        argv.append(str(p.report_fd))
    return argv
