"""The download engine: the preload use case, planning, scheduling, disk I/O, hashing, progress."""
