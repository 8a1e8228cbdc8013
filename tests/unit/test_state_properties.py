"""Property tests: replicas agree, snapshots round-trip, apply never raises, host.down
and host.up store one STOPPED and one STARTED per incident, and recovery steps of a stale
term are refused.

Commands are drawn from small pools of names, uuids and values so that random sequences
mostly hit existing segments, hosts and notifications (and so exercise the real rules),
mixed with invalid values and junk.
"""
from __future__ import annotations

import copy

import msgpack
from hypothesis import given, settings, strategies as st

from consensus.model import NOTIFICATION_STATUSES, VMOVE_STATUSES
from consensus.state import ClusterState
from test_state_support import AT, uid

SEGMENTS = ["s1", "s2", uid("segment/s1"), "nope"]
HOSTS = ["h1", "h2", "h3", uid("host/h1"), "ghost"]
NOTES = [uid(f"n/{i}") for i in range(3)]
INCIDENT_NOTES = [uid(f"incident/{i}") for i in range(4)]
VMS = [uid(f"vm/{i}") for i in range(2)]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                     st.integers(), max_size=2))


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly valid values (commands have several arguments), sometimes junk."""
    return st.integers(0, 19).flatmap(lambda i: JUNK if i == 0 else valid)


def _uuid_of(kind: str, names: list[str]) -> st.SearchStrategy:
    return st.sampled_from([uid(f"{kind}/{n}") for n in names])


AT_S = _maybe(st.floats(min_value=AT, max_value=AT + 1000, allow_nan=False))
GEN_S = _maybe(st.integers(0, 600).map(lambda s: f"2024-05-01T10:{s // 60:02d}:{s % 60:02d}Z"))
PAYLOAD_S = _maybe(st.fixed_dictionaries(
    {"event": st.sampled_from(["STOPPED", "STARTED"])},
    optional={"host_status": st.sampled_from(["NORMAL", "UNKNOWN"])}))

_ALTERNATIVES = [
    st.fixed_dictionaries({
        "op": st.just("segment.create"), "at": AT_S,
        "uuid": _maybe(_uuid_of("segment", ["s1", "s2"])), "name": _maybe(st.sampled_from(SEGMENTS)),
        "recovery_method": _maybe(st.just("auto")), "service_type": _maybe(st.just("COMPUTE"))},
        optional={"enabled": _maybe(st.booleans())}),
    st.fixed_dictionaries({"op": st.just("segment.update"), "at": AT_S,
                           "segment": _maybe(st.sampled_from(SEGMENTS))},
                          optional={"name": _maybe(st.sampled_from(SEGMENTS)),
                                    "enabled": _maybe(st.booleans())}),
    st.fixed_dictionaries({"op": st.just("segment.delete"), "at": AT_S,
                           "segment": _maybe(st.sampled_from(SEGMENTS))}),
    st.fixed_dictionaries({
        "op": st.just("host.create"), "at": AT_S,
        "uuid": _maybe(_uuid_of("host", ["h1", "h2", "h3"])),
        "name": _maybe(st.sampled_from(HOSTS)), "type": _maybe(st.just("COMPUTE")),
        "control_attributes": _maybe(st.just("SSH")), "segment": _maybe(st.sampled_from(SEGMENTS))},
        optional={"on_maintenance": _maybe(st.booleans())}),
    st.fixed_dictionaries({"op": st.just("host.update"), "at": AT_S,
                           "host": _maybe(st.sampled_from(HOSTS))},
                          optional={"on_maintenance": _maybe(st.booleans()),
                                    "name": _maybe(st.sampled_from(HOSTS)),
                                    "segment": _maybe(st.sampled_from(SEGMENTS))}),
    st.fixed_dictionaries({"op": st.just("host.delete"), "at": AT_S,
                           "host": _maybe(st.sampled_from(HOSTS))}),
    *[st.fixed_dictionaries({
        "op": st.just("notification.submit"), "at": AT_S,
        "notification_uuid": _maybe(st.sampled_from(NOTES)),
        "type": _maybe(st.just("COMPUTE_HOST")),
        "hostname": _maybe(st.sampled_from(["h1", "h2", "h1", "h2", *HOSTS])),
        "generated_time": GEN_S, "payload": PAYLOAD_S, "source_node": _maybe(st.just("h2"))})] * 3,
    *[st.fixed_dictionaries({"op": st.just("notification.transition"), "at": AT_S,
                             "notification_uuid": _maybe(st.sampled_from(NOTES)),
                             "status": _maybe(st.sampled_from(NOTIFICATION_STATUSES))})] * 4,
    *[st.fixed_dictionaries({"op": st.just("notification.vmove"), "at": AT_S,
                             "notification_uuid": _maybe(st.sampled_from(NOTES)),
                             "instance_uuid": _maybe(st.sampled_from(VMS)),
                             "status": _maybe(st.sampled_from(VMOVE_STATUSES))})] * 3,
    *[st.fixed_dictionaries({
        "op": st.sampled_from(["host.down", "host.up"]), "at": AT_S,
        "hostname": _maybe(st.sampled_from(["h1", "h2", "h1", "ghost"])),
        "notification_uuid": _maybe(st.sampled_from(NOTES + INCIDENT_NOTES)),
        "generated_time": GEN_S, "source_node": _maybe(st.just("h3"))},
        optional={"previous": _maybe(st.sampled_from([None, *INCIDENT_NOTES])),
                  "incident": _maybe(st.sampled_from([None, *INCIDENT_NOTES]))})] * 3,
    *[st.fixed_dictionaries({
        "op": st.just("host.fenced"), "at": AT_S,
        "hostname": _maybe(st.sampled_from(["h1", "h2", "ghost"])),
        "method": _maybe(st.sampled_from(["lease", "ipmi", "redfish"])),
        "detail": _maybe(st.one_of(st.none(), st.text(max_size=5)))},
        optional={"incident": _maybe(st.sampled_from([None, *INCIDENT_NOTES]))})] * 2,
    st.fixed_dictionaries({"op": st.just("recovery.claim"), "at": AT_S,
                           "term": _maybe(st.integers(0, 3)),
                           "node": _maybe(st.sampled_from(["h1", "h2"]))}),
    *[st.fixed_dictionaries({
        "op": st.sampled_from(["recovery.intent", "recovery.result"]), "at": AT_S,
        "notification_uuid": _maybe(st.sampled_from(NOTES)),
        "step": _maybe(st.sampled_from(["force_down", "evacuate"])),
        "key": _maybe(st.sampled_from(["h1", VMS[0]])), "term": _maybe(st.integers(0, 3))},
        optional={"outcome": _maybe(st.sampled_from(["done", "failed", "skipped"])),
                  "detail": _maybe(st.one_of(st.none(), st.text(max_size=5)))})] * 3,
    st.fixed_dictionaries({"op": st.just("lease.renew"), "at": AT_S,
                           "hosts": _maybe(st.dictionaries(st.sampled_from(HOSTS[:3]),
                                                           st.integers(0, 5), max_size=3))}),
    st.dictionaries(st.sampled_from(["op", "at", "uuid", "name", "segment", "host", "hosts",
                                     "notification_uuid", "status", "payload"]),
                    st.one_of(JUNK, st.sampled_from(["segment.create", "lease.renew"])),
                    max_size=6),
    JUNK,
]
# Weighted by repetition: notification commands need several steps to reach deep states.
COMMANDS = st.sampled_from(_ALTERNATIVES).flatmap(lambda strategy: strategy)


# Applied first, so that random commands meet segments and hosts to act on.
SETUP = [
    {"op": "segment.create", "at": AT, "uuid": uid("segment/s1"), "name": "s1",
     "recovery_method": "auto", "service_type": "COMPUTE"},
    {"op": "host.create", "at": AT, "uuid": uid("host/h1"), "name": "h1", "type": "COMPUTE",
     "control_attributes": "", "segment": "s1"},
    {"op": "host.create", "at": AT, "uuid": uid("host/h2"), "name": "h2", "type": "COMPUTE",
     "control_attributes": "", "segment": "s1"},
]


def _apply_all(state: ClusterState, commands: list) -> list[dict]:
    answers = []
    for command in commands:
        answer = state.apply(command)
        assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool)
        answers.append(answer)
    return answers


@settings(max_examples=300, deadline=None)
@given(st.lists(COMMANDS, min_size=20, max_size=80))
def test_replicas_fed_the_same_commands_agree(commands):
    commands = SETUP + commands
    a, b = ClusterState(), ClusterState()
    answers_a = _apply_all(a, copy.deepcopy(commands))
    answers_b = _apply_all(b, copy.deepcopy(commands))
    assert answers_a == answers_b
    assert a == b
    assert a.counts_by_status() == b.counts_by_status()


@settings(max_examples=300, deadline=None)
@given(st.lists(COMMANDS, min_size=20, max_size=80))
def test_host_down_and_up_notifications_alternate_per_host(commands):
    """Exactly once: per host, the notifications host.down and host.up store alternate
    STOPPED, STARTED, STOPPED, ... whatever duplicates and stale resends come in between
    (a model of the incident checked against every answer). Deleting or renaming a host
    forgets incidents, so the model starts over then."""
    state = ClusterState()
    _apply_all(state, SETUP)
    open_incident: dict[str, bool] = {}
    for command in commands:
        before = state.notification_count()
        answer = state.apply(command)
        op = command.get("op") if isinstance(command, dict) else None
        if answer["ok"] and op in ("host.delete", "host.update"):
            open_incident.clear()
        stored = state.notification_count() - before
        if op == "host.down" and stored:
            assert stored == 1 and not open_incident.get(command["hostname"])
            open_incident[command["hostname"]] = True
        if op == "host.up" and stored:
            assert stored == 1 and open_incident.get(command["hostname"], True)
            open_incident[command["hostname"]] = False
        if op in ("host.down", "host.up") and answer["ok"] and answer["result"] is not None:
            record = state.incident(command["hostname"])
            assert answer["result"]["hostname"] == record["hostname"]


@settings(max_examples=300, deadline=None)
@given(st.lists(COMMANDS, min_size=20, max_size=80), st.lists(COMMANDS, max_size=10))
def test_restore_of_snapshot_equals_state_and_continues_alike(commands, more):
    state = ClusterState()
    _apply_all(state, SETUP + commands)
    restored = ClusterState.from_snapshot(msgpack.unpackb(msgpack.packb(state.to_snapshot())))
    assert restored == state
    assert _apply_all(restored, copy.deepcopy(more)) == _apply_all(state, copy.deepcopy(more))
    assert restored == state
    assert restored.list_notifications() == state.list_notifications()


@settings(max_examples=500, deadline=None)
@given(st.one_of(COMMANDS, st.dictionaries(st.text(max_size=10), JUNK, max_size=8)))
def test_apply_never_raises_and_refusals_change_nothing(command):
    state = ClusterState()
    _apply_all(state, SETUP)
    before = state.canonical()
    answer = state.apply(command)
    assert answer["ok"] in (True, False)
    if answer["ok"]:
        assert set(answer) == {"ok", "result"}
    else:
        assert set(answer) == {"ok", "error"} and isinstance(answer["error"], str)
        assert "internal error" not in answer["error"]
        assert state.canonical() == before
