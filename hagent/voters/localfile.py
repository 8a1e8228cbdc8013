"""This node's copy of the voter set (``STATE_DIR/voters.json``, ``consensus.voterfile``) as
the agent uses it: which role a process starts in and which voters a non-voter talks to.

``raft.voters`` in the config is only the bootstrap set. ``consensus.voterfile.choose`` picks
the set a node starts from (the file, else the config; a WARNING names both when they
differ), and a voter's RaftNode keeps the file's addresses equal to the committed set it
applies. The agent adds what a non-voter needs to reach the voters without Raft: each
voter's record (node name, forward endpoint, CURVE key) under the file's ``records`` key,
which the Raft side keeps across its updates. So a non-voter still finds the log after every
original voter is gone, and after a full restart. A node about to re-exec writes the set its
next role starts from (``pending``: a promotion candidate, written in as the voters plus
itself as ``consensus.voterfile`` expects).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from consensus import voterfile
from hagent.config import Config

log = logging.getLogger(__name__)

#: The file's key for the voters' records (the agent's; consensus.voterfile keeps it).
RECORDS = "records"
_FIELDS = ("node", "raft_address", "forward_address", "public_key")


@dataclass(frozen=True)
class LocalVoters:
    """The voter set this node starts from. ``voters`` are records {node, raft_address,
    forward_address, public_key} (node, forward_address and public_key None when unknown);
    ``pending``: this node runs as a voter that is not in ``voters`` yet (a candidate);
    ``index``: the Raft index the set is valid at (0: not from the log); ``source``: the
    file's path or "config"."""

    voters: tuple[Mapping[str, Any], ...]
    pending: bool = False
    index: int = 0
    source: str = "config"

    @property
    def addresses(self) -> list[str]:
        return [v["raft_address"] for v in self.voters]

    def same_set(self, voters: tuple[Mapping[str, Any], ...] | list) -> bool:
        """Same addresses, endpoints and keys (what a forward client connects with)."""
        return _key(self.voters) == _key(voters)


def _key(voters: Any) -> list[tuple]:
    return sorted((v.get("raft_address"), v.get("forward_address"), v.get("public_key"))
                  for v in voters)


def _record(v: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.get(k) for k in _FIELDS}


def path_in(state_dir: Path) -> Path:
    return Path(state_dir) / voterfile.VOTERS_FILE


def _config_records(config: Config) -> dict[str, dict[str, Any]]:
    """The bootstrap voters with their ``forward.endpoints`` and ``security.voter_keys``
    entries (None where the config has none), by Raft address."""
    voters = config.raft.voters
    n = len(voters)
    endpoints = config.forward.endpoints if len(config.forward.endpoints) == n else [None] * n
    keys = config.security.voter_keys if len(config.security.voter_keys) == n else [None] * n
    return {a: {"node": None, "raft_address": a, "forward_address": e, "public_key": k}
            for a, e, k in zip(voters, endpoints, keys)}


def effective(config: Config) -> LocalVoters:
    """The voter set this node starts from (``consensus.voterfile.choose``: the file over the
    config), each voter with the best record known: the file's, else the config's; raises
    consensus.voterfile.VoterFileError for a file that cannot be used."""
    path = path_in(config.node.state_dir)
    start = voterfile.choose(list(config.raft.voters), path, config.raft.bind or None)
    saved = voterfile.load(path)
    records = {r["raft_address"]: _record(r) for r in (saved.extra.get(RECORDS) or [])
               if isinstance(r, dict) and r.get("raft_address")} if saved else {}
    configured = _config_records(config)
    voters = tuple(records.get(a) or configured.get(a) or
                   {"node": None, "raft_address": a, "forward_address": None, "public_key": None}
                   for a in start.voters)
    return LocalVoters(voters, start.joining, start.index, start.source)


def save(state_dir: Path, voters: tuple | list, *, pending: bool = False,
         self_address: str = "") -> None:
    """Write the set a re-exec'd process or a non-voter starts from (valid at no particular
    Raft index: the node's own log, if any, decides past it); ``pending`` writes this node
    in as the candidate of an add that has not committed."""
    addresses = [v["raft_address"] for v in voters]
    if pending and self_address not in addresses:
        addresses.append(self_address)
    voterfile.save(path_in(state_dir), addresses, index=0, pending=pending,
                   **{RECORDS: [_record(v) for v in voters]})


def save_records(state_dir: Path, voters: tuple | list) -> None:
    """Keep the voters' records current on a voter, whose RaftNode owns the addresses."""
    voterfile.update(path_in(state_dir), **{RECORDS: [_record(v) for v in voters]})


def run_config(config: Config, local: LocalVoters) -> Config:
    """``config`` as this process runs: ``raft.voters`` is the effective set, with this node
    added when it is a pending voter (so ``is_voter`` says this process's role and a
    candidate serves its forward endpoint and recovers once it leads), ``forward.bind`` this
    node's own endpoint, and ``forward.endpoints``/``security.voter_keys`` the endpoints and
    keys of the voters that have both (what a non-voter connects to). The Raft partners are
    ``local.addresses``: a candidate is not a member until the leader adds it."""
    forward, security = config.forward, config.security
    reachable = forwardable(local)
    if config.forwarding and reachable:
        forward = replace(forward, endpoints=[v["forward_address"] for v in reachable])
        security = replace(security, voter_keys=[v["public_key"] for v in reachable])
    forward = replace(forward, bind=config.own_forward_endpoint)
    addresses = local.addresses
    if local.pending and config.raft.bind not in addresses:
        addresses = [*addresses, config.raft.bind]
    raft = replace(config.raft, voters=addresses)
    return replace(config, raft=raft, forward=forward, security=security)


def forwardable(local: LocalVoters) -> list[Mapping[str, Any]]:
    """The voters a non-voter can reach: those whose forward endpoint and key are known."""
    return [v for v in local.voters if v.get("forward_address") and v.get("public_key")]


def forward_targets(config: Config, local: LocalVoters) -> list[Mapping[str, Any]]:
    """The voters a non-voter forwards to: those of ``local`` it can reach, else (no record
    of any: a file the agent never completed) the config's bootstrap voters, with a WARNING;
    raises consensus.voterfile.VoterFileError when neither names one."""
    reachable = forwardable(local)
    if reachable:
        return reachable
    configured = [v for v in _config_records(config).values()
                  if v["forward_address"] and v["public_key"]]
    if not configured:
        raise voterfile.VoterFileError(
            f"{local.source}: no voter in it has a known forward endpoint and key, and the "
            f"config names none (forward.endpoints, security.voter_keys); remove the file or "
            f"set them")
    log.warning("none of the voters in %s (%s) has a known forward endpoint and key: "
                "forwarding to the config's bootstrap voters %s", local.source,
                ", ".join(local.addresses), ", ".join(v["raft_address"] for v in configured))
    return configured
