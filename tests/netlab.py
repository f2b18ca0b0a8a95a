#!/usr/bin/env python3
"""Several nodes on one machine (issue 14): network namespaces on a bridge, tc caps, dnsmasq, processes.

One run owns every namespace named `pl<pid>-<k>-*` (pid: the process that made them): a switch
(`-sw`, a Linux bridge and dnsmasq), the hub (`-hub`) and the nodes (`-n1`...), each joined to
the bridge by a veth pair whose two ends are both capped with tbf, so that the network and not
the CPU is what the nodes share. The root namespace is never modified; nothing without our
prefix is ever touched. Tests and the benchmark import `NetLab`; by hand:

    python tests/netlab.py up --nodes 3     # until Ctrl-C; prints how to enter each namespace
    python tests/netlab.py status           # every run's namespaces, addresses and byte counters
    python tests/netlab.py down             # remove what a killed run left (its pid is gone)
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

if not __package__:  # run as a script (the CLI): the repository root makes `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netns import (
    GRACE,
    NETNS_ETC,
    OURS,
    PREFIX,
    LabError,
    destroy_namespace,
    in_namespace,
    kill_all,
    namespaces,
    owner_pid,
    pick_subnet,
    pid_alive,
    sh,
    sweep_stale,
    unavailable,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
DNS_NAME = "peers.lab"
SWITCH = "sw"
HUB = "hub"
BRIDGE = "br0"


@dataclass(frozen=True)
class Member:
    """A namespace on the switch: the hub or a node."""

    name: str
    ns: str
    ip: str
    rate: int  # bytes per second each way; 0: uncapped


@dataclass(frozen=True)
class LinkBytes:
    """What a member's veth carried so far, link-layer bytes (headers included)."""

    sent: int
    received: int


_LIVE: list[NetLab] = []
_SEQ = itertools.count(1)
_previous_sigterm: Any = None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Bring every live lab down, then die of the signal as we would have."""
    for lab in list(_LIVE):
        lab.down()
    signal.signal(signal.SIGTERM, _previous_sigterm or signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


@atexit.register
def _at_exit() -> None:
    for lab in list(_LIVE):
        lab.down()


class NetLab:
    """A switch, a hub namespace and nodes n1..nN, capped, with a DNS name listing the nodes."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        rate: int = 50 * MB,
        hub_rate: int = 50 * MB,
        mtu: int = 9000,
        workdir: Path | None = None,
        dns_name: str = DNS_NAME,
    ) -> None:
        # Several labs may live in one process (a test module's and a test's own).
        self.run_id = f"{PREFIX}{os.getpid()}-{next(_SEQ)}"
        self.rate, self.hub_rate, self.mtu, self.dns_name = rate, hub_rate, mtu, dns_name
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.run_id}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.subnet = pick_subnet(os.getpid())
        self.members: dict[str, Member] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.hub_url: str | None = None
        self.hub_proc: subprocess.Popen[bytes] | None = None
        self._initial_nodes = nodes
        self._next_host = 11
        self._in_dns: list[str] = []
        self._dns_proc: subprocess.Popen[bytes] | None = None
        self._made: list[str] = []

    # -- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> NetLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> NetLab:
        """Build the switch, the hub namespace, the nodes and the DNS server (down again on failure)."""
        global _previous_sigterm
        sweep_stale()
        if not _LIVE and threading.current_thread() is threading.main_thread():
            _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        _LIVE.append(self)
        try:
            sw = self._new_ns(SWITCH)
            # A fixed MAC: a bridge otherwise takes its lowest port's, which changes as nodes join
            # and leaves the members' ARP entries for the DNS server pointing nowhere.
            sh("ip", "-n", sw, "link", "add", BRIDGE, "address", "02:00:00:00:00:01", "mtu", str(self.mtu),
               "type", "bridge")  # fmt: skip
            sh("ip", "-n", sw, "addr", "add", f"{self.subnet}.1/24", "dev", BRIDGE)
            sh("ip", "-n", sw, "link", "set", BRIDGE, "up")
            self._attach(HUB, f"{self.subnet}.2", self.hub_rate)
            self._hosts_file.write_text("")
            self._start_dns()
            for i in range(1, self._initial_nodes + 1):
                self.add_node(f"n{i}")
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Kill every process in our namespaces, delete them and their /etc/netns dirs."""
        if self not in _LIVE:
            return
        kill_all([ns for ns in self._made if ns in namespaces()])
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(GRACE)
        for ns in reversed(self._made):
            destroy_namespace(ns)
        _LIVE.remove(self)
        if (
            not _LIVE
            and _previous_sigterm is not None
            and threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGTERM, _previous_sigterm)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- topology --------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        """The namespace of a member (`hub`, `n1`, ...)."""
        return f"{self.run_id}-{name}"

    def ip(self, name: str) -> str:
        """The address of a member."""
        return self.members[name].ip

    @property
    def nodes(self) -> list[str]:
        """Every member but the hub, in the order they were added."""
        return [n for n in self.members if n != HUB]

    def add_node(self, name: str, *, rate: int | None = None, dns: bool = True) -> Member:
        """A new namespace on the switch (a node joining); listed under the DNS name when `dns`."""
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name) or name in self.members or name == SWITCH:
            raise LabError(f"bad or duplicate member name {name!r}")
        member = self._attach(name, f"{self.subnet}.{self._next_host}", self.rate if rate is None else rate)
        self._next_host += 1
        if dns:
            self.dns_add(name)
        return member

    def _new_ns(self, name: str) -> str:
        ns = self.ns(name)
        owner_pid(ns)
        sh("ip", "netns", "add", ns)
        self._made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # No IPv6 on the lab links: no router solicitations or DAD in the byte counters.
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
        return ns

    def _attach(self, name: str, ip: str, rate: int) -> Member:
        ns, sw, port = self._new_ns(name), self.ns(SWITCH), f"v-{name}"
        sh("ip", "-n", ns, "link", "add", "eth0", "mtu", str(self.mtu), "type", "veth",
           "peer", "name", port, "mtu", str(self.mtu), "netns", sw)  # fmt: skip
        sh("ip", "-n", sw, "link", "set", port, "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if rate:
            self._cap(ns, "eth0", rate)  # what the member sends
            self._cap(sw, port, rate)  # what it receives
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {self.subnet}.1\noptions timeout:1 attempts:2\n")
        member = Member(name, ns, ip, rate)
        self.members[name] = member
        return member

    @staticmethod
    def _cap(ns: str, dev: str, rate: int) -> None:
        # Burst: 10 ms of the rate, and never under 4 GSO segments of 64 KiB (tbf drops larger ones).
        burst = max(rate // 100, 256 << 10)
        sh("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate * 8}bit",
           "burst", str(burst), "latency", "50ms")  # fmt: skip

    def link_bytes(self, name: str) -> LinkBytes:
        """Bytes a member has sent and received on its link so far."""
        info = json.loads(sh("ip", "-n", self.ns(name), "-s", "-j", "link", "show", "eth0"))
        stats = info[0]["stats64"]
        return LinkBytes(int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"]))

    # -- DNS -------------------------------------------------------------------------------------

    @property
    def _hosts_file(self) -> Path:
        return self.workdir / "dns-hosts"

    def _start_dns(self) -> None:
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                f"--addn-hosts={self._hosts_file}", f"--listen-address={self.subnet}.1",
                "--bind-interfaces", "--local=/lab/", "--local-ttl=0", "--user=root", "--pid-file=",
                "--log-facility=-"]  # fmt: skip
        log = self.workdir / "dnsmasq.log"
        self._dns_proc = self.spawn(SWITCH, argv, log_path=log)
        # Until it has read the hosts file, a SIGHUP (our update) would kill it.
        deadline = time.monotonic() + 10
        while f"read {self._hosts_file}" not in (log.read_text() if log.exists() else ""):
            if self._dns_proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"dnsmasq did not start; see {log}")
            time.sleep(0.05)

    def dns_set(self, names: Sequence[str]) -> None:
        """List exactly these members under the DNS name."""
        self._in_dns = list(dict.fromkeys(names))
        self._publish_dns()

    def set_rate(self, name: str, rate: int) -> None:
        """Change a member's cap (both ways) on a live lab; 0 lifts it."""
        ns, sw, port = self.ns(name), self.ns(SWITCH), f"v-{name}"
        for where, dev in ((ns, "eth0"), (sw, port)):
            if rate:
                self._cap(where, dev, rate)
            else:
                sh("tc", "-n", where, "qdisc", "del", "dev", dev, "root", check=False)
        self.members[name] = Member(name, ns, self.ip(name), rate)

    def dns_add(self, name: str) -> None:
        """List a member's address under the DNS name (a node joining the headless Service)."""
        if name not in self._in_dns:
            self._in_dns.append(name)
            self._publish_dns()

    def dns_remove(self, name: str) -> None:
        """Take a member's address out of the DNS name."""
        if name in self._in_dns:
            self._in_dns.remove(name)
            self._publish_dns()

    def _publish_dns(self) -> None:
        tmp = self._hosts_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{self.ip(n)} {self.dns_name}\n" for n in self._in_dns))
        os.replace(tmp, self._hosts_file)
        assert self._dns_proc is not None
        want = {self.ip(n) for n in self._in_dns}
        deadline = time.monotonic() + 10
        hup_at = 0.0
        while (got := self.resolve(HUB)) != want:
            if self._dns_proc.poll() is not None:
                raise LabError(
                    f"dnsmasq exited {self._dns_proc.returncode}; see {self.workdir / 'dnsmasq.log'}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"dnsmasq answers {sorted(got)}, not {sorted(want)}, for {self.dns_name}")
            if time.monotonic() - hup_at > 2:  # again, if a reload went unseen (it is idempotent)
                self._dns_proc.send_signal(signal.SIGHUP)
                hup_at = time.monotonic()
            time.sleep(0.05)

    def resolve(self, name: str, host: str | None = None) -> set[str]:
        """The IPv4 addresses a member's resolver (its /etc/netns resolv.conf) gives for `host`."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns(name), "getent", "ahostsv4", host or self.dns_name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}

    # -- processes -------------------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process in a member's namespace, stdout and stderr to `log_path` (else dropped)."""
        out: IO[bytes] | int = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(name), *argv],
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.procs.append(proc)
        return proc

    def call(self, name: str, fn: Callable[[], T]) -> T:
        """Run `fn` inside a member's namespace (see in_namespace)."""
        return in_namespace(self.ns(name), fn)

    def get(self, name: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET `url` from a member's namespace; (status, body), status 0 when nothing answers."""

        def fetch() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as reply:
                    return int(reply.status), reply.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()
            except OSError:
                return 0, b""

        return self.call(name, fetch)

    def start_hub(
        self, serve_dir: Path, repo: str, *, port: int = 8000, cdn_port: int = 8001, timeout: float = 300
    ) -> str:
        """Serve `serve_dir` as `repo` with the dev hub in the hub namespace; its URL once it lists hashes."""
        argv = [sys.executable, "-m", "agent.devhub", "--serve-dir", str(serve_dir), "--repo", repo,
                "--host", self.ip(HUB), "--port", str(port), "--cdn-port", str(cdn_port)]  # fmt: skip
        self.hub_proc = self.spawn(HUB, argv, log_path=self.workdir / "devhub.log")
        url = f"http://{self.ip(HUB)}:{port}"
        # The first listing with blobs hashes every file: done here, not on the nodes' clock.
        listing = f"{url}/api/models/{repo}/revision/main?blobs=true"
        deadline = time.monotonic() + timeout
        while self.get(HUB, listing, timeout=timeout)[0] != 200:
            if self.hub_proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the dev hub did not come up; see {self.workdir / 'devhub.log'}")
            time.sleep(0.1)
        self.hub_url = url
        return url

    def stop_hub(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Take the hub down (SIGKILL by default: as an outage, not a goodbye)."""
        if self.hub_proc is not None and self.hub_proc.poll() is None:
            self.hub_proc.send_signal(sig)
            self.hub_proc.wait(GRACE)


# -- the command line --------------------------------------------------------------------------------


def _status() -> int:
    runs: dict[int, list[str]] = {}
    for ns in namespaces():
        if OURS.match(ns):
            runs.setdefault(owner_pid(ns), []).append(ns)
    if not runs:
        print("no netlab namespaces")
    for pid, nss in sorted(runs.items()):
        print(f"run {PREFIX}{pid}: {'live' if pid_alive(pid) else 'stale (python tests/netlab.py down)'}")
        for ns in nss:
            addr = sh("ip", "-n", ns, "-br", "-4", "addr", "show", "dev", "eth0", check=False).split()
            stats = sh("ip", "-n", ns, "-s", "-j", "link", "show", "eth0", check=False)
            s = json.loads(stats)[0]["stats64"] if stats.strip() else None
            counters = f"sent {s['tx']['bytes']:,} B, received {s['rx']['bytes']:,} B" if s else ""
            print(f"  {ns:24} {addr[2] if len(addr) > 2 else '':18} {counters}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`up` (foreground until Ctrl-C), `status`, `down` (remove stale runs)."""
    parser = argparse.ArgumentParser(
        prog="netlab", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--nodes", type=int, default=3, help="nodes n1..nN (up)")
    parser.add_argument("--rate-mb", type=float, default=50, help="each node's cap, MB/s each way; 0: none")
    parser.add_argument("--hub-rate-mb", type=float, default=50, help="the hub's uplink cap, MB/s; 0: none")
    args = parser.parse_args(argv)
    if args.command == "status":
        return _status()
    if args.command == "down":
        removed = sweep_stale()
        print(f"removed {len(removed)} stale namespace(s): {' '.join(removed)}".rstrip(": "))
        live = [ns for ns in namespaces() if OURS.match(ns)]
        if live:
            print(f"left alone (their run is live; stop it with Ctrl-C or SIGTERM): {' '.join(live)}")
        return 0
    reason = unavailable()
    if reason:
        print(f"netlab: {reason}", file=sys.stderr)
        return 1
    lab = NetLab(args.nodes, rate=int(args.rate_mb * MB), hub_rate=int(args.hub_rate_mb * MB))
    with lab:
        for m in lab.members.values():
            print(f"{m.name:6} {m.ns:20} {m.ip:15} ip netns exec {m.ns} bash")
        print(f"DNS: {lab.dns_name} -> {' '.join(sorted(lab.resolve(HUB)))}; Ctrl-C takes it all down")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
