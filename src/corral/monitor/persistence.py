"""Persistence: an agent arranging to run again later (cron, shell rc files, ssh keys, units).

Two independent signals, because each misses things the other sees:

* at exec, the command line: ``crontab -e``, ``systemctl --user enable``, an
  editor or copier given a persistence path, ``sh -c 'echo ... >> ~/.bashrc'``;
* on disk, inotify on the sandbox's home/workspace directories (the handle's
  ``watch_paths``): a write by any means, including from inside an interpreter.
  inotify does not name the writer, so these findings carry the running step,
  not a pid.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from corral.monitor.findings import (
    CRON,
    SHELL_CONFIG,
    SSH_AUTHORIZED_KEYS,
    SYSTEMD_SERVICE,
    XDG_AUTOSTART,
    Finding,
    Severity,
)
from corral.monitor.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)


@dataclass(frozen=True, slots=True)
class _Target:
    rule_id: str
    attack: str
    what: str


_SHELL_RC = _Target("persistence.shell_rc", SHELL_CONFIG, "shell start-up file")
_SSH_KEYS = _Target("persistence.ssh_keys", SSH_AUTHORIZED_KEYS, "ssh authorized keys")
_SYSTEMD = _Target("persistence.systemd_user", SYSTEMD_SERVICE, "systemd user unit")
_AUTOSTART = _Target("persistence.autostart", XDG_AUTOSTART, "desktop autostart entry")
_CRON = _Target("persistence.cron", CRON, "crontab")

# Directory (relative to a watched root) -> files in it that count (None: any file).
_WATCHED_DIRS: dict[str, tuple[frozenset[str] | None, _Target]] = {
    "": (
        frozenset(
            {
                ".bashrc",
                ".bash_profile",
                ".bash_login",
                ".bash_logout",
                ".profile",
                ".zshrc",
                ".zprofile",
                ".zshenv",
                ".zlogin",
            }
        ),
        _SHELL_RC,
    ),
    ".ssh": (frozenset({"authorized_keys", "authorized_keys2", "rc", "environment"}), _SSH_KEYS),
    ".config/systemd/user": (None, _SYSTEMD),
    ".local/share/systemd/user": (None, _SYSTEMD),
    ".config/autostart": (None, _AUTOSTART),
    "var/spool/cron": (None, _CRON),
    "var/spool/cron/crontabs": (None, _CRON),
}
# Every directory on the way to a watched one, so its creation is noticed.
_PARENTS = {
    str(p) for d in _WATCHED_DIRS if d for p in PurePosixPath(d).parents if str(p) != "."
} | {d for d in _WATCHED_DIRS if d}

_DIR_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
# A create and its close-write are one change; so is a burst of appends.
_REPEAT_WINDOW = 2.0

# --- command lines ------------------------------------------------------------

_PATH_RULES: list[tuple[re.Pattern[str], _Target]] = [
    (
        re.compile(
            r"(?:^|[/~\s'\"=])\.(?:bashrc|bash_profile|bash_login|profile|zshrc|zprofile"
            r"|zshenv|zlogin)\b"
        ),
        _SHELL_RC,
    ),
    (re.compile(r"\.ssh/(?:authorized_keys2?|rc|environment)\b"), _SSH_KEYS),
    (re.compile(r"(?:\.config|\.local/share)/systemd/user/"), _SYSTEMD),
    (re.compile(r"\.config/autostart/"), _AUTOSTART),
    (re.compile(r"/var/spool/cron/|/etc/cron\.|/etc/crontab\b"), _CRON),
]
_WRITERS = frozenset(
    {
        "tee",
        "cp",
        "mv",
        "install",
        "ln",
        "dd",
        "rsync",
        "truncate",
        "vi",
        "vim",
        "nvim",
        "nano",
        "emacs",
        "ed",
        "ex",
        "pico",
        "joe",
        "micro",
        "sed",
        "perl",
    }
)
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ash", "ksh", "busybox"})
_REDIRECT = re.compile(r">>?\s*(\S+)")


def _match_path(text: str) -> _Target | None:
    for pattern, target in _PATH_RULES:
        if pattern.search(text):
            return target
    return None


def _finding(target: _Target, explanation: str, **evidence: str) -> Finding:
    return Finding(
        detector="persistence",
        rule_id=target.rule_id,
        category="persistence",
        severity=Severity.MEDIUM,
        attack=target.attack,
        explanation=explanation,
        evidence=dict(evidence),
    )


def exec_findings(argv: list[str] | None) -> list[Finding]:
    """Persistence attempts visible in one command line."""
    if not argv:
        return []
    prog = PurePosixPath(argv[0]).name
    args = argv[1:]
    if prog == "crontab" and args not in (["-l"], ["-l", "-u"]) and "-l" not in args:
        return [_finding(_CRON, "runs crontab to install a scheduled job")]
    if prog == "systemctl" and "--user" in args and ({"enable", "link", "edit"} & set(args)):
        return [_finding(_SYSTEMD, "enables a systemd user unit")]
    if prog in _WRITERS and (prog != "sed" or any(a.startswith("-i") for a in args)):
        for arg in args:
            target = _match_path(arg)
            if target is not None:
                return [_finding(target, f"{prog} writes a {target.what}", path=arg)]
    if prog in _SHELLS and "-c" in args:
        script = " ".join(args[args.index("-c") + 1 :][:1])
        for dest in _REDIRECT.findall(script):
            target = _match_path(dest)
            if target is not None:
                return [_finding(target, f"shell redirects output into a {target.what}", path=dest)]
    return []


# --- files on disk -------------------------------------------------------------------


class PersistenceWatcher:
    """inotify on every sandbox's watch paths; calls ``on_write(sandbox_id, finding)``."""

    def __init__(self, on_write: Callable[[str, Finding], None]) -> None:
        self._on_write = on_write
        self._inotify = Inotify()
        self._wd: dict[int, tuple[str, str, str]] = {}  # wd -> (sandbox, root, rel dir)
        self._recent: dict[tuple[str, str], float] = {}

    @property
    def fd(self) -> int:
        return self._inotify.fd

    def watch(self, sandbox_id: str, roots: list[str]) -> None:
        for root in roots:
            # Not resolved: a root under /proc/PID/root/ must stay in that mount namespace.
            self._add(sandbox_id, str(Path(root)), "", baseline=True)

    def unwatch(self, sandbox_id: str) -> None:
        for wd in [w for w, (sid, _r, _d) in self._wd.items() if sid == sandbox_id]:
            self._inotify.rm_watch(wd)
            del self._wd[wd]

    def close(self) -> None:
        self._inotify.close()
        self._wd.clear()

    def on_readable(self) -> None:
        for ev in self._inotify.read():
            if ev.mask & IN_Q_OVERFLOW:
                self._rescan_all()
                continue
            where = self._wd.get(ev.wd)
            if where is None:
                continue
            if ev.mask & IN_IGNORED:
                del self._wd[ev.wd]
                continue
            sandbox_id, root, rel = where
            child = f"{rel}/{ev.name}" if rel else ev.name
            if ev.mask & IN_ISDIR:
                if child in _PARENTS:
                    self._add(sandbox_id, root, child, baseline=False)
                continue
            self._check(sandbox_id, root, rel, ev.name)

    def _add(self, sandbox_id: str, root: str, rel: str, *, baseline: bool) -> None:
        """Watch ``root/rel`` and the watched directories under it.

        ``baseline``: files already there are the sandbox's starting state. A
        directory that appears later is checked now, since its files may have
        been written before the watch existed.
        """
        fd = _open_dir_beneath(root, rel)
        if fd is None:
            return  # not there (yet), or not a real directory: never follow it
        try:
            try:
                # Through the fd, so the watch lands on the directory that was opened
                # without following any link the sandbox planted.
                wd = self._inotify.add_watch(f"/proc/self/fd/{fd}", _DIR_MASK | IN_ONLYDIR)
            except OSError:
                return
            self._wd[wd] = (sandbox_id, root, rel)
            # Whatever appeared before the watch existed is checked now, not lost.
            try:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in os.scandir(fd)]
            except OSError:
                return
        finally:
            os.close(fd)
        for name, is_dir in entries:
            child = f"{rel}/{name}" if rel else name
            if child in _PARENTS and is_dir:
                self._add(sandbox_id, root, child, baseline=baseline)
            elif not baseline:
                self._check(sandbox_id, root, rel, name)

    def _check(self, sandbox_id: str, root: str, rel: str, name: str) -> None:
        rule = _WATCHED_DIRS.get(rel)
        if rule is None:
            return
        names, target = rule
        if names is not None and name not in names:
            return
        rel_path = f"{rel}/{name}" if rel else name
        now = time.monotonic()
        key = (sandbox_id, rel_path)
        if now - self._recent.get(key, -_REPEAT_WINDOW) < _REPEAT_WINDOW:
            return
        if len(self._recent) > 4096:
            self._recent = {k: t for k, t in self._recent.items() if now - t < _REPEAT_WINDOW}
        self._recent[key] = now
        finding = _finding(
            target,
            f"{target.what} ~/{rel_path} was written",
            path=str(Path(root, rel_path)),
        )
        self._on_write(sandbox_id, finding)

    def _rescan_all(self) -> None:
        for sandbox_id, root, rel in list(self._wd.values()):
            if not rel:
                continue
            fd = _open_dir_beneath(root, rel)
            if fd is None:
                continue
            try:
                names = [e.name for e in os.scandir(fd)]
            except OSError:
                continue
            finally:
                os.close(fd)
            for name in names:
                self._check(sandbox_id, root, rel, name)


def _open_dir_beneath(root: str, rel: str) -> int | None:
    """An fd of ``root/rel``, refusing a symlink at every step below ``root``.

    ``root`` (``/proc/PID/root/home/agent``) is fixed by the sandbox's layout; what lies
    below it is the sandbox's to shape, and a link there resolves against the *host's*
    root when the host follows it.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(root, flags)
    except OSError:
        return None
    for part in [p for p in rel.split("/") if p]:
        try:
            child = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd
