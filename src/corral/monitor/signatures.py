"""Recognising a miner from what it runs: its name, its executable's hash, its arguments.

Names are the weakest signal (a copy renamed to ``python3`` defeats them), so
argv (pool URLs, pool domains, miner-only flags) and the sha256 of the
executable are checked too. argv is searched token by token, including inside
``sh -c``/``python -c`` strings, because the harmful part is often one level
down: ``python3 -c "os.system('xmrig -o stratum+tcp://...')"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath

from corral.monitor.findings import RESOURCE_HIJACKING, Finding, Severity

_HOST = re.compile(r"(?i)(?<![a-z0-9-])((?:[a-z0-9-]{1,63}\.)+[a-z]{2,63})(?![a-z0-9-])")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SPLIT = re.compile(r"[\s'\"();,`|&<>]+")
_ALGO_OPTS = ("-a", "--algo", "--algorithm")


@dataclass(frozen=True, slots=True)
class MinerSignatures:
    names: frozenset[str]
    pool_domains: tuple[str, ...]
    flags: frozenset[str]
    url_schemes: tuple[str, ...]
    algorithms: frozenset[str]
    hashes: Mapping[str, str]  # sha256 hex -> label

    @classmethod
    def builtin(cls) -> MinerSignatures:
        """The signatures shipped in ``corral/monitor/data``."""
        data = resources.files("corral.monitor") / "data"
        raw = json.loads((data / "miners.json").read_text(encoding="utf-8"))
        hashes = parse_hash_list((data / "miner_sha256.txt").read_text(encoding="utf-8"))
        return cls(
            names=frozenset(n.lower() for n in raw["names"]),
            pool_domains=tuple(d.lower() for d in raw["pool_domains"]),
            flags=frozenset(raw["flags"]),
            url_schemes=tuple(s.lower() for s in raw["url_schemes"]),
            algorithms=frozenset(a.lower() for a in raw["algorithms"]),
            hashes=hashes,
        )

    def with_hashes(self, extra: Mapping[str, str]) -> MinerSignatures:
        for digest in extra:
            if not _SHA256.match(digest):
                raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return MinerSignatures(
            self.names,
            self.pool_domains,
            self.flags,
            self.url_schemes,
            self.algorithms,
            {**self.hashes, **{d.lower(): label for d, label in extra.items()}},
        )

    # --- matching --------------------------------------------------------------

    def match_exec(self, argv: list[str] | None, exe: str | None) -> list[Finding]:
        findings: list[Finding] = []
        names = {PurePosixPath(p).name.lower() for p in (argv[0] if argv else None, exe) if p}
        for name in sorted(names):
            if name in self.names or name.removesuffix(".exe") in self.names:
                findings.append(
                    _miner("miner.name", f"program {name!r} is a known cryptocurrency miner")
                )
                break
        if not argv:
            return findings
        tokens = [t for arg in argv for t in _SPLIT.split(arg) if t]
        joined = "\n".join(argv).lower()
        for scheme in self.url_schemes:
            if f"{scheme}://" in joined:
                findings.append(
                    _miner("miner.pool_url", f"argv names a mining pool URL ({scheme}://)")
                )
                break
        for host in _HOST.findall(joined):
            host = host.lower()
            pool = next((d for d in self.pool_domains if host == d or host.endswith("." + d)), None)
            if pool is not None:
                findings.append(
                    _miner("miner.pool_domain", f"argv names mining pool domain {host!r}")
                )
                break
        flag = next((t for t in tokens if t.split("=", 1)[0] in self.flags), None)
        if flag is not None:
            findings.append(
                _miner("miner.flag", f"argv uses miner option {flag.split('=', 1)[0]!r}")
            )
        algo = _algorithm(tokens, self.algorithms)
        if algo is not None:
            findings.append(_miner("miner.algorithm", f"argv selects mining algorithm {algo!r}"))
        return findings

    def match_hash(self, digest: str) -> Finding | None:
        label = self.hashes.get(digest)
        if label is None:
            return None
        return _miner(
            "miner.hash",
            f"executable sha256 matches known miner {label!r}",
            severity=Severity.CRITICAL,
        )


def _miner(rule_id: str, explanation: str, severity: Severity = Severity.CRITICAL) -> Finding:
    return Finding(
        detector="miner_signature",
        rule_id=rule_id,
        category="cryptomining",
        severity=severity,
        attack=RESOURCE_HIJACKING,
        explanation=explanation,
    )


def _algorithm(tokens: list[str], algorithms: frozenset[str]) -> str | None:
    for i, token in enumerate(tokens):
        opt, eq, value = token.partition("=")
        if opt in _ALGO_OPTS and eq:
            candidate = value
        elif token in _ALGO_OPTS and i + 1 < len(tokens):
            candidate = tokens[i + 1]
        else:
            continue
        if candidate.lower() in algorithms:
            return candidate
    return None


def parse_hash_list(text: str) -> dict[str, str]:
    """``<sha256> <label>`` per line; ``#`` starts a comment. A malformed line is an error."""
    hashes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        digest, _, label = line.partition(" ")
        digest = digest.lower()
        if not _SHA256.match(digest):
            raise ValueError(f"miner hash list line {number}: not a sha256 digest")
        hashes[digest] = label.strip() or "unnamed"
    return hashes


def sha256_file(path: str, limit: int) -> str | None:
    """sha256 of a file up to ``limit`` bytes; None if larger or unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > limit:
                return None
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
