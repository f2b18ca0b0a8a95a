"""Source names as users write them (`hf`, a directory or `file://`, `s3://BUCKET/PREFIX`) -> source
factories, in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.sources.base import Source, SourceFactory
from agent.sources.directory import DirectorySource, parse_location
from agent.sources.s3loc import is_s3, parse_s3_url

HUB = "hf"


def check(name: str) -> None:
    """Raise UsageError unless `name` is a source this registry can build."""
    if name != HUB:
        parse_s3_url(name) if is_s3(name) else parse_location(name)


# A model's source names -> factories, with every setting but the names already bound (the
# agent is handed one, built where the command line is parsed).
SourcesFor = Callable[[Sequence[str]], list[SourceFactory]]


def factories(
    names: Sequence[str],
    hub: SourceFactory,
    drop_cache: bool = False,
    max_workers: int = 16,
    read_timeout: float = 30.0,
) -> list[SourceFactory]:
    """Source factories in the order given: "hf" is the hub, s3:// a bucket, anything else a
    directory.

    A directory or a bucket may ask the hub for expected hashes, but only when "hf" is one of the
    sources: a user who left it out may well be offline (or in an air-gapped network).
    """
    out: list[SourceFactory] = []
    names = names or (HUB,)
    lister = hub if HUB in names else None
    for name in names:
        if name == HUB:
            out.append(hub)
        elif is_s3(name):
            out.append(_bucket(name, lister, max_workers, read_timeout))
        else:
            root = parse_location(name)
            out.append(lambda root=root: DirectorySource(root, lister, drop_cache))  # type: ignore[misc]
    return out


def _bucket(name: str, lister: SourceFactory | None, max_workers: int, read_timeout: float) -> SourceFactory:
    loc = parse_s3_url(name)  # a bad URL is a usage error now, before anything runs

    def make() -> Source:
        from agent.sources.s3 import S3Source

        return S3Source(loc, lister, max_workers=max_workers, read_timeout=read_timeout)

    return make
