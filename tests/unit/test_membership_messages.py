"""Wire format: decode() raises only DecodeError, and decode(encode(m)) == m."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hagent.membership import messages as M

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
addresses = st.from_regex(r"[\x21-\x7e]{1,40}", fullmatch=True)
incs = st.integers(min_value=0, max_value=M.MAX_INT)
metas = st.dictionaries(names, st.from_regex(r"[\x21-\x7e]{0,40}", fullmatch=True), max_size=3)
updates = st.one_of(
    st.builds(M.Alive, names, incs, addresses, metas),
    st.builds(M.Suspect, names, incs, names),
    st.builds(M.Dead, names, incs, names),
)
ups = st.lists(updates, max_size=5).map(tuple)
states = st.builds(M.MemberState, names, addresses, incs, st.sampled_from(M.STATES), metas)
messages = st.one_of(
    st.builds(M.Ping, names, addresses, incs, names, ups),
    st.builds(M.IndirectPing, names, addresses, incs, names, addresses, st.booleans(), ups),
    st.builds(M.Ack, names, addresses, incs, ups),
    st.builds(M.Nack, names, addresses, incs, ups),
    st.builds(M.PushPull, names, addresses, st.booleans(), st.booleans(),
              st.lists(states, max_size=5).map(tuple), ups),
    st.builds(M.Gossip, names, addresses, ups),
)


@settings(max_examples=300)
@given(messages)
def test_decode_of_encode_is_identity(msg: M.Message) -> None:
    assert M.decode(M.encode(msg)) == msg


def _decode_or_kind(data: bytes) -> str | None:
    try:
        M.decode(data)
    except M.DecodeError as exc:
        assert exc.kind in ("malformed", "version", "oversized")
        return exc.kind
    return None


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    _decode_or_kind(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64 - 1)
    | st.floats() | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=30)


@settings(max_examples=500)
@given(st.integers(min_value=1, max_value=6), msgpack_values, msgpack_values, msgpack_values)
def test_well_formed_msgpack_of_wrong_shape_raises_only_decode_error(kind, a, b, c) -> None:
    for body in ([1, kind, a, b, c], [1, kind, "n1", "n1", [], a, b, c], [1, kind, "n", "n", [a]],
                 [1, kind, "n", "n", [], a], [1, kind, "n", "n", [[0, "x", 1, "x", a]], 1, "t"]):
        try:
            data = msgpack.packb(body, use_bin_type=True)
        except (ValueError, OverflowError, TypeError):
            continue
        _decode_or_kind(data)


@settings(max_examples=200)
@given(messages, st.data())
def test_mutated_messages_raise_only_decode_error(msg: M.Message, data) -> None:
    raw = bytearray(M.encode(msg))
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[i] = data.draw(st.integers(min_value=0, max_value=255))
    _decode_or_kind(bytes(raw))
    _decode_or_kind(bytes(raw[:i]))


def test_version_and_size_are_reported_as_such() -> None:
    ping = M.Ping("a", "tcp://a:1", 1, "b")
    raw = msgpack.unpackb(M.encode(ping))
    raw[0] = 2
    assert _decode_or_kind(msgpack.packb(raw)) == "version"
    assert _decode_or_kind(M.encode(ping)) is None
    with pytest.raises(M.DecodeError) as exc:
        M.decode(M.encode(ping), max_bytes=10)
    assert exc.value.kind == "oversized"


@pytest.mark.parametrize("bad", [
    M.Ping("bad name", "a", 1, "b"),          # space in a name
    M.Ping("a", "a", 1, "-b"),                # name starting with a dash
    M.Ping("a", "", 1, "b"),                  # empty address
    M.Ping("a", "a", 1, "b", (M.Alive("c", 1, "c", {"key": "has space"}),)),
])
def test_invalid_fields_are_malformed(bad: M.Message) -> None:
    assert _decode_or_kind(M.encode(bad)) == "malformed"


def test_booleans_are_not_integers_and_integers_not_booleans() -> None:
    raw = msgpack.unpackb(M.encode(M.Ack("a", "a", 5)))
    raw[5] = True
    assert _decode_or_kind(msgpack.packb(raw)) == "malformed"
    raw = msgpack.unpackb(M.encode(M.IndirectPing("a", "a", 5, "b", "b", True)))
    raw[8] = 1
    assert _decode_or_kind(msgpack.packb(raw)) == "malformed"
