"""Fixtures of the cluster tests: a real single-node Kubernetes (scripts/cluster.sh) and its tools.

The fixture `cluster` runs `scripts/cluster.sh up` (a cold build of the Kubernetes binary
takes a while; later runs reuse .cluster/go), loads the image scripts/build-image.sh builds and
a vLLM stand-in image into the node's containerd, and runs `scripts/cluster.sh down` after the
module's last test, whatever happened. Where the cluster cannot come up (not root, no Go, a
sandbox without what the kubelet needs) the tests skip with the reason, or fail when
MODEL_CACHE_TEST_REQUIRE names `cluster` (tests/conftest.py).

Pods reach the host at the bridge gateway (GATEWAY): the test hub listens there, never on a
non-local address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import tool_unavailable

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster.sh"
CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", REPO / ".cluster"))
IMAGE = "localhost/model-cache:dev"
STANDIN_IMAGE = "localhost/vllm-standin:test"
GATEWAY = "10.244.0.1"  # the bridge's address on the host: the node IP, cluster DNS, the test hub
NODE = "gpu-node-1"
PODMAN = ["podman", "--runtime", "runc"]

# The vLLM stand-in: opens every *.safetensors file of the model directory (argv[1], or the
# snapshot of argv[1]'s repo in HF_HUB_CACHE with --hf-cache) read-only with safetensors,
# reads each tensor, says so, then answers GET /health on port 8000 like vLLM's server.
STANDIN = r"""
import glob, os, sys
from safetensors import safe_open
target = sys.argv[1]
if len(sys.argv) > 2 and sys.argv[2] == "--hf-cache":
    from huggingface_hub import snapshot_download
    target = snapshot_download(target, local_files_only=True)
files = sorted(glob.glob(os.path.join(target, "**", "*.safetensors"), recursive=True))
assert files, f"no *.safetensors under {target}"
count = 0
for path in files:
    with safe_open(path, framework="numpy") as weights:
        for key in weights.keys():
            weights.get_tensor(key)
            count += 1
print(f"standin: loaded {count} tensors from {len(files)} file(s) under {target}", flush=True)
from http.server import BaseHTTPRequestHandler, HTTPServer
class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("0.0.0.0", 8000), Health).serve_forever()
"""


@dataclass
class Cluster:
    """The running cluster: its kubeconfig and the tools that talk to it."""

    kubeconfig: Path
    kubectl: str
    helm: str
    up_seconds: float

    def env(self) -> dict[str, str]:
        """The environment for kubectl and helm: this cluster, helm's state in a private dir."""
        home = CLUSTER_DIR / "state" / "helm"
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def kubectl_run(
        self, *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """kubectl ARGS; never raises on a non-zero exit."""
        return subprocess.run(
            [self.kubectl, *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=self.env(),
        )

    def kubectl_ok(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        """kubectl ARGS; its stdout, failing the test on a non-zero exit."""
        proc = self.kubectl_run(*args, input=input, timeout=timeout)
        assert proc.returncode == 0, f"kubectl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def get(self, *args: str) -> dict[str, Any]:
        """kubectl get ARGS -o json, parsed."""
        doc: dict[str, Any] = json.loads(self.kubectl_ok("get", *args, "-o", "json"))
        return doc

    def apply(self, docs: list[dict[str, Any]], *extra: str) -> subprocess.CompletedProcess[str]:
        """Server-side apply of these documents; the finished kubectl."""
        text = yaml.safe_dump_all(docs)
        return self.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", "-", *extra, input=text)

    def helm_run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """helm ARGS against this cluster; never raises on a non-zero exit."""
        return subprocess.run(
            [self.helm, *args], capture_output=True, text=True, check=False, timeout=timeout, env=self.env()
        )

    def events(self, namespace: str) -> str:
        """The namespace's events, one per line (for failure messages and checks)."""
        return self.kubectl_run("get", "events", "-n", namespace, "--sort-by=.lastTimestamp").stdout


def _tools() -> tuple[str, str]:
    """helm and kubectl from scripts/install-helm.sh."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-helm.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        tool_unavailable(
            "cluster", f"no helm/kubectl (scripts/install-helm.sh): {proc.stderr.strip()[-300:]}"
        )
    tools = Path(proc.stdout.strip().splitlines()[-1])
    return str(tools / "helm"), str(tools / "kubectl")


def _problem() -> str | None:
    """Why this machine cannot run the cluster at all, or None."""
    if os.geteuid() != 0:
        return "the test cluster needs root (kubelet, containerd, iptables)"
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        return "no Go toolchain to build Kubernetes with"
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        return "no podman to build the images with"
    return None


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"/usr/local/go/bin:{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=timeout, env=env
    )


def _build_image() -> None:
    """localhost/model-cache:dev, as the image tests build it (idempotent, cached layers)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image.sh"), IMAGE],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def _python_of(image: str) -> str:
    out = subprocess.run(
        [
            *PODMAN,
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python3",
            image,
            "-c",
            "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _build_standin(work: Path) -> None:
    """The vLLM stand-in: the preloader image plus safetensors and numpy (wheels unpacked on
    the host: builds cannot reach a registry) and STANDIN as /standin.py. No RUN step."""
    version = _python_of(IMAGE)
    wheels = work / "wheels"
    site = work / "ctx" / "site"
    wheels.mkdir(parents=True, exist_ok=True)
    site.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(wheels),
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            version,
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "safetensors",
            "numpy",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    (work / "ctx" / "standin.py").write_text(STANDIN)
    (work / "ctx" / "Containerfile").write_text(
        f"FROM {IMAGE}\nCOPY site /opt/standin\nCOPY standin.py /standin.py\n"
        'ENV PYTHONPATH=/opt/standin\nENTRYPOINT ["python3", "/standin.py"]\n'
    )
    out = subprocess.run(
        [*PODMAN, "build", "-q", "-t", STANDIN_IMAGE, str(work / "ctx")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr


# Module scope (one module uses it): the cluster goes down after test_cluster.py, not at the end
# of the whole session, so it never runs alongside the rest of the suite.
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """`scripts/cluster.sh up`, the images loaded; `scripts/cluster.sh down` at the end."""
    problem = _problem()
    if problem:
        tool_unavailable("cluster", problem)
    helm, kubectl = _tools()
    _build_image()
    _build_standin(tmp_path_factory.mktemp("standin"))
    started = time.monotonic()
    try:
        up = _script("up", timeout=3600)
        up_seconds = time.monotonic() - started
        sys.stderr.write(f"\ncluster.sh up took {up_seconds:.0f}s:\n{up.stderr[-600:]}\n")
        if up.returncode != 0:
            tool_unavailable("cluster", f"scripts/cluster.sh up failed:\n{up.stderr[-4000:]}")
        for image in (IMAGE, STANDIN_IMAGE):
            load = _script("load-image", image, timeout=600)
            assert load.returncode == 0, load.stderr
        kubeconfig = Path(_script("kubeconfig", timeout=30).stdout.strip())
        yield Cluster(kubeconfig, kubectl, helm, up_seconds)
    finally:
        down = _script("down", timeout=600)
        if down.returncode != 0:
            sys.stderr.write(f"scripts/cluster.sh down failed:\n{down.stderr[-3000:]}\n")
