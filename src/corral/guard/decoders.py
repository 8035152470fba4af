"""Static decoding of literal text seen in a pipeline: base64, hex and `tr` translations."""

from __future__ import annotations

import base64
import binascii
import re

from corral.guard.lexer import decode_ansi_c


def decode_base64(text: str) -> str | None:
    data = "".join(text.split())
    if not data:
        return None
    data += "=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.urlsafe_b64decode(data)
        except (binascii.Error, ValueError):
            return None
    return raw.decode("utf-8", errors="replace")


def decode_hex(text: str) -> str | None:
    data = re.sub(r"(?i)\\x|0x|[\s:]", "", text)
    try:
        return bytes.fromhex(data).decode("utf-8", errors="replace")
    except ValueError:
        return None


def _expand_tr_set(spec: str) -> str | None:
    spec = decode_ansi_c(spec)
    if "[:" in spec:
        return None  # character classes: not worth emulating
    out: list[str] = []
    i = 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            lo, hi = ord(spec[i]), ord(spec[i + 2])
            if hi < lo:
                return None
            out.extend(chr(c) for c in range(lo, hi + 1))
            i += 3
        else:
            out.append(spec[i])
            i += 1
    return "".join(out)


def translate(args: list[str], text: str) -> str | None:
    """What ``tr SET1 SET2`` / ``tr -d SET`` prints (rot13 and similar), or None."""
    flags = [a for a in args if a.startswith("-")]
    sets = [_expand_tr_set(a) for a in [a for a in args if not a.startswith("-")]]
    if any(s is None for s in sets):
        return None
    if flags == ["-d"] and len(sets) == 1:
        return text.translate({ord(c): None for c in sets[0] or ""})
    if flags or len(sets) != 2 or not sets[0] or not sets[1]:
        return None
    src, dst = sets[0] or "", sets[1] or ""
    dst = dst + dst[-1] * (len(src) - len(dst))
    return text.translate(str.maketrans(src, dst[: len(src)]))
