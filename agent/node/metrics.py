"""Every Prometheus metric of the agent, in one registry, prefixed `model_cache_`, units in names."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent import retry
from agent.ops.diagnose import Diagnosis

STATES = ("pending", "downloading", "verifying", "ready", "failed")

# `*_created` series double the exposition for no use on a long-running agent.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

TRANSFERRED_BYTES = Counter(
    "model_cache_transferred_bytes",
    "Bytes received from sources, by source (hf or a directory).",
    ["source"],
    registry=REGISTRY,
)
MODEL_STATE = Enum(
    "model_cache_model_state",
    "State of each configured model.",
    ["model"],
    states=list(STATES),
    registry=REGISTRY,
)
MODEL_SIZE_BYTES = Gauge(
    "model_cache_model_size_bytes",
    "Total bytes of each configured model once known.",
    ["model"],
    registry=REGISTRY,
)
TRANSFER_CONNECTIONS = Gauge(
    "model_cache_transfer_connections",
    "Connections each model's running preload holds now (the splitter's count; 0 when idle).",
    ["model"],
    registry=REGISTRY,
)
TRANSFER_DURATION = Histogram(
    "model_cache_transfer_duration_seconds",
    "Wall time of preloads that had work to do, by outcome.",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
    registry=REGISTRY,
)
VERIFICATION_FAILURES = Counter(
    "model_cache_verification_failures",
    "Ready models found damaged by periodic verification.",
    ["model"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "model_cache_retries",
    "Transient failures retried (connection errors, 5xx, 408, 429).",
    registry=REGISTRY,
)
DISK_FREE_BYTES = Gauge(
    "model_cache_disk_free_bytes", "Free bytes on the cache filesystem.", registry=REGISTRY
)
DISK_TOTAL_BYTES = Gauge(
    "model_cache_disk_total_bytes", "Size of the cache filesystem in bytes.", registry=REGISTRY
)
# `preload diagnose`, run once at start with a small file: which nodes have slow disks or CPUs.
DISK_WRITE_BPS = Gauge(
    "model_cache_disk_write_bytes_per_second",
    "Sequential O_DIRECT write rate of the cache volume, measured at start.",
    registry=REGISTRY,
)
DISK_READ_BPS = Gauge(
    "model_cache_disk_read_bytes_per_second",
    "Cold sequential O_DIRECT read rate of the cache volume (what vLLM's load gets), measured at start.",
    registry=REGISTRY,
)
HASH_BPS = Gauge(
    "model_cache_sha256_bytes_per_second",
    "sha256 rate of one core of this node (verification's cost), measured at start.",
    registry=REGISTRY,
)
MODEL_COLD_READ_SECONDS = Gauge(
    "model_cache_model_cold_read_seconds",
    "Predicted time to read each published model cold from the cache volume, from the start-up figures.",
    ["model"],
    registry=REGISTRY,
)
CONFIG_RELOAD_ERRORS = Counter(
    "model_cache_config_reload_errors",
    "Config changes rejected as invalid (the last good config stays in force).",
    registry=REGISTRY,
)
GC_EVICTED_BYTES = Counter(
    "model_cache_gc_evicted_bytes",
    "Bytes freed by garbage collection, by kind (model, partial, revision).",
    ["kind"],
    registry=REGISTRY,
)
KUBE_API_ERRORS = Counter(
    "model_cache_kube_api_errors",
    "Failed Kubernetes API calls of the node sync (labels, events), by operation; retried with backoff.",
    ["operation"],
    registry=REGISTRY,
)
NODE_LABELS_SYNCED = Gauge(
    "model_cache_node_labels_synced",
    "1 when this node's labels show every model's latest state, 0 while a change is not applied yet.",
    registry=REGISTRY,
)


def install_retry_hook() -> None:
    """Count every retry of the shared policy (idempotent)."""
    retry.add_listener(_count_retry)


def _count_retry(_: str) -> None:
    RETRIES.inc()


def set_state(model: str, state: str) -> None:
    """Record a model's state."""
    MODEL_STATE.labels(model=model).state(state)


def set_connections(model: str, count: int) -> None:
    """Record how many connections a model's preload holds now."""
    TRANSFER_CONNECTIONS.labels(model=model).set(count)


def record_diagnosis(d: Diagnosis) -> None:
    """Export the start-up diagnosis."""
    DISK_WRITE_BPS.set(d.write_bps)
    DISK_READ_BPS.set(d.read_bps)
    HASH_BPS.set(d.hash_bps)
    for m in d.models:
        MODEL_COLD_READ_SECONDS.labels(model=m.repo).set(m.cold_read_s)


def forget_model(model: str) -> None:
    """Drop a model that left the config."""
    for metric in (MODEL_STATE, MODEL_SIZE_BYTES, TRANSFER_CONNECTIONS, MODEL_COLD_READ_SECONDS):
        try:
            metric.remove(model)
        except KeyError:
            continue


def exposition() -> tuple[bytes, str]:
    """The text exposition and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
