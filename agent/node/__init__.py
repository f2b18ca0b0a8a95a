"""The DaemonSet agent: wiring, config, model state, reconcile, periodic checks, API, metrics."""
