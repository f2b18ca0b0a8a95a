"""`preload agent`: the DaemonSet's long-running agent (see docs/agent.md)."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import click

from agent.cli.options import CONTEXT, check_endpoint, check_token_file, dest_option, hub_factory, opt


@click.command("agent", context_settings=CONTEXT)
@opt(
    "--config",
    "config_path",
    env="PRELOAD_CONFIG",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Agent config YAML (e.g. a mounted ConfigMap); reloaded when it changes.",
)
@dest_option("Node cache directory (e.g. the hostPath /data/models).", required=True)
@opt("--listen", env="PRELOAD_LISTEN", default="0.0.0.0:8080", help="HTTP API address, HOST:PORT.")
@opt(
    "--max-concurrent",
    env="PRELOAD_MAX_CONCURRENT",
    type=click.IntRange(1, 64),
    default=None,
    show_default="config maxConcurrent, else 2",
    help="Models preloaded at once.",
)
@opt(
    "--node-name",
    env="PRELOAD_NODE_NAME",
    default=None,
    help="This pod's Node (the Downward API's spec.nodeName): label it per model, with Events. "
    "Needs in-cluster API credentials; without them, or without this option, no API call is made.",
)
@opt(
    "--node-label-prefix",
    env="PRELOAD_NODE_LABEL_PREFIX",
    default="model-cache.io",
    help="Prefix of the node labels and annotation (`preload labels` prints a model's key).",
)
@opt(
    "--events-namespace",
    env="PRELOAD_EVENTS_NAMESPACE",
    default="default",
    help="Namespace of the Node Events (a cluster-scoped object's Events live in `default`).",
)
@opt(
    "--peer-listen",
    env="PRELOAD_PEER_LISTEN",
    default="0.0.0.0:8472",
    help="Address of the peer port, HOST:PORT: content by hash for the other agents (with --peers).",
)
@click.pass_context
def agent_command(
    ctx: click.Context,
    config_path: Path,
    dest: Path,
    listen: str,
    max_concurrent: int | None,
    node_name: str | None,
    node_label_prefix: str,
    events_namespace: str,
    peer_listen: str,
) -> None:
    """Keep this node's cache matching the config; serve /livez, /readyz, /v1/models, /metrics.

    The transfer options of `preload` itself (--endpoint, --token-file, --max-workers, --chunk-size,
    --max-request-span, --read-timeout, --drop-cache, --progress-interval, --peers,
    --peer-token-file) apply to the agent's
    preloads: give them before `agent` or through their environment twins.
    """
    from agent.cli.peering import peering
    from agent.engine.preload import PreloadOptions
    from agent.engine.sharing import Shelf
    from agent.node.api import parse_listen
    from agent.node.daemon import Daemon, serve
    from agent.node.labels import check_prefix
    from agent.node.nodesync import NodeTarget
    from agent.node.peermetrics import watch
    from agent.node.peerserve import PeerServer
    from agent.sources.registry import SourcesFor, factories

    root = ctx.find_root().params
    address = parse_listen(listen)
    peer_address = parse_listen(peer_listen)
    peers = peering(root["peers"], root["peer_token_file"], port=peer_address[1])
    shelf = Shelf() if peers is not None else None
    opts = PreloadOptions(
        max_workers=root["max_workers"],
        max_host_connections=root["max_host_connections"],
        chunk_size=root["chunk_size"],
        progress_interval=root["progress_interval"] or 5.0,
        drop_cache=root["drop_cache"],
        shelf=shelf,
    )
    hub = hub_factory(
        check_endpoint(root["endpoint"]),
        check_token_file(root["token_file"]),
        root["max_workers"],
        root["read_timeout"] or 30.0,
        root["max_request_span"],
    )
    sources: SourcesFor = partial(
        factories,
        hub=hub,
        drop_cache=root["drop_cache"],
        max_workers=root["max_workers"],
        read_timeout=root["read_timeout"] or 30.0,
    )
    if peers is not None:
        sources = peers.wrapping(sources)
    node = None
    if node_name:
        node = NodeTarget(node_name, check_prefix(node_label_prefix), events_namespace)
    daemon = Daemon(config_path, dest, sources, opts, max_concurrent, node)
    server = None
    if peers is not None and shelf is not None:
        server = PeerServer(peer_address, shelf, daemon.published, peers.token)
        watch(peers.stats, server.stats, peers.peers)
    sys.exit(serve(daemon, address, peers=server))
