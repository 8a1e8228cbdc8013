"""The forward wire codec, without sockets: round trips, and every kind of bad message
raising its typed error (whose reason labels the drop counter)."""
from __future__ import annotations

import msgpack
import pytest

from hagent.forward import protocol as p
from hagent.forward.keys import generate, read_key_pair, write_key_pair, z85_problem
from hagent.queries import QueryError, run_query
from hagent.secretfile import SecretFileError

COMMAND = {"op": "notification.submit", "notification_uuid": "u", "payload": {"a": [1, 2.5, None]}}


def raw(**doc):
    return msgpack.packb({"v": p.VERSION, "id": 1, **doc}, use_bin_type=True)


@pytest.mark.parametrize("request_", [
    p.Propose(7, COMMAND),
    p.Query(8, "list_notifications", {"filters": {"status": "new"}, "limit": 5}),
    p.Query(9, "counts_by_status", {}),
    p.Status(p.MAX_ID),
])
def test_requests_round_trip(request_):
    assert p.decode_request(p.encode_request(request_)) == request_


@pytest.mark.parametrize("reply", [
    p.Reply(id=3, ok=True, result={"ok": True, "result": {"x": 1}}, leader="h:1", voter="h:2"),
    p.Reply(id=3, ok=True, result=None),
    p.failure(4, "no leader", p.CODE_UNAVAILABLE, retryable=True, voter="h:2"),
    p.failure(5, "bad limit", p.CODE_QUERY, retryable=False, leader="h:1"),
    p.failure(6, "refused: host.fenced ...", p.CODE_FORBIDDEN, retryable=False),
])
def test_replies_round_trip(reply):
    assert p.decode_reply(p.encode_reply(reply)) == reply


@pytest.mark.parametrize("data, error", [
    (b"\xc1", p.MalformedMessage),                               # never-used msgpack byte
    (b"", p.MalformedMessage),
    (msgpack.packb([1, 2]), p.MalformedMessage),                 # not a map
    (msgpack.packb({"id": 1, "kind": "status"}), p.MalformedMessage),          # no version
    (msgpack.packb({"v": "1", "id": 1, "kind": "status"}), p.MalformedMessage),
    (msgpack.packb({"v": 2, "id": 1, "kind": "status"}), p.UnsupportedVersion),
    (msgpack.packb({"v": 0, "id": 1, "kind": "status"}), p.UnsupportedVersion),
    (raw(kind="status", extra=1), p.MalformedMessage),           # unknown key
    (raw(kind="launch"), p.MalformedMessage),                    # unknown kind
    (raw(kind="propose"), p.MalformedMessage),                   # no command
    (raw(kind="propose", command={"no": "op"}), p.MalformedMessage),
    (raw(kind="propose", command={"op": "x", "t": msgpack.ExtType(5, b"x")}), p.MalformedMessage),
    (raw(kind="propose", command={"op": "x", "b": b"bytes"}), p.MalformedMessage),
    (raw(kind="propose", command={"op": "x", "f": float("nan")}), p.MalformedMessage),
    (raw(kind="query", name="apply", kwargs={}), p.MalformedMessage),      # not whitelisted
    (raw(kind="query", name="_segments", kwargs={}), p.MalformedMessage),
    (raw(kind="query", name="get_host", kwargs=[]), p.MalformedMessage),
    (msgpack.packb({"v": 1, "id": 0, "kind": "status"}), p.MalformedMessage),  # id out of range
    (msgpack.packb({"v": 1, "id": True, "kind": "status"}), p.MalformedMessage),
    (msgpack.packb({"v": 1, "id": 1, "kind": "status"}) + b"\x00", p.MalformedMessage),  # trailing
    (b"\x00" * (p.MAX_REQUEST_BYTES + 1), p.MessageTooLarge),
])
def test_bad_requests_raise_typed_errors(data, error):
    with pytest.raises(error) as info:
        p.decode_request(data)
    assert info.value.reason in p.DROP_REASONS
    assert type(info.value).reason == error.reason


def test_deep_nesting_is_refused():
    deep: dict = {"op": "x"}
    node = deep
    for _ in range(p.MAX_DEPTH + 2):
        node["d"] = {}
        node = node["d"]
    with pytest.raises(p.MalformedMessage, match="nested deeper"):
        p.decode_request(raw(kind="propose", command=deep))


def test_encoding_refuses_what_decoding_would():
    with pytest.raises(p.MalformedMessage):
        p.encode_request(p.Query(1, "apply", {}))
    with pytest.raises(p.MessageTooLarge):
        p.encode_request(p.Propose(1, {"op": "x", "blob": "y" * p.MAX_REQUEST_BYTES}))
    with pytest.raises(p.MalformedMessage):
        p.encode_request(p.Status(0))


def test_bad_replies_raise_typed_errors():
    for doc in ({"v": 1, "id": 1}, {"v": 1, "id": 1, "ok": False, "error": "x"},
                {"v": 1, "id": 1, "ok": False, "error": "x", "code": "what", "retryable": True},
                {"v": 1, "id": 1, "ok": True, "leader": 5}):
        with pytest.raises(p.MalformedMessage):
            p.decode_reply(msgpack.packb(doc))
    with pytest.raises(p.UnsupportedVersion):
        p.decode_reply(msgpack.packb({"v": 9, "id": 1, "ok": True}))


def test_an_oversized_or_unpackable_answer_becomes_a_failure_with_the_same_id(monkeypatch):
    monkeypatch.setattr(p, "MAX_REPLY_BYTES", 300)
    reply = p.decode_reply(p.encode_reply(p.Reply(id=9, ok=True, result="x" * 400)))
    assert (reply.id, reply.ok, reply.code, reply.retryable) == (9, False, p.CODE_TOO_LARGE, False)
    reply = p.decode_reply(p.encode_reply(p.Reply(id=10, ok=True, result=object())))
    assert (reply.id, reply.ok, reply.code) == (10, False, p.CODE_INTERNAL)


def test_run_query_runs_only_whitelisted_names_with_their_arguments():
    from consensus.state import ClusterState

    state = ClusterState()
    assert run_query(state, "notification_count", {}) == 0
    assert run_query(state, "get_segment", {"ref": "nope"}) is None
    with pytest.raises(QueryError, match="unknown query"):
        run_query(state, "apply", {"command": {}})
    with pytest.raises(QueryError, match="get_segment"):
        run_query(state, "get_segment", {"bogus": 1})
    with pytest.raises(QueryError):
        run_query(state, "list_notifications", {"sort_dir": "sideways"})


def test_the_recovery_claim_is_a_forwarded_read():
    from consensus.state import ClusterState

    state = ClusterState()
    assert p.decode_request(p.encode_request(p.Query(1, "recovery_claim", {}))).name == \
        "recovery_claim"
    assert run_query(state, "recovery_claim", {}) is None
    state.apply({"at": 1_700_000_000.0, "op": "recovery.claim", "term": 7, "node": "v1"})
    assert run_query(state, "recovery_claim", {}) == {
        "term": 7, "node": "v1", "claimed_at": "2023-11-14T22:13:20.000000+00:00"}


@pytest.mark.parametrize("op", sorted(p.VOTER_ONLY_OPS))
def test_detection_and_recovery_ops_are_refused_from_non_voters(op):
    reason = p.forward_refusal({"op": op})
    assert reason is not None and op in reason and "non-voter" in reason


def test_a_non_voter_may_not_submit_a_compute_host_notification():
    assert "COMPUTE_HOST" in p.forward_refusal({"op": "notification.submit",
                                                "type": "COMPUTE_HOST"})
    for command in ({"op": "notification.submit", "type": "VM"},
                    {"op": "notification.submit", "type": "PROCESS"},
                    {"op": "lease.renew", "hosts": {"cn1": 3}},
                    {"op": "host.update", "host": "cn1", "on_maintenance": False},
                    {"op": "segment.create"}, {"op": "no.such.op"}):
        assert p.forward_refusal(command) is None, command


def test_a_frame_without_zap_metadata_has_an_unknown_peer():
    import zmq

    from hagent.forward.server import _peer_key

    assert _peer_key(zmq.Frame(b"x")) == "(unknown)"


def test_key_pair_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "node.key"
    pair = write_key_pair(path)
    assert read_key_pair(path) == pair and z85_problem(pair.public) is None
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(SecretFileError, match="already exists"):
        write_key_pair(path)
    path.chmod(0o640)
    with pytest.raises(SecretFileError, match="mode 0640"):
        read_key_pair(path)
    path.chmod(0o600)
    other = generate()
    path.write_text(f'public = "{other.public}"\nsecret = "{pair.secret}"\n')
    with pytest.raises(SecretFileError, match="does not belong"):
        read_key_pair(path)
    path.write_text('public = "short"\n')
    with pytest.raises(SecretFileError, match="40"):
        read_key_pair(path)
    with pytest.raises(SecretFileError, match="hagent keygen --out"):
        read_key_pair(tmp_path / "missing.key")


def test_hagent_keygen_writes_the_pair_and_prints_the_public_key(tmp_path, capsys):
    from hagent.cli import main

    path = tmp_path / "node.key"
    assert main(["keygen", "--out", str(path)]) == 0
    public = capsys.readouterr().out.strip()
    assert read_key_pair(path).public == public and path.stat().st_mode & 0o777 == 0o600
    assert main(["keygen", "--out", str(path)]) == 1  # never silently replaces a key
    assert "already exists" in capsys.readouterr().err
    assert main(["keygen", "--out", str(path), "--force"]) == 0
    assert capsys.readouterr().out.strip() != public


KEY_A = "6Dh>1]T/*wB24WZW*]UGy){}I0ML[F{%IDv)4%1<"
KEY_B = "NkIz@ym?%?57[]mjkC-LpcX)Kw.9fk(t-9kn#&mT"


def test_voter_set_changes_are_voter_only_and_self_ops_pass_the_generic_check():
    for op in ("voters.change", "voters.commit", "voters.abort", "voters.bootstrap"):
        assert op in p.VOTER_ONLY_OPS and "non-voter" in p.forward_refusal({"op": op})
    for op in p.SELF_VOTER_OPS:
        assert p.forward_refusal({"op": op, "node": "n4"}) is None
    assert "voters" in p.QUERY_NAMES


def test_a_non_voter_registers_only_itself_with_its_own_key():
    register = {"op": "voters.register", "node": "n4", "raft_address": "10.0.0.4:7170",
                "forward_address": "10.0.0.4:7171", "public_key": KEY_A, "failure_domain": ""}
    assert p.self_op_refusal(register, KEY_A, None) is None          # first registration
    assert p.self_op_refusal(register, KEY_A, KEY_A) is None         # idempotent again
    assert "not the key" in p.self_op_refusal(register, KEY_B, None)  # someone else's key
    # Taking over a name registered with another key (e.g. a voter's) is refused.
    hijack = {**register, "node": "n1", "public_key": KEY_B}
    assert "registered with another public key" in p.self_op_refusal(hijack, KEY_B, KEY_A)


def test_progress_reports_come_only_from_the_key_their_node_registered():
    progress = {"op": "voters.progress", "node": "n4", "applied": 10, "leader_commit": 12}
    assert p.self_op_refusal(progress, KEY_A, KEY_A) is None
    assert "not the one" in p.self_op_refusal(progress, KEY_B, KEY_A)
    assert "not the one" in p.self_op_refusal(progress, KEY_A, None)  # never registered
