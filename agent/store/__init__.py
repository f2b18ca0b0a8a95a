"""The store: the one owner of every path under a cache directory and of each layout."""

from agent.store.store import STATE, Placement, Store

__all__ = ["STATE", "Placement", "Store"]
