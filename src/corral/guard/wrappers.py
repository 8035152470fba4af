"""Knowledge of programs that run other programs or code.

Wrappers (``sudo``, ``env``, ``timeout``, ``xargs``, ``find -exec`` ...) hide the
real program one or more words in; shells, ``eval``, ``su -c`` and ``ssh host cmd``
take a shell string; interpreters (``python -c``, ``perl -e``, awk) take code that
can itself call ``os.system``. This module answers "what would actually run" for
one argv, without running anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHELLS = frozenset(
    {"sh", "bash", "zsh", "dash", "ksh", "ash", "mksh", "fish", "csh", "tcsh", "rbash", "yash"}
)
# Programs whose arguments (or stdin) are executed as shell code.
SHELL_RUNNERS = SHELLS | {"eval", "source", ".", "exec", "watch", "su", "runuser", "script"}

_DECODERS_B64 = frozenset({"base64", "base32", "basenc", "b64decode"})


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """What a wrapper runs: an argv, a shell string (``label`` says which), or both."""

    argv: list[str] | None = None
    shell: str | None = None
    label: str = ""
    assignments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Opts:
    value_short: str = ""  # short options that take a value (-u root, -uroot)
    value_long: frozenset[str] = frozenset()  # long options that take a value without '='
    positionals: int = 0  # operands before the wrapped command (timeout DURATION)
    skip_assignments: bool = False  # NAME=value operands before the command (env, sudo)
    no_exec_flags: str = ""  # short flags meaning "no command runs" (command -v)


_WRAPPERS: dict[str, _Opts] = {
    "env": _Opts("uCS", frozenset({"--unset", "--chdir", "--split-string"}),
                 skip_assignments=True),
    "sudo": _Opts("ugpCUrthD", frozenset({"--user", "--group", "--prompt", "--close-from",
                  "--other-user", "--role", "--type", "--host", "--chdir"}),
                  skip_assignments=True, no_exec_flags="lvVKk"),
    "doas": _Opts("uC"),
    "nohup": _Opts(),
    "setsid": _Opts(),
    "stdbuf": _Opts("ioe", frozenset({"--input", "--output", "--error"})),
    "nice": _Opts("n", frozenset({"--adjustment"})),
    "ionice": _Opts("cn", frozenset({"--class", "--classdata"}), no_exec_flags="p"),
    "timeout": _Opts("sk", frozenset({"--signal", "--kill-after"}), positionals=1),
    "time": _Opts("fo", frozenset({"--format", "--output"})),
    "command": _Opts(no_exec_flags="vV"),
    "exec": _Opts("a"),
    "builtin": _Opts(),
    "xargs": _Opts("aEILnPsd", frozenset({"--arg-file", "--delimiter", "--eof", "--replace",
                   "--max-lines", "--max-args", "--max-procs", "--max-chars",
                   "--process-slot-var"})),
    "chroot": _Opts("", frozenset({"--userspec", "--groups"}), positionals=1),
    "taskset": _Opts("", positionals=1, no_exec_flags="p"),
    "flock": _Opts("wE", frozenset({"--timeout", "--conflict-exit-code"}), positionals=1),
    "strace": _Opts("oepsSbEIuUXa"),
    "ltrace": _Opts("oepsSnuXa"),
    "unbuffer": _Opts(),
    "proxychains": _Opts("f"),
    "proxychains4": _Opts("f"),
    "torsocks": _Opts("uaP"),
    "tsocks": _Opts(),
    "sshpass": _Opts("pfdPe"),
    "faketime": _Opts("", positionals=1),
    "catchsegv": _Opts(),
    "firejail": _Opts(),
    "screen": _Opts("SceLptThX"),
    "caffeinate": _Opts("t"),
    "nsenter": _Opts("tSGwr", frozenset({"--target", "--setuid", "--setgid", "--wd",
                     "--root"})),
    "unshare": _Opts("", frozenset({"--setuid", "--setgid", "--map-user", "--map-group",
                     "--wd", "--root"})),
    "chrt": _Opts("", positionals=1, no_exec_flags="p"),
    "busybox": _Opts(),
}  # fmt: skip

_SSH_VALUE = "BbcDEeFIiJLlmOoPpQRSWw"
_SHELL_VALUE = "oO"  # bash -o pipefail -c ...


def program_chain(argv: list[str]) -> frozenset[str]:
    """Every program name along a wrapper chain: ``sudo -u x tee f`` → {sudo, tee}."""
    names: set[str] = set()
    depth = 0
    while argv and depth < 6:
        prog = argv[0].rpartition("/")[2]
        names.add(prog)
        unwrapped = unwrap(prog, argv[1:])
        if unwrapped is None or not unwrapped.argv:
            if unwrapped is not None and unwrapped.shell is not None:
                names.add("sh")
            break
        argv = unwrapped.argv
        depth += 1
    return frozenset(names)


def _skip_options(args: list[str], opts: _Opts) -> tuple[int, bool, list[str]]:
    """Index of the wrapped command in ``args``, whether an option forbids exec, assignments."""
    i = 0
    no_exec = False
    assigns: list[str] = []
    n = len(args)
    while i < n:
        a = args[i]
        if a == "--":
            i += 1
            break
        if a.startswith("--"):
            name = a.split("=", 1)[0]
            i += 2 if name in opts.value_long and "=" not in a else 1
            continue
        if a.startswith("-") and len(a) > 1:
            i += 1
            for j, letter in enumerate(a[1:]):
                if letter in opts.no_exec_flags:
                    no_exec = True
                if letter in opts.value_short:
                    if j == len(a) - 2:  # value is the next word
                        i += 1
                    break
            continue
        break
    if opts.skip_assignments:
        while i < n and re.match(r"^[A-Za-z_]\w*=", args[i]):
            assigns.append(args[i])
            i += 1
    i += opts.positionals
    return i, no_exec, assigns


def _option_value(args: list[str], short: str, long: tuple[str, ...] = ()) -> str | None:
    """Value of ``-c VALUE``, ``-cVALUE`` or ``--long VALUE``/``--long=VALUE``."""
    for i, a in enumerate(args):
        if a in long or (short and a == "-" + short):
            return args[i + 1] if i + 1 < len(args) else None
        for name in long:
            if a.startswith(name + "="):
                return a[len(name) + 1 :]
        if short and a.startswith("-" + short) and not a.startswith("--") and len(a) > 2:
            return a[2:]
    return None


def _shell_c(args: list[str]) -> str | None:
    """The command string of ``bash [-opts] -c STRING`` (``-lc``, ``-xec`` combos too)."""
    has_c = False
    i = 0
    n = len(args)
    while i < n:
        a = args[i]
        if a == "--":
            i += 1
            break
        if a.startswith("-") and len(a) > 1 and not a.startswith("--"):
            letters = a[1:]
            if "c" in letters:
                has_c = True
            if any(ch in _SHELL_VALUE for ch in letters):
                i += 1
            i += 1
            continue
        if a.startswith("--") or (a.startswith("+") and len(a) > 1):
            i += 1
            continue
        break
    if has_c and i < n:
        return args[i]
    return None


def has_script(argv: list[str]) -> bool:
    """A shell given a script file or -c string does not run its stdin as code."""
    args = argv[1:]
    if _shell_c(args) is not None:
        return True
    operands = [a for a in args if not a.startswith("-")]
    return bool(operands) and "-s" not in args


def _ssh_remote(args: list[str]) -> str | None:
    i = 0
    n = len(args)
    while i < n:
        a = args[i]
        if a.startswith("-") and len(a) > 1:
            i += 1
            for j, letter in enumerate(a[1:]):
                if letter in _SSH_VALUE:
                    if j == len(a) - 2:
                        i += 1
                    break
            continue
        break
    rest = args[i + 1 :]
    return " ".join(rest) if rest else None


def _find_exec(args: list[str]) -> list[str] | None:
    for i, a in enumerate(args):
        if a in ("-exec", "-execdir", "-ok", "-okdir"):
            inner: list[str] = []
            for b in args[i + 1 :]:
                if b in (";", "+", "\\;"):
                    break
                inner.append(b)
            return inner or None
    return None


def unwrap(prog: str, args: list[str]) -> Unwrapped | None:
    """What ``prog args`` runs in turn, or None when it runs nothing we can see."""
    if prog in SHELLS:
        payload = _shell_c(args)
        return Unwrapped(shell=payload, label="-c payload") if payload is not None else None
    if prog == "eval":
        return Unwrapped(shell=" ".join(args), label="payload") if args else None
    if prog in ("su", "runuser", "script"):
        payload = _option_value(args, "c", ("--command",))
        return Unwrapped(shell=payload, label="-c payload") if payload is not None else None
    if prog == "watch":
        i, _, _ = _skip_options(args, _Opts("nd", frozenset({"--interval", "--differences"})))
        return Unwrapped(shell=" ".join(args[i:]), label="command") if args[i:] else None
    if prog in ("ssh", "autossh"):
        remote = _ssh_remote([a for a in args if not a.startswith("-M")] if prog == "autossh"
                             else args)  # fmt: skip
        return Unwrapped(shell=remote, label="remote command") if remote else None
    if prog == "rsync":
        rsh = _option_value(args, "e", ("--rsh",))
        return Unwrapped(shell=rsh, label="-e remote shell") if rsh else None
    if prog == "git":
        for i, a in enumerate(args):
            value = args[i + 1] if a == "-c" and i + 1 < len(args) else ""
            key, _, command = value.partition("=")
            if key.lower() in ("core.sshcommand", "core.pager", "core.editor", "core.fsmonitor"):
                return Unwrapped(shell=command, label=f"{key} command")
        return None
    if prog == "find":
        inner = _find_exec(args)
        return Unwrapped(argv=inner) if inner else None
    if prog == "tmux":
        if args and args[0] in ("new", "new-session", "new-window", "neww", "split-window"):
            last = args[-1]
            if len(args) > 1 and not last.startswith("-"):
                return Unwrapped(shell=last, label="command")
        return None
    if prog == "flock":
        payload = _option_value(args, "c", ("--command",))
        if payload is not None:
            return Unwrapped(shell=payload, label="-c payload")
    if prog == "busybox":
        return Unwrapped(argv=args) if args else None
    opts = _WRAPPERS.get(prog)
    if opts is None:
        return None
    if prog == "env":
        split = _option_value(args, "S", ("--split-string",))
        if split is not None:
            i, _, assigns = _skip_options(args, opts)
            return Unwrapped(argv=split.split() + args[i:], assignments=tuple(assigns))
    i, no_exec, assigns = _skip_options(args, opts)
    if no_exec or i >= len(args):
        return None
    return Unwrapped(argv=args[i:], assignments=tuple(assigns))


# --- decoders ------------------------------------------------------------------


def decoder_kind(prog: str, args: list[str]) -> str | None:
    """``base64``/``hex`` when ``prog args`` decodes its stdin, else None."""
    if prog in _DECODERS_B64:
        if prog == "base64" or prog == "basenc":
            return "base64" if any(a in ("-d", "--decode", "-D") or
                                   re.fullmatch(r"-[a-zA-Z]*d[a-zA-Z]*", a) for a in args) \
                else None  # fmt: skip
        return "base64" if prog == "b64decode" else None
    if (prog == "xxd" and "-r" in args) or (
        prog == "xxd" and any(re.fullmatch(r"-r[p]?s?|-rp|-ps?r", a) for a in args)
    ):
        return "hex"
    if prog == "openssl" and args and args[0] in ("base64", "enc") and "-d" in args:
        return "base64"
    return None


# --- interpreters --------------------------------------------------------------

_PY = re.compile(r"^(python|pypy)[0-9.]*$")


def interpreter_language(prog: str) -> str | None:
    if _PY.match(prog):
        return "python"
    if re.match(r"^perl[0-9.]*$", prog):
        return "perl"
    if re.match(r"^ruby[0-9.]*$", prog) or prog == "irb":
        return "ruby"
    if prog in ("node", "nodejs", "bun", "deno"):
        return "node"
    if re.match(r"^php[0-9.]*$", prog):
        return "php"
    if prog in ("lua", "luajit"):
        return "lua"
    if prog in ("awk", "gawk", "mawk", "nawk"):
        return "awk"
    return None


def inline_script(lang: str, args: list[str]) -> str | None:
    """The code passed on the command line (python -c CODE, perl -e CODE, awk 'PROG')."""
    if lang == "python":
        for i, a in enumerate(args):
            if a == "-c":
                return args[i + 1] if i + 1 < len(args) else None
            if a == "-m" or not a.startswith("-"):
                return None  # a module or a script file runs, not inline code
            if re.fullmatch(r"-[BdEiIOqsSuvx]*c", a):
                return args[i + 1] if i + 1 < len(args) else None
            if a.startswith("-c"):
                return a[2:]
        return None
    if lang in ("perl", "ruby", "lua"):
        for i, a in enumerate(args):
            if re.fullmatch(r"-[a-zA-Z0-9]*[eE]", a) and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(("-e", "-E")) and len(a) > 2:  # -e'code' written without a space
                return a[2:]
        return None
    if lang == "node":
        if args and args[0] == "eval" and len(args) > 1:
            return args[1]
        return _option_value(args, "e", ("--eval",)) or _option_value(args, "p", ("--print",))
    if lang == "php":
        return _option_value(args, "r", ("--run",))
    if lang == "awk":
        i = 0
        while i < len(args):
            a = args[i]
            if a in ("-f", "--file") or a.startswith("-f"):
                return None
            if a in ("-F", "-v", "--field-separator", "--assign"):
                i += 2
                continue
            if a.startswith("-") and len(a) > 1:
                i += 1
                continue
            return a
        return None
    return None


def reads_stdin_script(lang: str, argv: list[str]) -> bool:
    """``python3 <<EOF`` or ``... | perl``: the interpreter reads its code from stdin."""
    if lang == "awk":
        return False
    args = argv[1:]
    operands = [a for a in args if not a.startswith("-") or a == "-"]
    return not operands or operands[0] == "-"


_Q = r"""(?P<q>'''|\"\"\"|['"])(?P<cmd>(?:\\.|(?!(?P=q)).)*?)(?P=q)"""
_LIST = r"""\[\s*(?P<list>(?:['"][^'"]*['"]\s*,?\s*)+)\]"""
_PY_CALLS = (
    r"(?:os\.(?:system|popen|exec\w*|spawn\w*)|subprocess\.(?:run|call|check_call|check_output"
    r"|Popen|getoutput|getstatusoutput)|commands\.getoutput|pty\.spawn|system|popen|exec\w*)"
)
_OTHER_CALLS = (
    r"(?:system|exec|shell_exec|passthru|popen|proc_open|spawn|spawnSync|execSync|execFile"
    r"|execFileSync|IO\.popen|Open3\.\w+|Process\.spawn|os\.execute|io\.popen)"
)
_EMBED = {
    "python": [
        re.compile(_PY_CALLS + r"\s*\(\s*" + _Q, re.S),
        re.compile(_PY_CALLS + r"\s*\(\s*" + _LIST, re.S),
    ],
    "other": [
        re.compile(r"\b" + _OTHER_CALLS + r"\s*\(?\s*" + _Q, re.S),
        re.compile(r"\b" + _OTHER_CALLS + r"\s*\(\s*" + _LIST, re.S),
        re.compile(r"(?:qx|%x)\s*[({\[/|](?P<cmd>[^)}\]/|]+)"),
    ],
    "backtick": [re.compile(r"`(?P<cmd>[^`]+)`")],
}
_ITEM = re.compile(r"""(['"])((?:\\.|(?!\1).)*)\1""")


_CONCAT = re.compile(r"""(['"])((?:\\.|(?!\1).)*)\1\s*[+.]\s*(['"])((?:\\.|(?!\3).)*)\3""")


def fold_concatenation(script: str) -> str:
    """'xm' + 'rig' → 'xmrig' (and Perl's 'xm' . 'rig'), so split names are still seen."""
    for _ in range(8):
        folded = _CONCAT.sub(lambda m: m.group(1) + m.group(2) + m.group(4) + m.group(1), script)
        if folded == script:
            break
        script = folded
    return script


def embedded_commands(lang: str, script: str) -> list[tuple[str, str]]:
    """Commands an interpreter payload would run: ("shell", text) or ("argv", NUL-joined)."""
    found: list[tuple[str, str]] = []
    if "+" in script or "." in script:
        script = fold_concatenation(script)
    patterns = list(_EMBED["python"] if lang == "python" else _EMBED["other"])
    if lang in ("perl", "ruby", "php"):
        patterns += _EMBED["backtick"]
    for pattern in patterns:
        for m in pattern.finditer(script):
            groups = m.groupdict()
            if groups.get("list"):
                argv = [item[1] for item in _ITEM.findall(groups["list"])]
                if argv:
                    found.append(("argv", "\0".join(argv)))
            elif groups.get("cmd"):
                found.append(("shell", groups["cmd"]))
    return found
