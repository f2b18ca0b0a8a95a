"""Sizes and times as people write and read them: one spelling everywhere.

Sizes: a number (decimals allowed) and an optional unit, case-insensitive. `KiB/MiB/GiB/TiB/PiB`
and Kubernetes' `Ki/Mi/Gi/Ti/Pi` are binary; `KB/MB/GB/TB/PB` decimal; the bare letters
`K/M/G/T/P` binary, as coreutils (`sort -S`, `du -B`) read them; `B` or nothing is bytes.
"""

from __future__ import annotations

import re
import time

from agent.errors import UsageError

_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_POWERS = "kmgtp"


def _unit(name: str) -> int | None:
    if name in ("", "b"):
        return 1
    letter, rest = name[0], name[1:]
    if letter not in _POWERS or rest not in ("", "i", "ib", "b"):
        return None
    power = _POWERS.index(letter) + 1
    return int(1000**power) if rest == "b" else 1 << (10 * power)


def parse_size(text: str) -> int:
    """'1048576', '64MiB', '1.5GiB', '500G', '1GB', '1Ti' -> bytes (whole, rounded down)."""
    m = _SIZE_RE.fullmatch(text.strip().lower())
    factor = _unit(m.group(2)) if m else None
    if m is None or factor is None:
        raise UsageError(f"invalid size {text!r}: use e.g. 1048576, 512MiB, 1.5GiB, 500G or 1TB")
    return int(float(m.group(1)) * factor)


def parse_percent(text: str) -> float:
    """'20%' or '20' -> 20.0; from 0 to 100."""
    raw = text.strip()
    try:
        value = float(raw.removesuffix("%").strip())
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise UsageError(f"invalid percentage {text!r}: use a number from 0 to 100, e.g. 20 or 20%")
    return value


def fmt_bytes(n: int) -> str:
    """Human-readable bytes, binary units."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def iso_seconds(ts: float) -> str:
    """A UTC timestamp to the second, as the API and `status` show it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
