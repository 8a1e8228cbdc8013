"""Membership: SWIM with Lifeguard, sans-IO (see docs/membership.md).

``Membership`` (swim.py) is the protocol state machine; shells (ZeroMQ in the agent, the
simulator in tests and benchmarks) feed it decoded messages and ``now`` and carry out the
``Output`` it returns.
"""

from .events import (Event, MemberAlive, MemberDead, MemberLeft, MemberRefuted, MemberSuspect,
                     MemberUpdated)
from .knobs import KnobError, MembershipKnobs
from .members import MemberView
from .messages import (PROTOCOL_VERSION, Ack, Alive, Dead, DecodeError, Gossip, IndirectPing,
                       MemberState, Message, Nack, Ping, PushPull, Suspect, Update, decode, encode)
from .swim import Membership, Output

__all__ = [
    "Ack", "Alive", "Dead", "DecodeError", "Event", "Gossip", "IndirectPing", "KnobError",
    "MemberAlive", "MemberDead", "MemberLeft", "MemberRefuted", "MemberState", "MemberSuspect",
    "MemberUpdated", "MemberView", "Membership", "MembershipKnobs", "Message", "Nack",
    "PROTOCOL_VERSION", "Ping", "PushPull", "Suspect", "Update", "decode", "encode", "Output",
]
