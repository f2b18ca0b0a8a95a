"""Model-cache preloader: verified, resumable, atomic model preloads for GPU nodes."""

__version__ = "0.1.0"
