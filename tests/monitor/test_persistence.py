"""Writes to persistence locations are seen at exec (command lines) and on disk (inotify)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from corral.monitor.persistence import exec_findings
from tests.monitor.helpers import PYTHON, Harness, wait_for


def _rules(argv: list[str]) -> list[str]:
    return [f.rule_id for f in exec_findings(argv)]


def test_command_lines_that_install_persistence() -> None:
    assert _rules(["crontab", "-e"]) == ["persistence.cron"]
    assert _rules(["/usr/bin/crontab", "/tmp/job"]) == ["persistence.cron"]
    assert _rules(["systemctl", "--user", "enable", "x.service"]) == ["persistence.systemd_user"]
    assert _rules(["sh", "-c", "echo 'curl x|sh' >> ~/.bashrc"]) == ["persistence.shell_rc"]
    assert _rules(["cp", "key.pub", "/home/a/.ssh/authorized_keys"]) == ["persistence.ssh_keys"]
    assert _rules(["sed", "-i", "$a x", "/home/a/.profile"]) == ["persistence.shell_rc"]
    assert _rules(["tee", "-a", "/var/spool/cron/crontabs/a"]) == ["persistence.cron"]


def test_command_lines_that_only_read_are_fine() -> None:
    assert _rules(["crontab", "-l"]) == []
    assert _rules(["cat", "/home/a/.bashrc"]) == []
    assert _rules(["sed", "-n", "1p", "/home/a/.profile"]) == []
    assert _rules(["sh", "-c", "grep x ~/.bashrc > /tmp/out"]) == []
    assert _rules(["systemctl", "--user", "status"]) == []


async def test_write_from_inside_an_interpreter_is_seen_on_disk(harness: Harness) -> None:
    sb = await harness.sandbox()
    assert sb.home is not None
    code = (
        "import os\n"
        "d = os.path.expanduser('~/.ssh')\n"
        "os.makedirs(d, exist_ok=True)\n"
        "open(os.path.join(d, 'authorized_keys'), 'a').write('ssh-ed25519 AAAA test\\n')\n"
    )
    await harness.step(sb, 3, [PYTHON, "-c", code])
    await wait_for(lambda: harness.alerts(sb, "persistence.ssh_keys"))
    alert = harness.alerts(sb, "persistence.ssh_keys")[0]
    assert alert.data["attack"] == "T1098.004"
    assert alert.data["evidence"]["path"].endswith(".ssh/authorized_keys")
    assert alert.step == 3  # the step running when it was written


async def test_existing_rc_file_is_the_baseline_and_a_change_is_an_alert(
    harness: Harness,
) -> None:
    from corral.monitor.testing import LocalSandbox

    sb = LocalSandbox()
    try:
        sb.start()
        assert sb.home is not None
        (sb.home / ".bashrc").write_text("# default\n")
        units = sb.home / ".config" / "systemd" / "user"
        units.mkdir(parents=True)
        for d in (units, units.parent, units.parent.parent):
            os.chown(d, sb.uid, sb.uid)
        await harness.monitor.watch(sb)
        await asyncio.sleep(0.2)
        assert not harness.alerts(sb)
        (sb.home / ".bashrc").chmod(0o666)
        # Each shell lingers so its command line is surely read, even on a loaded host.
        await harness.step(sb, 1, ["/bin/sh", "-c", "echo 'sleep 1 &' >> ~/.bashrc; sleep 0.3"])
        unit = "~/.config/systemd/user/miner.service"
        await harness.step(sb, 2, ["/bin/sh", "-c", f"cat /dev/null > {unit}; sleep 0.3"])

        def rules() -> list[str]:
            return [a.data["rule_id"] for a in harness.alerts(sb)]

        # The shell's command line and the file itself are both seen, for each.
        await wait_for(lambda: rules().count("persistence.shell_rc") == 2)
        await wait_for(lambda: rules().count("persistence.systemd_user") == 2)
    finally:
        await sb.close()


def test_symlinks_planted_in_the_watched_tree_are_never_followed(tmp_path: Path) -> None:
    """A sandbox's absolute symlink resolves against the host's root when the host follows
    it: ~/.config -> /etc must not make the watcher list or watch host directories."""
    from corral.monitor.persistence import PersistenceWatcher

    home = tmp_path / "home"
    home.mkdir()
    host_dir = tmp_path / "host-secret-dir"
    (host_dir / "autostart").mkdir(parents=True)
    (host_dir / "autostart" / "host_file.desktop").write_text("x")
    found: list[str] = []
    watcher = PersistenceWatcher(lambda sid, finding: found.append(finding.explanation))
    try:
        (home / ".config").symlink_to(host_dir)  # planted before the watch starts
        watcher.watch("sb-test", [str(home)])
        watcher.on_readable()
        staged = tmp_path / "staged"
        staged.mkdir()
        (staged / "autostart").symlink_to(host_dir / "autostart")
        (home / ".config").unlink()
        staged.rename(home / ".config")  # a real dir appears whose child is a link
        watcher.on_readable()
        assert found == []
        watched = {root + ("/" + rel if rel else "") for _, root, rel in watcher._wd.values()}
        assert all(str(host_dir) not in w for w in watched)
        assert str(home / ".config" / "autostart") not in watched
    finally:
        watcher.close()
