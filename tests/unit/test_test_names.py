"""Test modules are collected without packages (rootdir-relative basenames): two files with one
basename shadow each other at collection, and the whole run stops with an import mismatch."""

from __future__ import annotations

import collections
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_unique_basename() -> None:
    names = collections.defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        names[path.name].append(str(path.relative_to(TESTS)))
    assert len(names) > 50  # it found the suite
    assert {n: p for n, p in names.items() if len(p) > 1} == {}
