"""A faithful loopback hub with fault injection, and the demo model (development only; not in the image).

Modules, each depending only on those listed before it:
  repo        HubFile, HubRepo: what the hub serves
  faults      Fault and the queue of pending faults
  requestlog  RequestRecord and the request log
  replies     status + headers + body; byte ranges
  handler     the HTTP/1.1 I/O: threading server, handler, fault effects on the wire
  cdn         the CDN origin's signed blob URLs
  routes      the hub's API, resolve and CDN answers
  server      HubServer, putting them together
  demo_model  the tiny deterministic demo model; demo: `preload demo`
  __main__    `python -m agent.devhub --serve-dir DIR | --demo`

The names tests and benchmarks use are re-exported here.
"""

from agent.devhub.faults import Fault
from agent.devhub.replies import parse_range
from agent.devhub.repo import HubFile, HubRepo, directory_repo, export_lfs_blobs, git_blob_sha1
from agent.devhub.requestlog import RequestRecord
from agent.devhub.server import DEFAULT_TOKEN, HubServer

__all__ = [
    "DEFAULT_TOKEN",
    "Fault",
    "HubFile",
    "HubRepo",
    "HubServer",
    "RequestRecord",
    "directory_repo",
    "export_lfs_blobs",
    "git_blob_sha1",
    "parse_range",
]
