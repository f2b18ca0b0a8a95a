"""Scenarios 7, 8: HTTP API abuse (hypothesis where it fits) and secrets."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from agent.devhub import Fault, HubServer
from agent.devhub.demo_model import DEMO_REPO_ID, demo_repo
from tests.integration.agentproc import AgentProc
from tests.reliability.common import Ctx, Row, bounded_poll, cli, spawn

SEGMENTS = [
    "..", "%2e%2e", "%2E%2E%2F", "..%2f", "%252e%252e", ".", "v1", "models", "livez", "readyz",
    "metrics", "etc", "passwd", "%00", "%2f", "~", "", "\\..\\", "demo-org", "tiny-model",
    "%ff", "%", "?x=1", "#f", ";a", "a" * 300, "%c0%ae", "proc", "self", "environ",
]  # fmt: skip
DISCLOSURE = ("root:x:", "Traceback", "PRIVATE KEY", "HF_TOKEN=", "PATH=")


def _raw(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes, read one response; (status, body). Status 0: the server closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # a server that answers early may stop reading: read on
            s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:  # timeout or reset: whatever arrived is the answer
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (
                        int(h.split(b":", 1)[1])
                        for h in head.split(b"\r\n")
                        if h.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return 0, data


def _ok(status: int, body: bytes) -> bool:
    text = body.decode("latin-1")
    return 200 <= status < 500 and not any(d in text for d in DISCLOSURE)


def api_abuse(ctx: Ctx) -> list[Row]:
    """Hostile paths, methods, long ids, slow and many clients against a real agent."""
    rows = {k: Row(f"7{k}") for k in "abcde"}
    rows["a"].scenario = "7a. API: random and hostile paths (hypothesis), encoded `..`"
    rows["b"].scenario = "7b. API: methods other than GET/HEAD, malformed request lines"
    rows["c"].scenario = "7c. API: very long ids and headers"
    rows["d"].scenario = "7d. API: slow clients (slowloris) while probes are polled"
    rows["e"].scenario = "7e. API: many concurrent clients"
    with HubServer([demo_repo()]) as hub:
        cfg = ctx.work / "api.yaml"
        cfg.write_text(f"models: [{DEMO_REPO_ID}]\n")
        agent = AgentProc(ctx.work, hub.url, cfg, ctx.work / "api-cache")
        try:
            agent.start()
            port = agent.port
            examples = 60 if ctx.quick else 400

            @hypothesis_seed(ctx.rng.randrange(1 << 32))  # reproducible from the suite's --seed
            @settings(
                max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
            )
            @given(
                st.lists(st.sampled_from(SEGMENTS) | st.text(min_size=0, max_size=20), max_size=8),
                st.sampled_from(["/", "/v1/models/", "//", "/v1/"]),
            )
            def paths(segs: list[str], prefix: str) -> None:
                raw = (prefix + "/".join(segs)).encode("utf-8", "surrogateescape")
                raw = bytes(b if 0x21 <= b < 0x7F else 0x25 for b in raw)  # spaces/controls -> '%'
                status, body = _raw(
                    port, b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                probe = status == 503 and raw in (b"/readyz", b"/livez")  # not ready (yet) is an answer
                rows["a"].trial(probe or _ok(status, body), f"GET {raw[:120]!r} -> {status} {body[:100]!r}")

            paths()
            for method in [
                "POST",
                "PUT",
                "DELETE",
                "PATCH",
                "OPTIONS",
                "TRACE",
                "CONNECT",
                "PROPFIND",
                "FOO",
                "get",
                "G-E-T",
                "BREW",
            ]:
                status, body = _raw(
                    port,
                    f"{method} /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                    "Connection: close\r\n\r\n".encode(),
                )
                rows["b"].trial(_ok(status, body) and status >= 400, f"{method} -> {status} {body[:100]!r}")
            for junk in [
                b"\r\n\r\n",
                b"   \r\n\r\n",
                b"GET\r\n\r\n",
                b"GET / HTTP/9.9\r\n\r\n",
                b"GET / HTTP/2.0\r\n\r\n",
                b"GET /livez FOO/1.1\r\n\r\n",
                b"GET / / / HTTP/1.1\r\n\r\n",
                b"garbage\r\n\r\n",
                b"\x00\x01\x02\r\n\r\n",
                b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n",
            ]:
                status, body = _raw(port, junk)
                rows["b"].trial(
                    _ok(status, body) and 400 <= status < 500, f"{junk[:30]!r} -> {status} {body[:100]!r}"
                )
            for odd in [  # odd but parseable: any answer but a 5xx
                b"GET / HTTP/1.1\r\nHost\r\n\r\n",
                b"GET /livez HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            ]:
                status, body = _raw(port, odd)
                rows["b"].trial(_ok(status, body) and status != 0, f"{odd[:30]!r} -> {status} {body[:100]!r}")
            for n in (64, 1000, 10_000, 60_000, 70_000, 200_000):
                status, body = _raw(
                    port,
                    f"GET /v1/models/{'a' * n}/{'b' * n} HTTP/1.1\r\n"
                    "Host: x\r\nConnection: close\r\n\r\n".encode(),
                )
                rows["c"].trial(_ok(status, body) and status >= 400, f"id {n} chars -> {status}")
            for n, want in ((100, 200), (70_000, 431)):
                status, body = _raw(
                    port, f"GET /livez HTTP/1.1\r\nX-Big: {'h' * n}\r\nConnection: close\r\n\r\n".encode()
                )
                rows["c"].trial(status == want and _ok(status, body), f"header {n} chars -> {status}")
            many = b"GET /livez HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"\r\n"
            status, body = _raw(port, many)
            rows["c"].trial(_ok(status, body) and status >= 400, f"500 headers -> {status}")
            _slow_clients(ctx, agent, rows["d"])
            _many_clients(ctx, agent, rows["e"])
            events = agent.events()
            errors = [e for e in events if e.get("event") == "api_error" or e.get("level") == "error"]
            log_text = agent.log_path.read_text()
            if errors or "Traceback" in log_text:
                rows["e"].trial(
                    False, f"agent logged errors: {errors[:2]} traceback={'Traceback' in log_text}"
                )
            alive = agent.proc is not None and agent.proc.poll() is None and agent.get("/livez")[0] == 200
            rows["e"].trial(alive, "agent did not survive the abuse")
        finally:
            agent.stop()
    rows["a"].notes.append(
        "raw request lines built from `..`, `%2e%2e`, `%252e`, `%00`, `\\`, long and random segments"
    )
    rows["b"].notes.append(
        "405 for every non-GET/HEAD method; a 4xx reply (400) required for every broken request line: "
        "blank, one word, `HTTP/9.9`, `HTTP/2.0`, TLS bytes, binary"
    )
    rows["c"].notes.append(
        "ids up to 200k chars (414 past the 64 KiB line limit), 70k-char header (431), 500 headers: "
        "a 4xx reply required (a closed connection fails)"
    )
    return list(rows.values())


def _slow_clients(ctx: Ctx, agent: AgentProc, row: Row) -> None:
    """Hold many half-sent requests open; probes must keep answering within a second."""
    held: list[socket.socket] = []
    count = 50 if ctx.quick else 300
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: ")
            held.append(s)
        for _ in range(10):
            started = time.monotonic()
            status, _ = _raw(
                agent.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3
            )
            took = time.monotonic() - started
            row.trial(
                status in (200, 503) and took < 2.0,
                f"probe with {count} slow clients: {status} in {took:.2f}s",
            )
        # A byte-at-a-time client still gets its answer.
        with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
            for b in b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n":
                s.sendall(bytes([b]))
                time.sleep(0.01)
            reply = s.recv(4096)
        row.trial(reply.startswith(b"HTTP/1.1 200"), f"byte-at-a-time client: {reply[:40]!r}")
    finally:
        for s in held:
            s.close()
    row.notes.append(f"{count} half-sent requests held open; probes answered in < 2 s")


def _many_clients(ctx: Ctx, agent: AgentProc, row: Row) -> None:
    paths = [
        "/livez",
        "/readyz",
        "/metrics",
        "/v1/models",
        f"/v1/models/{DEMO_REPO_ID}",
        "/v1/models/x/y",
        "/nope",
        "/v1/models/%2e%2e/%2e%2e",
    ]
    workers, per = (64, 10) if ctx.quick else (64, 30)
    lock = threading.Lock()
    results: list[tuple[bool, str]] = []

    def client(i: int) -> None:
        for j in range(per):
            p = paths[(i + j) % len(paths)]
            try:
                status, body = _raw(
                    agent.port, f"GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                )
                res = (_ok(status, body) and status != 0, f"{p} -> {status}")
            except OSError as exc:
                res = (False, f"{p}: {exc}")
            with lock:
                results.append(res)

    flooding = threading.Event()
    probes: list[tuple[str, int, float]] = []

    def prober() -> None:
        """/livez and /readyz, timed, for as long as the flood lasts."""
        i = 0
        while flooding.is_set():
            path = ("/livez", "/readyz")[i % 2]
            started = time.monotonic()
            try:
                status, _ = _raw(
                    agent.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), 5
                )
            except OSError:
                status = 0
            probes.append((path, status, time.monotonic() - started))
            i += 1
            time.sleep(0.02)

    flooding.set()
    watcher = threading.Thread(target=prober, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(client, range(workers)))
    finally:
        flooding.clear()
        watcher.join(10)
    for ok, why in results:
        row.trial(ok, why)
    row.trial(len(probes) >= 4, f"only {len(probes)} probes ran during the flood")
    for path, status, took in probes:
        want = (200,) if path == "/livez" else (200, 503)
        row.trial(status in want and took < 2.0, f"{path} during the flood: {status} in {took:.2f}s")
    took_all = sorted(t for _, _, t in probes) or [0.0]
    row.notes.append(
        f"{workers} clients x {per} requests; {len(probes)} /livez + /readyz probes timed during the flood: "
        f"median {took_all[len(took_all) // 2] * 1000:.0f} ms, max {took_all[-1] * 1000:.0f} ms (limit 2 s)"
    )


TOKEN_PREFIX = "hf_reliabilitySECRET"


def secrets(ctx: Ctx) -> Row:
    """With a token set: no log line, manifest, error, API answer or process title contains it."""
    row = Row("8. secrets: token never in logs, errors, manifests, API answers or cmdline")
    token = TOKEN_PREFIX + ctx.rng.randbytes(8).hex()
    url_secret = "urlpass" + ctx.rng.randbytes(6).hex()
    found: list[str] = []

    def check(what: str, text: str | bytes) -> None:
        data = text if isinstance(text, bytes) else text.encode()
        ok = token.encode() not in data and url_secret.encode() not in data
        row.trial(ok, f"secret found in {what}")

    with HubServer([demo_repo(gated=True)], tokens=[token]) as hub:
        dest = ctx.work / "secrets-cache"
        tfile = ctx.work / "token"
        tfile.write_text(token + "\n")
        envs = {"HF_ENDPOINT": hub.url, "HF_TOKEN": token}
        # A running preload: its process title (cmdline) must not carry the token.
        proc = spawn(
            ctx,
            "--model",
            DEMO_REPO_ID,
            "--dest",
            str(dest),
            extra_env={**envs, "PRELOAD_PROGRESS_INTERVAL": "0.1s"},
        )
        cmdlines = b""
        for _ in range(50):
            try:
                cmdlines += Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            except OSError:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        out, err = proc.communicate(timeout=60)
        check("the CLI's /proc/PID/cmdline", cmdlines)
        check("the CLI's log (HF_TOKEN)", out + err)
        r = cli(
            ctx,
            "--model",
            DEMO_REPO_ID,
            "--dest",
            str(ctx.work / "s2"),
            "--token-file",
            str(tfile),
            extra_env={"HF_ENDPOINT": hub.url},
        )
        check("the CLI's log (--token-file)", r.stdout + r.stderr)
        row.trial(
            proc.returncode == 0 and r.code == 0,
            f"preloads with the token failed: {proc.returncode}, {r.code}",
        )
        # Hostile hub echoing the token back in errors, and faults that make every error path log.
        for fault in [
            Fault(kind="tree", status=500, body=json.dumps({"error": f"bad {token}"}), times=None),
            Fault(kind="revision", status=400, body=f"echo Authorization: Bearer {token}", times=None),
            Fault(
                kind="resolve",
                status=401,
                headers={"X-Error-Message": f"token {token} invalid"},
                body=token,
                times=None,
            ),
            Fault(kind="cdn", corrupt=True, times=None),
            Fault(kind="resolve", redirect_loop=True, times=None),
        ]:
            hub.clear_faults()
            hub.add_fault(fault)
            r = cli(ctx, "--model", DEMO_REPO_ID, "--dest", str(ctx.work / "s3"), extra_env=envs, timeout=60)
            check(f"the error of fault {fault.label()}", r.stdout + r.stderr)
        hub.clear_faults()
        # Credentials in the endpoint URL are never recorded.
        r = cli(
            ctx,
            "--model",
            DEMO_REPO_ID,
            "--dest",
            str(ctx.work / "s4"),
            extra_env={**envs, "HF_ENDPOINT": hub.url.replace("http://", f"http://user:{url_secret}@")},
        )
        check("the log with credentials in HF_ENDPOINT", r.stdout + r.stderr)
        for sub in ("verify", "status"):
            extra = ["--model", DEMO_REPO_ID] if sub == "verify" else []
            r = cli(ctx, sub, *extra, "--dest", str(dest), "--json", extra_env=envs)
            check(f"`preload {sub}`", r.stdout + r.stderr)
        # The agent: API answers, metrics, log, process title.
        cfg = ctx.work / "secrets.yaml"
        cfg.write_text(f"models: [{DEMO_REPO_ID}, other-org/missing]\nverifyInterval: 1s\n")
        agent = AgentProc(ctx.work, hub.url, cfg, ctx.work / "secrets-agent", env={"HF_TOKEN": token})
        try:
            agent.start()
            bounded_poll(lambda: agent.get(f"/v1/models/{DEMO_REPO_ID}")[1].get("state") == "ready", 30, 0.1)
            bounded_poll(
                lambda: agent.get("/v1/models/other-org/missing")[1].get("state") == "failed", 30, 0.1
            )
            for p in (
                "/livez",
                "/readyz",
                "/metrics",
                "/v1/models",
                f"/v1/models/{DEMO_REPO_ID}",
                "/v1/models/other-org/missing",
                "/nope",
            ):
                check(f"agent {p}", json.dumps(agent.get(p)))
            assert agent.proc is not None
            check("the agent's /proc/PID/cmdline", Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes())
            check("the agent's log", agent.log_path.read_text())
        finally:
            agent.stop()
    for root in ctx.work.glob("s*"):
        for path in root.rglob("*") if root.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                check(f"file {path.name}", path.read_bytes())
    for path in (ctx.work / "secrets-cache").rglob("*"):
        if path.is_file() and not path.is_symlink():
            check(f"file {path}", path.read_bytes())
    del found
    row.notes.append(
        "HF_TOKEN and --token-file; hostile hub echoing the token in bodies/headers; "
        "user:pass in HF_ENDPOINT; "
        "CLI, verify, status, agent API/metrics/log; /proc/PID/cmdline; every file written"
    )
    return row
