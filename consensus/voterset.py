"""The voter set as replicated state: who votes, who may be promoted, and the one membership
change in flight (docs/raft.md, "Membership changes"; issue 8).

Commands (besides ``op`` and ``at``) and what ``apply`` returns as ``result``:

    voters.register  {node, raft_address, forward_address, public_key, failure_domain?}
                     -> the registration {node, raft_address, forward_address, public_key,
                        failure_domain, registered_at}
    voters.bootstrap {voters: [raft_address, ...]} -> {changed: bool, voters: [...]}
    voters.change    {change: "add"|"remove", node, term, auto?: bool, leader?: node}
                     -> the change {op, node, address, phase, term, started_at, auto, progress}
    voters.progress  {node, applied, leader_commit} -> the change, progress {applied,
                        leader_commit, lag, at}
    voters.commit    {change: "add"|"remove", node, term} -> the last change {op, node,
                        address, result: "committed", reason: None, term, at, auto}
    voters.abort     {node, reason, term?} -> the last change (result "aborted")
    query ClusterState.voters() -> {voters: [{node|None, raft_address, forward_address,
        public_key, failure_domain}], registry: {node: registration}, change: None|change,
        last_change: None|last change, bootstrapped: bool, term: int}

A command's ``op`` names the command, so the kind of change travels as ``change``; in the
records (``change``, ``last_change``) it is ``op``. ``node`` is a registered node name; a
remove may also name a voter by its Raft address (a voter that never registered).

pysyncobj's own membership entries decide who counts toward quorum; this record is what hagent
knows *about* the voters (node names, forward endpoints, keys, failure domains) and the
protocol around each change, so that any leader can see a half-done change and finish or
abort it. One change at a time: change -> (progress ...) -> commit, or abort.

``voters.register`` records an eligible node (idempotent); ``voters.bootstrap`` sets the voter
set once, from the first leader's effective set. Times (``started_at``, ``at``) are the
proposer's UNIX times as floats: code compares them (is a progress report fresh?).

Like ``ClusterState``, every method checks all its arguments before it changes anything and
raises ``CommandError`` with the reason; nothing here reads a clock or does I/O.

Term stamps: ``term`` is the Raft term of the leader proposing. The set keeps the highest term
any change, commit or abort carried; an older one is refused (``stale term``), so a deposed
leader cannot commit or abort what a newer leader took over. A newer leader may commit or
abort a change an older one started (recovery of a half-done change).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from consensus import validate as v
from consensus.model import STALE_TERM
from consensus.validate import CommandError

#: Voters left after a remove: an operator's change keeps at least 3 (one failure tolerated);
#: the autopilot may go to 2 for the moment between removing a dead voter and adding its
#: replacement (it removes first so that the dead voter stops counting toward quorum).
MIN_VOTERS_MANUAL = 3
MIN_VOTERS_AUTO = 2
#: Longest abort reason kept.
REASON_MAX = 1000
PHASES = {"add": "catching_up", "remove": "removing"}


@dataclass
class Registration:
    """An eligible node: it may be promoted to voter (``voters.register``)."""

    node: str
    raft_address: str
    forward_address: str
    public_key: str
    failure_domain: str
    registered_at: float

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VoterChange:
    """The one change in flight."""

    op: str                 # add | remove
    node: str               # as the change named it: a registered name, or a voter's address
    address: str            # its Raft address
    phase: str              # catching_up (add) | removing (remove)
    term: int
    started_at: float
    auto: bool              # proposed by the autopilot (False: an operator)
    progress: dict[str, Any] | None = None  # {applied, leader_commit, lag, at}

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["progress"] = None if self.progress is None else dict(self.progress)
        return out


@dataclass
class LastChange:
    """How the last change ended."""

    op: str
    node: str
    address: str
    result: str             # committed | aborted
    reason: str | None
    term: int
    at: float
    auto: bool

    def record(self) -> dict[str, Any]:
        return asdict(self)


class VoterSet:
    """The replicated voter set; owned by ``ClusterState`` (ops ``voters.*``, query ``voters``)."""

    def __init__(self) -> None:
        self.voters: list[str] = []                  # Raft addresses, in the order they joined
        self.registry: dict[str, Registration] = {}  # node name -> registration
        self.change: VoterChange | None = None
        self.last_change: LastChange | None = None
        self.term = 0                                # highest term of a change, commit, abort

    # ------------------------------------------------------------------ ops

    def register(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Record (or update) an eligible node. A Raft address belongs to one node; a node that
        votes, or is the target of the change in flight, keeps its Raft address (the voter set
        is a set of addresses: remove it first)."""
        v.check_keys(cmd, ("node", "raft_address", "forward_address", "public_key"),
                     ("failure_domain",))
        reg = Registration(
            node=v.name(cmd["node"], "node"),
            raft_address=v.address(cmd["raft_address"], "raft_address"),
            forward_address=v.address(cmd["forward_address"], "forward_address"),
            public_key=v.name(cmd["public_key"], "public_key"),
            failure_domain=_domain(cmd.get("failure_domain", "")),
            registered_at=at)
        owner = self._owner(reg.raft_address)
        if owner is not None and owner != reg.node:
            raise CommandError(f"raft address {reg.raft_address} is registered to node {owner}")
        old = self.registry.get(reg.node)
        if old is not None and old.raft_address != reg.raft_address:
            busy = self._busy(old.raft_address)
            if busy:
                raise CommandError(f"node {reg.node} {busy} at {old.raft_address}; it keeps that "
                                   f"raft address until it is removed")
        if old is not None and _same(old, reg):
            return old.record()  # a resend: keep the first registration time
        self.registry[reg.node] = reg
        return reg.record()

    def bootstrap(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Set the voter set once (the first leader proposes its effective set); later ones
        change nothing and say so (``changed`` false), so every new leader may propose it."""
        v.check_keys(cmd, ("voters",))
        raw = cmd["voters"]
        if not isinstance(raw, list) or not raw:
            raise CommandError(f"argument 'voters' must be a non-empty list of host:port "
                               f"addresses (got {v.show(raw)})")
        voters = [v.address(a, "voters") for a in raw]
        if len(set(voters)) != len(voters):
            raise CommandError(f"argument 'voters' lists an address twice ({v.show(raw)})")
        if self.voters:
            return {"changed": False, "voters": list(self.voters)}
        self.voters = voters
        return {"changed": True, "voters": list(self.voters)}

    def start_change(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Start adding or removing a voter; refused (nothing changed) for an unknown node, an
        add of a voter or a remove of a non-voter, a change already in flight, a stale term,
        a remove of the leader itself (``leader``: the proposing node) or one that would
        leave fewer than ``MIN_VOTERS_MANUAL`` voters (``MIN_VOTERS_AUTO`` with ``auto``).
        The same change resent (same op, node and term) returns it unchanged."""
        v.check_keys(cmd, ("change", "node", "term"), ("auto", "leader"))
        # The command's "op" is "voters.change"; the kind of change travels as "change".
        op = v.choice(cmd["change"], "change", tuple(PHASES))
        node = v.name(cmd["node"], "node")
        term = self._check_term(cmd["term"])
        auto = v.boolean(cmd.get("auto", False), "auto")
        leader = v.name(cmd["leader"], "leader") if cmd.get("leader") is not None else None
        if not self.voters:
            raise CommandError("the voter set is not bootstrapped yet (voters.bootstrap first)")
        current = self.change
        if current is not None:
            if (current.op, current.node, current.term) == (op, node, term):
                return current.record()
            raise CommandError(f"another change is in flight: {current.op} of {current.node} "
                               f"(phase {current.phase}, term {current.term}); wait for it to "
                               f"commit or abort")
        address = self._resolve(node, op)
        if op == "add":
            if address in self.voters:
                raise CommandError(f"node {node} ({address}) is already a voter")
        else:
            if address not in self.voters:
                raise CommandError(f"node {node} ({address}) is not a voter")
            if leader is not None and (leader == node or self._address_of(leader) == address):
                raise CommandError(f"node {node} is the leader; it can't remove itself (remove it "
                                   f"from another leader, or stop it so that another is elected)")
            floor = MIN_VOTERS_AUTO if auto else MIN_VOTERS_MANUAL
            if len(self.voters) - 1 < floor:
                raise CommandError(f"removing {node} would leave {len(self.voters) - 1} voter(s); "
                                   f"{'the autopilot' if auto else 'a manual change'} keeps at "
                                   f"least {floor}")
        self.change = VoterChange(op=op, node=node, address=address, phase=PHASES[op],
                                  term=term, started_at=at, auto=auto)
        self.term = term
        return self.change.record()

    def progress(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """The add candidate's catch-up: its applied index and the leader's commit index as it
        last heard it; refused unless an add of ``node`` is in flight."""
        v.check_keys(cmd, ("node", "applied", "leader_commit"))
        node = v.name(cmd["node"], "node")
        applied = v.sequence_number(cmd["applied"], "applied")
        leader_commit = v.sequence_number(cmd["leader_commit"], "leader_commit")
        change = self.change
        if change is None or change.op != "add" or node not in (change.node, change.address):
            raise CommandError(f"no add of {node} is in flight")
        change.progress = {"applied": applied, "leader_commit": leader_commit,
                           "lag": max(0, leader_commit - applied), "at": at}
        return change.record()

    def commit(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """The leader finished the change in Raft (pysyncobj applied it): the voter set follows.
        A resend of the last commit returns it unchanged."""
        v.check_keys(cmd, ("change", "node", "term"))
        op = v.choice(cmd["change"], "change", tuple(PHASES))
        node = v.name(cmd["node"], "node")
        term = v.sequence_number(cmd["term"], "term")
        last = self.last_change
        change = self.change
        if change is None or change.op != op or node not in (change.node, change.address):
            if (last is not None and last.result == "committed" and last.op == op
                    and node in (last.node, last.address) and last.term == term):
                return last.record()
            raise CommandError(f"no {op} of {node} is in flight")
        term = self._check_term(term)
        if term < change.term:
            raise CommandError(f"{STALE_TERM}: term {term} is older than the change's term "
                               f"{change.term}")
        if op == "add":
            if change.address not in self.voters:
                self.voters.append(change.address)
        elif change.address in self.voters:
            self.voters.remove(change.address)
        self.term = term
        self.change = None
        self.last_change = LastChange(op=op, node=change.node, address=change.address,
                                      result="committed", reason=None, term=term, at=at,
                                      auto=change.auto)
        return self.last_change.record()

    def abort(self, cmd: dict[str, Any], at: float) -> dict[str, Any]:
        """Give up the change in flight (catch-up timed out, pysyncobj refused it, a new leader
        found it undone); the voter set is unchanged. ``term`` is optional; given, it is
        checked like a commit's. A resend of the last abort returns it unchanged."""
        v.check_keys(cmd, ("node", "reason"), ("term",))
        node = v.name(cmd["node"], "node")
        reason = v.text(cmd["reason"], "reason", REASON_MAX) or "aborted"
        term = v.sequence_number(cmd["term"], "term") if cmd.get("term") is not None else None
        change = self.change
        last = self.last_change
        if change is None or node not in (change.node, change.address):
            if (last is not None and last.result == "aborted"
                    and node in (last.node, last.address) and last.reason == reason):
                return last.record()
            raise CommandError(f"no change of {node} is in flight")
        if term is not None:
            self._check_term(term)
            self.term = max(self.term, term)
        self.change = None
        self.last_change = LastChange(op=change.op, node=change.node, address=change.address,
                                      result="aborted", reason=reason,
                                      term=change.term if term is None else term, at=at,
                                      auto=change.auto)
        return self.last_change.record()

    # ------------------------------------------------------------------ query

    def view(self) -> dict[str, Any]:
        """The ``voters`` query: fresh copies, safe to hand out."""
        by_address = {r.raft_address: r for r in self.registry.values()}
        voters = []
        for address in self.voters:
            reg = by_address.get(address)
            voters.append({
                "node": reg.node if reg else None, "raft_address": address,
                "forward_address": reg.forward_address if reg else None,
                "public_key": reg.public_key if reg else None,
                "failure_domain": reg.failure_domain if reg else None,
            })
        return {
            "voters": voters,
            "registry": {name: reg.record() for name, reg in self.registry.items()},
            "change": None if self.change is None else self.change.record(),
            "last_change": None if self.last_change is None else self.last_change.record(),
            "bootstrapped": bool(self.voters),
            "term": self.term,
        }

    # ------------------------------------------------------------------ snapshots

    def dump(self) -> dict[str, Any]:
        """Plain values for the snapshot (``consensus.snapshot`` format 4)."""
        return {
            "voters": list(self.voters),
            "registry": [reg.record() for reg in self.registry.values()],
            "change": None if self.change is None else self.change.record(),
            "last_change": None if self.last_change is None else self.last_change.record(),
            "term": self.term,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> VoterSet:
        """From ``dump()``; raises KeyError/TypeError/ValueError on a malformed document
        (``consensus.snapshot`` turns those into SnapshotFormatError)."""
        out = cls()
        out.voters = [str(a) for a in data["voters"]]
        for item in data["registry"]:
            reg = Registration(**{k: item[k] for k in Registration.__dataclass_fields__})
            out.registry[reg.node] = reg
        if data["change"] is not None:
            out.change = VoterChange(**{k: data["change"][k]
                                        for k in VoterChange.__dataclass_fields__})
        if data["last_change"] is not None:
            out.last_change = LastChange(**{k: data["last_change"][k]
                                            for k in LastChange.__dataclass_fields__})
        out.term = data["term"]
        if isinstance(out.term, bool) or not isinstance(out.term, int):
            raise TypeError(f"voters term must be an integer (got {out.term!r})")
        return out

    # ------------------------------------------------------------------ helpers

    def _check_term(self, value: Any) -> int:
        term = v.sequence_number(value, "term")
        if term < self.term:
            raise CommandError(f"{STALE_TERM}: term {term} is older than term {self.term} of the "
                               f"last voter change; this node no longer leads")
        return term

    def _owner(self, address: str) -> str | None:
        return next((r.node for r in self.registry.values() if r.raft_address == address), None)

    def _address_of(self, node: str) -> str | None:
        reg = self.registry.get(node)
        return reg.raft_address if reg else None

    def _busy(self, address: str) -> str | None:
        if address in self.voters:
            return "is a voter"
        if self.change is not None and self.change.address == address:
            return f"is the target of the {self.change.op} in flight"
        return None

    def _resolve(self, node: str, op: str) -> str:
        """A change's node: a registered name; a remove may also name a voter's address (a
        voter that never registered, e.g. one dead since before this version)."""
        reg = self.registry.get(node)
        if reg is not None:
            return reg.raft_address
        if op == "remove" and node in self.voters:
            return node
        raise CommandError(f"unknown node {node}: not registered (an eligible node registers "
                           f"itself at start: raft.bind and forward.bind set, agent running)")


def _domain(value: Any) -> str:
    if value == "":
        return ""
    return v.name(value, "failure_domain")


def _same(a: Registration, b: Registration) -> bool:
    return (a.raft_address, a.forward_address, a.public_key, a.failure_domain) == \
        (b.raft_address, b.forward_address, b.public_key, b.failure_domain)
