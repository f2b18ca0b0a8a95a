"""How sizes and times are shown to people: one spelling everywhere."""

from __future__ import annotations

import time


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
