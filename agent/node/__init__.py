"""The DaemonSet agent.

daemon.py wires every part and serves; models.py is the model table and its one state machine;
configwatch.py the config file in force; reconcile.py applies its changes; workers.py runs the
preloads; checks.py the periodic verification; disk.py watermarks, GC and use records;
background.py the threads shutdown waits for; api.py the HTTP API; metrics.py every metric.
"""
