"""The peer list: parsing, who is this node, who owns a piece, peers set aside."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import pytest

from agent.errors import UsageError
from agent.sources import peerset
from agent.sources.peerset import SELF, PeerEntry, PeerSet, parse_peers, peer_id


def test_parse_peers_accepts_urls_and_dns_names() -> None:
    assert parse_peers("http://10.0.0.1:8472, dns:peers.ns.svc:9000,http://node-b") == (
        PeerEntry("10.0.0.1", 8472, dns=False),
        PeerEntry("peers.ns.svc", 9000, dns=True),
        PeerEntry("node-b", peerset.DEFAULT_PEER_PORT, dns=False),
    )
    assert parse_peers("dns:peers")[0] == PeerEntry("peers", peerset.DEFAULT_PEER_PORT, dns=True)


@pytest.mark.parametrize(
    "spec",
    ["", " , ", "https://a:1", "ftp://a", "http://a:1/path", "http://a:99999", "dns:a:x", "dns:a:0", "a:1"],
)
def test_parse_peers_rejects_with_one_line(spec: str) -> None:
    with pytest.raises(UsageError, match="--peers"):
        parse_peers(spec)


def _set(addresses: Sequence[str], me: str | None, port: int | None = 8472) -> PeerSet:
    def resolver(host: str, p: int) -> list[str]:
        assert host == "peers.lab"
        return list(addresses)

    return PeerSet(parse_peers("dns:peers.lab:8472"), port=port, resolver=resolver, local=lambda a: a == me)


def test_this_node_is_left_out_and_ranked_as_self() -> None:
    nodes = [f"10.0.0.{i}" for i in range(1, 9)]
    s = _set(nodes, me="10.0.0.3")
    assert s.live() == sorted(peer_id(a, 8472) for a in nodes if a != "10.0.0.3")
    ranks = [s.ranked("blob", i) for i in range(64)]
    assert all(r.count(SELF) == 1 and len(r) == 8 for r in ranks)
    # A plain client (no peer port of its own) never ranks itself: every piece has a peer owner.
    client = _set(nodes, me="10.0.0.3", port=None)
    assert SELF not in client.ranked("blob", 0) and len(client.ranked("blob", 0)) == 8


def test_owners_are_dealt_evenly_and_a_dead_peers_share_spreads_over_the_rest() -> None:
    nodes = [f"10.0.0.{i}" for i in range(1, 9)]
    everyone = _set(nodes, me=None)
    files = [c * 64 for c in "abcd"]
    owners = {(f, i): everyone.ranked(f, i)[0] for f in files for i in range(64)}
    for f in files:  # every node owns exactly its share of each file's pieces
        assert sorted(collections.Counter(o for (g, _), o in owners.items() if g == f).values()) == [8] * 8
    # Each node computes the same owners on its own (this node's view: itself as SELF).
    me = _set(nodes, me="10.0.0.2")
    mine = peer_id("10.0.0.2", 8472)
    assert all((me.ranked(f, i)[0] == SELF) == (o == mine) for (f, i), o in owners.items())
    assert all(me.ranked(f, i)[0] == o for (f, i), o in owners.items() if o != mine)
    gone = peer_id("10.0.0.5", 8472)
    everyone.down(gone)
    moved = {k: everyone.ranked(*k)[0] for k in owners if everyone.ranked(*k)[0] != owners[k]}
    assert moved and all(owners[k] == gone for k in moved)  # only the dead peer's pieces moved
    assert all(owners[k] != gone for k in owners if k not in moved)
    assert len(set(moved.values())) >= 5  # ... and not all onto one other node


def test_excluded_and_down_peers_are_set_aside_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _set(["10.0.0.1", "10.0.0.2"], me=None)
    a, b = peer_id("10.0.0.1", 8472), peer_id("10.0.0.2", 8472)
    s.exclude(a)
    s.down(b)
    assert s.live() == [] and s.excluded() == 1
    now = peerset.time.monotonic()
    monkeypatch.setattr(peerset.time, "monotonic", lambda: now + peerset.DOWN_FOR + 1)
    assert s.live() == [b]  # a dead peer is tried again soon, a liar much later
    monkeypatch.setattr(peerset.time, "monotonic", lambda: now + peerset.EXCLUDED_FOR + 1)
    assert s.live() == [a, b] and s.excluded() == 0


def test_a_name_that_does_not_resolve_leaves_the_other_peers() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    s = PeerSet(
        parse_peers("dns:nowhere:1,http://10.1.1.1:2"), port=None, resolver=resolver, local=lambda a: False
    )
    assert s.live() == ["10.1.1.1:2"]


def test_ipv6_peers_are_bracketed() -> None:
    assert peer_id("fd00::1", 8472) == "[fd00::1]:8472"
