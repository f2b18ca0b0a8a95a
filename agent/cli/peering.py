"""`--peers` and its companions: fetch from the other nodes' agents (see docs/peers.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from agent.cli.options import opt
from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.sources.peers import Peering

F = TypeVar("F", bound=Callable[..., object])

peers_option = opt(
    "--peers",
    env="PRELOAD_PEERS",
    show_default="none: every byte from the sources",
    help="Other nodes' agents to fetch pieces from before the sources, comma-separated "
    "http://HOST:PORT and/or dns:NAME:PORT (every address of NAME; re-resolved every 30 s).",
)
peer_token_option = opt(
    "--peer-token-file",
    env="PRELOAD_PEER_TOKEN_FILE",
    type=click.Path(path_type=Path),
    show_default="none: the peer port is open to whoever reaches it",
    help="File holding the token peers present to each other.",
)


def peer_options(f: F) -> F:
    """Both options, for the commands that download."""
    return peers_option(peer_token_option(f))


def peering(spec: str | None, token_file: Path | None, *, port: int | None) -> Peering | None:
    """The peer set and client for `--peers`, or None without it (usage errors first); `port`:
    this process's own peer port, when it serves one."""
    # Deferred: commands that do not download need none of the peer client.
    from agent.sources.peers import Peering
    from agent.sources.peerset import PeerSet, parse_peers

    token = read_token(token_file)
    if not spec:
        return None
    return Peering(PeerSet(parse_peers(spec), port=port), token)


def read_token(token_file: Path | None) -> str | None:
    """The peer token, or None; an unreadable or empty file is a usage error."""
    if token_file is None:
        return None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read --peer-token-file {token_file}: {reason}") from exc
    if not token:
        raise UsageError(f"--peer-token-file {token_file} is empty")
    return token
