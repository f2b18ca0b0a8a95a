"""Issue 14's scenarios on the multi-node lab: real agents in node namespaces, capped links, one hub.

A small model (64 x 2 MiB) behind 50 MB/s links keeps each scenario to seconds. The rows without
peers need nothing new; the peer rows skip until `preload agent --peers` exists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tool_unavailable
from tests.netlab import HUB, MB, NetLab, unavailable
from tests.peerlab import PEER_PORT, REPO, Fleet, Model, link_sent, peers_built, start_liar

pytestmark = [pytest.mark.netns, pytest.mark.slow]

NODES = 8
NAMES = [f"n{i}" for i in range(1, NODES + 1)]
# Many small files: pieces (16 MiB at most, one per small file) spread over the 8 owners the
# way a large model's do, so the upload bound means what it means at full size.
FILES, FILE_SIZE = 64, 2 << 20
RATE = 50 * MB
PEERS = f"dns:peers.lab:{PEER_PORT}"
WAIT = 120.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    reason = unavailable()
    if reason:
        tool_unavailable("netns", reason)
    work = tmp_path_factory.mktemp("peers-lab")
    with NetLab(NODES, rate=RATE, hub_rate=RATE, workdir=work) as lab:
        yield lab


@pytest.fixture(scope="module")
def model(lab: NetLab) -> Iterator[Model]:
    model = Model.make(lab.workdir / "model", FILES, FILE_SIZE)
    yield model
    for name in model.digests:
        (model.directory / name).unlink(missing_ok=True)


@pytest.fixture
def fleet(lab: NetLab, model: Model, tmp_path: Path) -> Iterator[Fleet]:
    """Fresh caches for one scenario; the hub up, every node listed in DNS, at the end too."""
    if lab.hub_proc is None or lab.hub_proc.poll() is not None:
        lab.start_hub(model.directory, REPO)
    lab.dns_set(NAMES)
    fleet = Fleet(lab, tmp_path / "fleet", model)
    yield fleet
    fleet.stop()


@pytest.fixture
def need_peers() -> None:
    if not peers_built():
        pytest.skip("peer fan-out not built yet (`preload agent --help` has no --peers)")


def _assert_sound(fleet: Fleet, nodes: list[str]) -> None:
    """Every listed agent is ready and its files hash-check against the hub's."""
    for node in nodes:
        agent = fleet.agents[node]
        assert fleet.is_ready(agent), f"{node} is not ready"
        assert fleet.corrupt(agent) == [], f"{node} published a corrupt model"


def test_one_node_alone_fetches_the_model_once_at_the_link_rate(lab: NetLab, fleet: Fleet) -> None:
    hub0 = lab.link_bytes(HUB).sent
    agent = fleet.start("n1")
    seconds = fleet.wait_ready([agent], WAIT)
    _assert_sound(fleet, ["n1"])
    size = fleet.model.size
    hub_sent = lab.link_bytes(HUB).sent - hub0
    assert size <= hub_sent <= size * 1.05
    # The cap is what bounds it: 64 MiB at 50 MB/s is 1.3 s, on top of the agent's start.
    assert seconds >= size / RATE


def test_eight_nodes_without_peers_share_the_hub_uplink(lab: NetLab, fleet: Fleet) -> None:
    hub0, up0 = lab.link_bytes(HUB).sent, link_sent(lab, NAMES)
    agents = fleet.start_many(NAMES)
    seconds = fleet.wait_ready(agents, WAIT)
    _assert_sound(fleet, NAMES)
    size = fleet.model.size
    hub_sent = lab.link_bytes(HUB).sent - hub0
    assert NODES * size <= hub_sent <= NODES * size * 1.05
    # All eight pulls squeeze through the hub's 50 MB/s: the time grows with the node count.
    assert seconds >= NODES * size / RATE
    uploads = {n: lab.link_bytes(n).sent - up0[n] for n in NAMES}
    assert max(uploads.values()) < 0.05 * size, uploads


@pytest.mark.usefixtures("need_peers")
def test_eight_nodes_with_peers_fetch_the_model_from_the_hub_about_once(lab: NetLab, fleet: Fleet) -> None:
    hub0, up0 = lab.link_bytes(HUB).sent, link_sent(lab, NAMES)
    agents = fleet.start_many(NAMES, peers=PEERS)
    fleet.wait_ready(agents, WAIT)
    _assert_sound(fleet, NAMES)
    size = fleet.model.size
    hub_sent = lab.link_bytes(HUB).sent - hub0
    assert hub_sent <= 1.05 * size, f"the hub sent {hub_sent / size:.2f}x the model: {fleet.summary()}"
    uploads = {n: lab.link_bytes(n).sent - up0[n] for n in NAMES}
    assert max(uploads.values()) <= 2 * size, uploads
    from_peers = {a.node: fleet.bytes_by_source(a)["peer"] for a in agents}
    assert sum(from_peers.values()) >= (NODES - 1.5) * size, from_peers


@pytest.mark.usefixtures("need_peers")
def test_a_lying_peer_never_gets_a_corrupt_model_published(lab: NetLab, fleet: Fleet, tmp_path: Path) -> None:
    if "liar" not in lab.members:
        lab.add_node("liar", dns=False)
    honest = NAMES[:-1]
    lab.dns_set([*honest, "liar"])
    liar = start_liar(lab, "liar", fleet.model, tmp_path)
    try:
        agents = fleet.start_many(honest, peers=PEERS)
        fleet.wait_ready(agents, WAIT)
        _assert_sound(fleet, honest)
        # The liar was asked (it is listed like any node), caught and named.
        assert '"GET ' in (tmp_path / "liar.log").read_text(), "nobody asked the liar"
        excluded = [e for a in agents for e in a.events() if e.get("event") == "peer_excluded"]
        assert any(lab.ip("liar") in str(e.get("peer")) for e in excluded), excluded
    finally:
        liar.kill()
        liar.wait()


@pytest.mark.usefixtures("need_peers")
def test_a_peer_killed_mid_transfer_leaves_the_others_to_finish(lab: NetLab, fleet: Fleet) -> None:
    # A slower hub widens the window in which the victim holds bytes the others still need.
    lab.set_rate(HUB, 10 * MB)
    try:
        agents = fleet.start_many(NAMES, peers=PEERS)
        deadline = time.monotonic() + WAIT
        # The victim: the first agent seen serving peers (so the others hold bytes it sent).
        while True:
            served = {a.node: fleet.bytes_by_source(a)["served"] for a in agents}
            victim = max(served, key=lambda n: served[n])
            if served[victim] > 0:
                break
            assert time.monotonic() < deadline, "no agent ever served a peer"
            time.sleep(0.05)
        survivors = [a for a in agents if a.node != victim]
        assert not all(fleet.is_ready(a) for a in survivors), "everyone finished before the kill"
        fleet.kill(victim)
        fleet.wait_ready(survivors, WAIT)
        _assert_sound(fleet, [a.node for a in survivors])
    finally:
        lab.set_rate(HUB, RATE)


@pytest.mark.usefixtures("need_peers")
def test_a_node_joining_later_fetches_from_its_peers(lab: NetLab, fleet: Fleet) -> None:
    first, late = NAMES[:-1], NAMES[-1]
    lab.dns_set(first)
    fleet.wait_ready(fleet.start_many(first, peers=PEERS), WAIT)
    lab.dns_set(NAMES)
    hub0 = lab.link_bytes(HUB).sent
    joiner = fleet.start(late, peers=PEERS)
    fleet.wait_ready([joiner], WAIT)
    _assert_sound(fleet, [late])
    size = fleet.model.size
    hub_sent = lab.link_bytes(HUB).sent - hub0
    assert hub_sent <= 0.05 * size, f"the hub sent {hub_sent} bytes to the late node"
    assert fleet.bytes_by_source(joiner)["peer"] >= 0.95 * size


@pytest.mark.usefixtures("need_peers")
def test_the_hub_taken_down_once_one_node_has_the_model(lab: NetLab, fleet: Fleet) -> None:
    first, rest = NAMES[0], NAMES[1:]
    fleet.wait_ready([fleet.start(first, peers=PEERS)], WAIT)
    # Slow links keep the others mid-transfer when the hub goes; they need its listing first.
    for node in rest:
        lab.set_rate(node, 10 * MB)
    try:
        agents = fleet.start_many(rest, peers=PEERS)
        deadline = time.monotonic() + WAIT
        while not all(fleet.view(a).get("bytes_total") for a in agents):
            assert time.monotonic() < deadline, "the others never listed the model"
            time.sleep(0.05)
        lab.stop_hub()
        assert not any(fleet.is_ready(a) for a in agents), "finished before the hub went down"
        fleet.wait_ready(agents, WAIT)
        _assert_sound(fleet, rest)
        for agent in agents:
            assert fleet.bytes_by_source(agent)["origin"] < 0.05 * fleet.model.size
    finally:
        for node in rest:
            lab.set_rate(node, RATE)
