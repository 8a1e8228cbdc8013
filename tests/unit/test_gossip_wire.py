"""The gossip wire's receive path and key book, without sockets: whatever bytes arrive, the
receive path never raises, hands only valid messages on, and counts every drop by kind."""
from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from hagent.forward.keys import generate
from hagent.membership import messages
from hagent.membership.messages import Ack, Alive, Ping, PushPull, MemberState
from hagent.membership.shell import DROP_IN_KINDS, GossipWire, PeerKeys

LIMIT = 64 * 1024


def make_wire(received: list | None = None, on_message=None) -> GossipWire:
    sink = received if received is not None else []
    return GossipWire("127.0.0.1:1", generate(), [], {}, LIMIT, on_message or sink.append)


PING = Ping("node2", "127.0.0.1:7002", 7, "node1",
            (Alive("node3", 4, "127.0.0.1:7003", {"key": "k"}),))


def drops(wire: GossipWire) -> int:
    return sum(wire.dropped_in.values())


def test_a_valid_message_is_delivered_and_its_source_key_learned():
    got: list = []
    wire = make_wire(got)
    key = generate().public
    wire.keys.allowed = frozenset({key})
    wire.deliver(messages.encode(PING), peer_key=key)
    assert got == [PING] and wire.received == 1 and drops(wire) == 0
    assert wire.keys.key_for("127.0.0.1:7002") == key


def test_each_kind_of_bad_message_is_dropped_and_counted():
    got: list = []
    wire = make_wire(got)
    wire.deliver(b"\xc1")                                           # not msgpack
    wire.deliver(msgpack.packb([2, 1, "n", "a", [], 1, "t"]))       # another protocol version
    wire.deliver(b"\x00" * (LIMIT + 1))                             # over the size limit
    wire.deliver(msgpack.packb([1, 1, "bad name!", "a", [], 1, "t"]))
    assert got == [] and wire.received == 4
    assert wire.dropped_in == {"malformed": 2, "version": 1, "oversized": 1}


def test_a_core_that_raises_is_counted_internal_and_the_next_message_still_arrives():
    calls: list = []

    def on_message(msg):
        calls.append(msg)
        if len(calls) == 1:
            raise RuntimeError("core bug")

    wire = make_wire(on_message=on_message)
    wire.deliver(messages.encode(PING))
    wire.deliver(messages.encode(Ack("node2", "127.0.0.1:7002", 7)))
    assert len(calls) == 2 and wire.dropped_in == {"internal": 1}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise_and_every_drop_is_counted(data):
    got: list = []
    wire = make_wire(got)
    wire.deliver(data)
    assert wire.received == 1
    assert len(got) + drops(wire) == 1
    assert set(wire.dropped_in) <= set(DROP_IN_KINDS)


# msgpack documents shaped like messages (a version, a kind, then anything), so the fuzzer
# reaches the field checks and not only the msgpack parser.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64 - 1),
                     st.sampled_from(["node1", "127.0.0.1:7172", "bad name", "", "x" * 300]),
                     st.text(max_size=8), st.binary(max_size=8), st.just(1.5))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)


def _pack(doc):
    try:
        return msgpack.packb(doc, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return b"\xc1"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 1, 2]), st.integers(0, 8), st.lists(_values, max_size=8))
def test_message_shaped_junk_never_raises_and_every_drop_is_counted(version, kind, rest):
    got: list = []
    wire = make_wire(got)
    wire.deliver(_pack([version, kind, *rest]))
    assert len(got) + drops(wire) == 1
    if got:
        # whatever got through is a real message that survives a round trip
        assert messages.decode(messages.encode(got[0])) == got[0]


def test_push_pull_states_round_trip_through_the_wire():
    got: list = []
    wire = make_wire(got)
    msg = PushPull("node2", "127.0.0.1:7002", True, False,
                   (MemberState("node2", "127.0.0.1:7002", 1, "alive", {"key": "x"}),))
    wire.deliver(messages.encode(msg))
    assert got == [msg]


# --- the key book ---------------------------------------------------------------------------
def test_keys_seeds_are_fixed_and_learned_keys_must_be_allowed():
    allowed, stranger = generate().public, generate().public
    seed_key = generate().public
    keys = PeerKeys({"10.0.0.1:7172": seed_key}, frozenset({allowed}))
    assert keys.key_for("10.0.0.1:7172") == seed_key
    assert not keys.learn("10.0.0.1:7172", allowed)          # config wins for a seed
    assert keys.key_for("10.0.0.1:7172") == seed_key
    assert not keys.learn("10.0.0.2:7172", stranger)         # not in the allow-list
    assert keys.key_for("10.0.0.2:7172") is None
    assert keys.learn("10.0.0.2:7172", allowed)
    assert not keys.learn("10.0.0.2:7172", allowed)          # same key again: no change
    assert keys.key_for("10.0.0.2:7172") == allowed


def test_send_without_a_key_is_dropped_as_no_key():
    wire = make_wire()
    wire.send("127.0.0.1:9", PING)
    assert wire.dropped_out == {"no_key": 1} and wire.sent == 0
