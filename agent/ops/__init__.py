"""Offline operations on a cache directory: verify, gc, status, wait, watch."""
