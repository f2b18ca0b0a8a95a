"""The multi-node harness itself (tests/netlab.py): reachability, caps, DNS, clean-up, refusals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tool_unavailable
from tests.netlab import HUB, MB, NetLab
from tests.netns import (
    NETNS_ETC,
    ForeignNamespace,
    destroy_namespace,
    in_namespace,
    namespaces,
    sh,
    sweep_stale,
    unavailable,
)

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
# Counts bytes until EOF, then prints them and the seconds they took: the receiving end of a
# transfer (the sender's clock would stop once the last bytes sit in its socket buffer).
SINK = (
    "import socket,sys,time\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); print('listening', flush=True)\n"
    "c,_=s.accept(); n=0; t=time.monotonic()\n"
    "while (b := c.recv(1 << 20)): n += len(b)\n"
    "print(n, time.monotonic() - t, flush=True)\n"
)


def _need_netns() -> None:
    reason = unavailable()
    if reason:
        tool_unavailable("netns", reason)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    _need_netns()
    with NetLab(3, workdir=tmp_path_factory.mktemp("netlab")) as lab:
        yield lab


def _wait_listening(lab: NetLab, name: str, port: int) -> None:
    def probe() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((lab.ip(name), port)) == 0

    deadline = time.monotonic() + 10
    while not lab.call(name, probe):
        assert time.monotonic() < deadline, f"nothing listens on {name}:{port}"
        time.sleep(0.05)


def _transfer(lab: NetLab, src: str, dst: str, size: int, port: int) -> tuple[float, int]:
    """Send `size` bytes from `src` to a sink in `dst`; (seconds, bytes) as the sink counted them."""
    log = lab.workdir / f"sink-{dst}-{port}.log"
    sink = lab.spawn(dst, [sys.executable, "-c", SINK, str(port)], log_path=log)
    deadline = time.monotonic() + 10
    while "listening" not in log.read_text():
        assert time.monotonic() < deadline and sink.poll() is None, log.read_text()
        time.sleep(0.05)

    def send() -> None:
        with socket.create_connection((lab.ip(dst), port), timeout=30) as s:
            s.sendall(bytes(size))

    lab.call(src, send)
    assert sink.wait(30) == 0
    count, seconds = log.read_text().split()[-2:]
    return float(seconds), int(count)


def test_nodes_reach_each_other_and_the_hub(lab: NetLab) -> None:
    (lab.workdir / "hello.txt").write_text("hello from the hub\n")
    server = [sys.executable, "-m", "http.server", "--directory", str(lab.workdir)]
    lab.spawn(HUB, [*server, "--bind", lab.ip(HUB), "8000"])
    lab.spawn("n2", [*server, "--bind", lab.ip("n2"), "8000"])
    _wait_listening(lab, HUB, 8000)
    _wait_listening(lab, "n2", 8000)
    for node in lab.nodes:
        assert lab.get(node, f"http://{lab.ip(HUB)}:8000/hello.txt") == (200, b"hello from the hub\n")
    assert lab.get("n1", f"http://{lab.ip('n2')}:8000/hello.txt")[0] == 200
    assert lab.get("n3", f"http://{lab.ip('n2')}:8000/hello.txt")[0] == 200


def test_root_namespace_cannot_reach_the_lab(lab: NetLab) -> None:
    """The lab is isolated: the root namespace gets no route, address or bridge from it."""
    routes = sh("ip", "-4", "route", "show", "table", "all")
    assert lab.subnet not in routes
    links = json.loads(sh("ip", "-j", "link"))
    assert not [
        link["ifname"] for link in links if link["ifname"] == "br0" or link["ifname"].startswith("v-")
    ]
    assert f"{lab.subnet}." not in sh("ip", "-4", "addr")


def test_node_link_cap_holds_and_is_counted(lab: NetLab) -> None:
    size = 32 << 20
    before_n1, before_n2 = lab.link_bytes("n1"), lab.link_bytes("n2")
    seconds, received = _transfer(lab, "n1", "n2", size, 9001)
    assert received == size
    # 50 MB/s: 32 MiB need 0.67 s; a missing cap takes well under 0.2 s here.
    assert seconds >= 0.6, f"{size} bytes in {seconds:.2f} s: the 50 MB/s cap does not hold"
    assert seconds < 5, f"{size} bytes in {seconds:.2f} s: far below the cap"
    sent = lab.link_bytes("n1").sent - before_n1.sent
    got = lab.link_bytes("n2").received - before_n2.received
    # Link-layer bytes: the payload plus under 1% of headers at MTU 9000.
    assert size <= sent <= size * 1.01
    assert size <= got <= size * 1.01


def test_hub_uplink_cap_holds(lab: NetLab) -> None:
    size = 16 << 20
    seconds, received = _transfer(lab, HUB, "n3", size, 9002)
    assert received == size
    assert seconds >= size / (50 * MB) * 0.9, f"hub sent {size} bytes in {seconds:.2f} s"


def test_dns_answers_every_node_and_follows_changes(lab: NetLab) -> None:
    every = {lab.ip(n) for n in lab.nodes}
    assert len(every) == 3
    for name in [*lab.nodes, HUB]:
        assert lab.resolve(name) == every
    lab.add_node("late")
    assert lab.resolve("n1") == every | {lab.ip("late")}
    assert lab.resolve("late") == every | {lab.ip("late")}
    lab.dns_remove("late")
    assert lab.resolve("n2") == every
    lab.dns_remove("n1")
    lab.dns_add("n1")
    assert lab.resolve("n3") == every


def test_refuses_foreign_namespaces(tmp_path: Path) -> None:
    _need_netns()
    foreign = f"netlab-foreign-{os.getpid()}"
    sh("ip", "netns", "add", foreign)
    try:
        with pytest.raises(ForeignNamespace):
            destroy_namespace(foreign)
        with pytest.raises(ForeignNamespace):
            in_namespace(foreign, lambda: None)
        assert foreign not in sweep_stale()
        assert foreign in namespaces()
    finally:
        sh("ip", "netns", "del", foreign)


def test_down_leaves_no_namespace_process_or_etc_dir(tmp_path: Path) -> None:
    _need_netns()
    lab = NetLab(2, workdir=tmp_path).up()
    sleepers = [lab.spawn(n, ["sleep", "600"]) for n in lab.nodes]
    # One that ignores SIGTERM: down() must still end it.
    stubborn = lab.spawn("n1", ["sh", "-c", "trap '' TERM; sleep 600 & wait"])
    ours = [ns for ns in namespaces() if ns.startswith(lab.run_id + "-")]
    assert len(ours) == 4  # switch, hub, n1, n2
    assert all((NETNS_ETC / ns / "resolv.conf").exists() for ns in ours if not ns.endswith("-sw"))
    lab.down()
    assert not [ns for ns in namespaces() if ns.startswith(lab.run_id + "-")]
    assert not [p for p in NETNS_ETC.glob(f"{lab.run_id}-*")] if NETNS_ETC.is_dir() else True
    assert all(p.poll() is not None for p in [*sleepers, stubborn])
    assert all(p.poll() is not None for p in lab.procs)


def test_stale_run_is_swept(tmp_path: Path) -> None:
    _need_netns()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"pl{gone.pid}-1-n1"
    sh("ip", "netns", "add", stale)
    (NETNS_ETC / stale).mkdir(parents=True)
    (NETNS_ETC / stale / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    leftover = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "600"])
    try:
        deadline = time.monotonic() + 5
        while not sh("ip", "netns", "pids", stale).split():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert stale in sweep_stale()
        assert stale not in namespaces()
        assert not (NETNS_ETC / stale).exists()
        assert leftover.wait(10) != 0
    finally:
        if leftover.poll() is None:
            leftover.kill()
        if stale in namespaces():
            sh("ip", "netns", "del", stale)


def test_cli_up_status_and_sigterm_cleanup(tmp_path: Path) -> None:
    _need_netns()
    script = str(ROOT / "tests" / "netlab.py")
    up = subprocess.Popen(
        [sys.executable, script, "up", "--nodes", "2"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert up.stdout is not None
        lines = []
        while not (lines and lines[-1].startswith("DNS:")):
            line = up.stdout.readline()
            assert line, f"`up` ended early: {lines}"
            lines.append(line)
        run = f"pl{up.pid}-"
        assert len([ns for ns in namespaces() if ns.startswith(run)]) == 4
        status = subprocess.run(
            [sys.executable, script, "status"], capture_output=True, text=True, check=True
        )
        assert f"run pl{up.pid}: live" in status.stdout
        up.terminate()
        up.wait(30)
        assert not [ns for ns in namespaces() if ns.startswith(run)]
        assert not list(NETNS_ETC.glob(f"{run}*")) if NETNS_ETC.is_dir() else True
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        sweep_stale()
