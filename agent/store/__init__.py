"""The store: the one owner of every path under a cache directory and of each layout."""

from agent.store.layouts import HfRepo
from agent.store.paths import STATE, CachePaths
from agent.store.store import Placement, Store

__all__ = ["STATE", "CachePaths", "HfRepo", "Placement", "Store"]
