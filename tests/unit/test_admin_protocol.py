"""The admin wire protocol: framing and validation, without sockets."""
import json

import pytest

from hagent.admin import protocol
from hagent.admin.protocol import ProtocolError


def test_request_round_trip_is_one_line():
    line = protocol.encode_request("segment.show", {"segment": "s1"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode_request(line) == protocol.Request("segment.show", {"segment": "s1"})


def test_newlines_inside_values_stay_escaped():
    line = protocol.encode({"ok": True, "result": "a\nb"})
    assert line.count(b"\n") == 1
    assert protocol.decode_reply(line)["result"] == "a\nb"


def test_args_default_to_empty():
    assert protocol.decode_request(b'{"verb": "status"}\n').args == {}
    assert protocol.decode_request(b'{"verb": "status", "args": null}').args == {}


@pytest.mark.parametrize("line, reason", [
    (b"not json\n", "not JSON"),
    (b"\xff\xfe\n", "not JSON"),
    (b"[1, 2]\n", "JSON object"),
    (b'{"args": {}}\n', "'verb'"),
    (b'{"verb": 3}\n', "'verb'"),
    (b'{"verb": ""}\n', "'verb'"),
    (b'{"verb": "status", "args": [1]}\n', "'args'"),
    (b'{"verb": "status", "extra": 1}\n', "unknown request keys: extra"),
])
def test_malformed_requests_are_refused_with_a_reason(line, reason):
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode_request(line)


def test_over_long_line_is_refused():
    line = json.dumps({"verb": "status", "args": {"x": "y" * protocol.MAX_LINE}}).encode()
    with pytest.raises(ProtocolError, match="longer than"):
        protocol.decode_request(line)


def test_replies():
    assert protocol.ok([1]) == {"ok": True, "result": [1]}
    assert protocol.error("no") == {"ok": False, "error": "no"}
    assert protocol.decode_reply(protocol.encode(protocol.error("no"))) == {"ok": False, "error": "no"}
    for bad in (b"{}", b'{"ok": "yes"}', b'{"ok": false}', b"nope"):
        with pytest.raises(ProtocolError):
            protocol.decode_reply(bad)
