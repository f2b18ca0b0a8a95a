"""Sizes and percentages as people type them (agent.units)."""

from __future__ import annotations

import pytest

from agent.errors import UsageError
from agent.units import fmt_bytes, parse_percent, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1 << 20),
        ("0", 0),
        ("64MiB", 64 << 20),
        ("64mib", 64 << 20),
        ("1GiB", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("1TiB", 1 << 40),
        ("1Ti", 1 << 40),
        ("500Mi", 500 << 20),
        ("500G", 500 << 30),
        ("1T", 1 << 40),
        ("32m", 32 << 20),
        ("1GB", 10**9),
        ("1.5TB", 15 * 10**11),
        ("200 GiB", 200 << 30),
        ("10B", 10),
        ("2k", 2048),
        ("2KB", 2000),
    ],
)
def test_sizes_people_type_are_accepted(text: str, expected: int) -> None:
    """Binary, decimal, Kubernetes-style and coreutils-style units all parse to bytes."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "1XB", "1 2", "1GiBs", "1e9", "nan", "1.2.3G"])
def test_bad_sizes_are_one_line_usage_errors(text: str) -> None:
    """What is not a size is refused with an example of what is."""
    with pytest.raises(UsageError, match=r"invalid size .*e\.g\. 1048576"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [("20", 20.0), ("20%", 20.0), (" 12.5 % ", 12.5), ("0", 0.0)])
def test_percentages_with_or_without_the_sign(text: str, expected: float) -> None:
    """`--keep-free 20%` and `--keep-free 20` mean the same."""
    assert parse_percent(text) == expected


@pytest.mark.parametrize("text", ["101", "-1", "20%%", "twenty", ""])
def test_bad_percentages_are_refused(text: str) -> None:
    """Out of range or not a number: a usage error."""
    with pytest.raises(UsageError, match="invalid percentage"):
        parse_percent(text)


def test_fmt_bytes_round_trips_through_parse_size_roughly() -> None:
    """What gc prints (TiB) is something parse_size accepts back."""
    shown = fmt_bytes(3 << 40)
    assert shown == "3.0 TiB"
    assert parse_size(shown) == 3 << 40
