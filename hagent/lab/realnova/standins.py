"""The image and network stand-ins: the smallest HTTP servers answering what Nova 34 asks
of Glance and Neutron when it boots, deletes and evacuates servers with ``networks='none'``
and the fake virt driver (REAL-NOVA.md). Recovery never touches either service.

- image: ``GET /`` (versions), ``GET /v2/schemas/image``, ``GET /v2/images/{id}`` for the one
  image the lab serves (``IMAGE_ID``), ``GET /v2/images``;
- network: ``GET /`` (versions), ``GET /v2.0/extensions`` (none), and an empty list for any
  other ``GET /v2.0/{resources}`` (ports, networks, security groups, ...).

Anything else is answered 404 and logged, so a Nova that starts asking more shows in the
supervisor's log.
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

IMAGE_ID = "8a4c1f6e-0b6b-4e8f-9d3a-6c1f2b7e5a01"
IMAGE_NAME = "lab-image"
_CREATED = "2026-01-01T00:00:00Z"

IMAGE = {
    "id": IMAGE_ID, "name": IMAGE_NAME, "status": "active", "visibility": "public",
    "protected": False, "os_hidden": False, "container_format": "bare",
    "disk_format": "raw", "size": 1024, "virtual_size": 1024, "min_disk": 0, "min_ram": 0,
    "checksum": None, "os_hash_algo": None, "os_hash_value": None, "owner": None,
    "tags": [], "created_at": _CREATED, "updated_at": _CREATED,
    "self": f"/v2/images/{IMAGE_ID}", "file": f"/v2/images/{IMAGE_ID}/file",
    "schema": "/v2/schemas/image",
}

_NULLABLE_STRING = {"type": ["null", "string"]}
IMAGE_SCHEMA = {
    "name": "image",
    "properties": {
        **{key: {"type": "string"} for key in (
            "id", "name", "status", "visibility", "container_format", "disk_format",
            "created_at", "updated_at", "self", "file", "schema")},
        **{key: _NULLABLE_STRING for key in (
            "checksum", "os_hash_algo", "os_hash_value", "owner")},
        **{key: {"type": ["null", "integer"]} for key in ("size", "virtual_size")},
        "min_disk": {"type": "integer"}, "min_ram": {"type": "integer"},
        "protected": {"type": "boolean"}, "os_hidden": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "locations": {"type": "array"},
    },
    "additionalProperties": {"type": "string"},
    "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
              {"rel": "describedby", "href": "{schema}"}],
}


def _image(path: str, base: str) -> tuple[int, Any]:
    if path in ("", "/"):
        return 300, {"versions": [{"id": "v2.16", "status": "CURRENT",
                                   "links": [{"rel": "self", "href": f"{base}/v2/"}]}]}
    if path == "/v2/schemas/image":
        return 200, IMAGE_SCHEMA
    if path == "/v2/images":
        return 200, {"images": [IMAGE], "schema": "/v2/schemas/images",
                     "first": "/v2/images"}
    if path == f"/v2/images/{IMAGE_ID}":
        return 200, IMAGE
    return 404, {"message": f"no image at {path}"}


def _network(path: str, base: str) -> tuple[int, Any]:
    if path in ("", "/"):
        return 200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                   "links": [{"rel": "self", "href": f"{base}/v2.0/"}]}]}
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "v2.0":
        resource = parts[1].removesuffix(".json")
        return 200, {resource: []}
    return 404, {"NeutronError": {"type": "HTTPNotFound", "message": f"no {path}",
                                  "detail": ""}}


SERVICES = {"image": _image, "network": _network}


class StandIn:
    """One stand-in (``kind``: image or network) on ``host:port``, served from a thread."""

    def __init__(self, kind: str, host: str, port: int) -> None:
        answer = SERVICES[kind]
        base = f"http://{host}:{port}"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body = answer(self.path.split("?", 1)[0], base)
                if status == 404:
                    log.warning("%s stand-in: unanswered GET %s", kind, self.path)
                self._reply(status, body)

            def _other(self) -> None:
                log.warning("%s stand-in: unanswered %s %s", kind, self.command, self.path)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._reply(404, {"message": f"{self.command} {self.path} not served"})

            do_POST = do_PUT = do_DELETE = do_PATCH = _other  # noqa: N815

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s stand-in: " + format, kind, *args)

        self.kind = kind
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name=f"standin-{kind}", daemon=True)

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
