"""Named network namespaces, ours only: create, enter, kill and sweep `pl<pid>-...` (tests/netlab.py).

The low level of the multi-node lab. Every destructive call checks the name first: a namespace
without our prefix is refused (ForeignNamespace), and a run's leftovers are swept only once the
process that made them (the pid in the name) is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PREFIX = "pl"
OURS = re.compile(r"^pl(\d+)-[a-z0-9-]+$")
NETNS_ETC = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
TOOLS = ("ip", "tc", "dnsmasq", "getent")
# Seconds a process gets between SIGTERM and SIGKILL when a lab comes down.
GRACE = 5.0


class LabError(RuntimeError):
    """A lab command failed."""


class ForeignNamespace(LabError):
    """Refused: the namespace is not one of ours (or not this run's)."""


def sh(*argv: str, check: bool = True) -> str:
    """Run a command; its stdout (LabError with its stderr when it fails and `check`)."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """Every named network namespace on the machine (ours or not; read-only)."""
    out = sh("ip", "-j", "netns", "list").strip()
    return [entry["name"] for entry in json.loads(out)] if out else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_pid(ns: str) -> int:
    match = OURS.match(ns)
    if not match:
        raise ForeignNamespace(f"refusing to touch {ns!r}: not a netlab namespace ({PREFIX}<pid>-...)")
    return int(match[1])


def destroy_namespace(ns: str) -> None:
    """Kill every process in one of our namespaces, delete it and its /etc/netns dir."""
    owner_pid(ns)
    kill_all([ns])
    if ns in namespaces():
        sh("ip", "netns", "del", ns)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def kill_all(nss: Sequence[str]) -> None:
    """SIGTERM every process in these namespaces, SIGKILL what is left after GRACE."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + GRACE
        while True:
            pids = [int(p) for ns in nss if ns in namespaces() for p in sh("ip", "netns", "pids", ns).split()]
            pids = [p for p in pids if p != os.getpid()]
            if not pids or time.monotonic() > deadline:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.1)
        if not pids:
            return


def sweep_stale() -> list[str]:
    """Remove the namespaces of runs whose process is gone (a killed run); the names removed."""
    stale = [ns for ns in namespaces() if OURS.match(ns) and not pid_alive(owner_pid(ns))]
    for ns in stale:
        destroy_namespace(ns)
    for path in NETNS_ETC.glob(f"{PREFIX}*-*") if NETNS_ETC.is_dir() else ():
        if OURS.match(path.name) and not pid_alive(owner_pid(path.name)) and path.name not in namespaces():
            shutil.rmtree(path, ignore_errors=True)
    return stale


def unavailable() -> str | None:
    """Why a lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install iproute2 dnsmasq-base)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        sh("tc", "-n", probe, "qdisc", "add", "dev", "p0", "root", "tbf", "rate", "8mbit", "burst", "64kb",
           "latency", "50ms")  # fmt: skip
    except LabError as exc:
        return f"cannot build a namespace with a capped veth here: {exc}"
    finally:
        if probe in namespaces():
            sh("ip", "netns", "del", probe, check=False)
    return None


def pick_subnet(pid: int) -> str:
    """10.213.K: a /24 overlapping no route of the root namespace (read, never changed)."""
    routes = [r["dst"] for r in json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all") or "[]")]
    taken = [ipaddress.ip_network(d, strict=False) for d in routes if d[0].isdigit()]
    for i in range(230):
        k = 20 + (pid + i) % 230
        net = ipaddress.ip_network(f"10.213.{k}.0/24")
        if not any(net.overlaps(t) and t.prefixlen > 0 for t in taken):
            return f"10.213.{k}"
    raise LabError("no free 10.213.K.0/24")


_libc = ctypes.CDLL(None, use_errno=True)


def in_namespace(ns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread that has entered the namespace (sockets it opens stay there).

    A network namespace is per thread, so the caller stays in the root namespace and needs no
    address there: this is how the harness talks to agents listening on node addresses.
    """
    owner_pid(ns)
    box: dict[str, Any] = {}

    def run() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
