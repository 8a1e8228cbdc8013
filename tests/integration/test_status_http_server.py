"""The status endpoint over real HTTP on loopback: codes, bodies, content types."""
import http.client
import json
import socket

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from hagent import status_http
from tests.fakes import FakeNode


@pytest.fixture
def node():
    return FakeNode()


@pytest.fixture
def endpoint(node):
    server = status_http.start(node, "127.0.0.1:0")
    yield server
    server.stop()


def get(server, path, method="GET"):
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_status(endpoint, node):
    code, headers, body = get(endpoint, "/status")
    assert code == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["node"] == "node-1" and doc["role"] == "leader" and doc["term"] == 4
    assert doc["notifications"]["new"] == 0


def test_health_follows_the_node(endpoint, node):
    code, _, body = get(endpoint, "/health")
    assert code == 200 and json.loads(body)["healthy"] is True
    node.healthy, node.health_reason = False, "applied index 150 entries behind commit (max 100)"
    code, _, body = get(endpoint, "/health")
    assert code == 503
    assert json.loads(body) == {"node": "node-1", "healthy": False,
                                "reason": "applied index 150 entries behind commit (max 100)"}


def test_leader_is_200_only_on_the_leader(endpoint, node):
    assert get(endpoint, "/leader")[0] == 200
    node.leader = False
    code, _, body = get(endpoint, "/leader")
    assert code == 503 and json.loads(body)["leader"] is False


def test_metrics_parse(endpoint, node):
    code, headers, body = get(endpoint, "/metrics")
    assert code == 200 and headers["Content-Type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["hagent_raft_term"].samples[0].value == 4
    assert families["hagent_raft_is_leader"].samples[0].value == 1
    assert {s.labels["status"] for s in families["hagent_notifications"].samples} >= {
        "new", "running", "error", "failed", "ignored", "finished"}
    assert "hagent_admin_requests" in families  # counters declared even before any request


def test_head_has_headers_but_no_body(endpoint):
    code, headers, body = get(endpoint, "/status", "HEAD")
    assert code == 200 and int(headers["Content-Length"]) > 0 and body == b""


def test_query_string_is_ignored(endpoint):
    assert get(endpoint, "/leader?probe=lb")[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_are_405(endpoint, method):
    code, headers, _ = get(endpoint, "/status", method)
    assert code == 405 and headers["Allow"] == "GET, HEAD"


def test_unknown_path_is_404(endpoint):
    code, _, body = get(endpoint, "/admin")
    assert code == 404 and "/status" in json.loads(body)["error"]


def test_a_failing_read_is_500_and_the_endpoint_lives_on(endpoint, node, monkeypatch):
    monkeypatch.setattr(node, "status", lambda: 1 / 0)
    code, _, body = get(endpoint, "/status")
    assert code == 500 and "ZeroDivisionError" in json.loads(body)["error"]
    assert get(endpoint, "/leader")[0] == 200


def test_stop_releases_the_port(node):
    server = status_http.start(node, "127.0.0.1:0")
    host, port = server.address
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()


def test_port_in_use_fails_start(endpoint, node):
    host, port = endpoint.address
    with pytest.raises(OSError):
        status_http.start(FakeNode("node-2"), f"{host}:{port}")


def test_ipv6_loopback(node):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = status_http.start(node, "[::1]:0")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        assert get(server, "/leader")[0] == 200
    finally:
        server.stop()
