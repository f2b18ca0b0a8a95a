"""Peer fan-out in the agent's metrics, read from the counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.node.metrics import REGISTRY
from agent.node.peerserve import ServedStats
from agent.sources.peerclient import PeerStats
from agent.sources.peerset import PeerSet


class PeerCollector(Collector):
    """Bytes by source, bytes served to peers, peer errors, excluded and live peers."""

    def __init__(self, stats: PeerStats, served: ServedStats | None, peers: PeerSet) -> None:
        self._stats = stats
        self._served = served
        self._peers = peers

    def collect(self) -> Iterator[Metric]:
        by_source = CounterMetricFamily(
            "model_cache_source_bytes",
            "Bytes received by peer-aware downloads, by where they came from (origin or peer).",
            labels=["source"],
        )
        by_source.add_metric(["origin"], self._stats.origin_bytes)
        by_source.add_metric(["peer"], self._stats.peer_bytes)
        yield by_source
        yield CounterMetricFamily(
            "model_cache_peer_errors",
            "Peer requests that failed (refused, timed out, cut off); another peer or the origin took over.",
            value=self._stats.peer_errors,
        )
        if self._served is not None:
            yield CounterMetricFamily(
                "model_cache_peer_served_bytes", "Bytes this agent sent to peers.", value=self._served.bytes
            )
        yield GaugeMetricFamily(
            "model_cache_peers_excluded",
            "Peers excluded now because bytes they sent failed a hash.",
            value=self._peers.excluded(),
        )
        yield GaugeMetricFamily(
            "model_cache_peers_live", "Peers known and not set aside now.", value=len(self._peers.live())
        )


def watch(stats: PeerStats, served: ServedStats | None, peers: PeerSet) -> None:
    """Export the peer counters in the agent's registry (once per process)."""
    REGISTRY.register(PeerCollector(stats, served, peers))
