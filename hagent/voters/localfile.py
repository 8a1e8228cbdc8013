"""This node's copy of the voter set, ``STATE_DIR/voters.json``: which role it starts in and
whom it talks to.

``raft.voters`` in the config is only the bootstrap set. Once the log holds a voter set, every
node keeps its last copy here (written atomically and fsynced, so a crash leaves the old or
the new file, never half of one):

- a voter writes it on every committed change it applies, and starts from it: its RaftNode's
  partners are the voters in it, not the config's;
- a non-voter writes it whenever the set a voter serves it changes, so it still finds the
  log (the voters' forward endpoints and keys) after every original voter is gone, and after
  a full restart;
- a node about to re-exec writes the set its next role starts with; ``pending`` marks a
  promotion candidate: it runs as a voter although the set does not hold it yet.

Without a file (first start) the config's bootstrap set applies. A config that disagrees
with the file is logged at WARNING, naming both, and the file wins: the log decided.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from hagent.config import Config

log = logging.getLogger(__name__)

FILE_NAME = "voters.json"
FORMAT = 1


class VotersFileError(Exception):
    """``voters.json`` cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class LocalVoters:
    """The voter set this node starts from. ``voters`` are records {node, raft_address,
    forward_address, public_key} (node, forward_address and public_key may be None for a
    voter the log knows only by its address); ``pending``: this node runs as a voter that is
    not in ``voters`` yet; ``source`` says where it came from."""

    voters: tuple[Mapping[str, Any], ...]
    pending: bool = False
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


def path_in(state_dir: Path) -> Path:
    return Path(state_dir) / FILE_NAME


def from_config(config: Config) -> LocalVoters:
    """The bootstrap set: ``raft.voters`` with their ``forward.endpoints`` and
    ``security.voter_keys`` entries (None where the config has none)."""
    voters = config.raft.voters
    endpoints = list(config.forward.endpoints) if len(config.forward.endpoints) == len(voters) \
        else [None] * len(voters)
    keys = list(config.security.voter_keys) if len(config.security.voter_keys) == len(voters) \
        else [None] * len(voters)
    return LocalVoters(tuple({"node": None, "raft_address": a, "forward_address": e,
                              "public_key": k} for a, e, k in zip(voters, endpoints, keys)))


def load(state_dir: Path) -> LocalVoters | None:
    """The saved set, or None when there is none yet; VotersFileError if it is unreadable."""
    path = path_in(state_dir)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise VotersFileError(f"{path}: cannot read the saved voter set ({exc}); remove it to "
                              f"start from the config's raft.voters, or restore it") from None
    try:
        if doc["format"] != FORMAT:
            raise ValueError(f"format {doc['format']}, this agent reads {FORMAT}")
        voters = tuple({"node": v.get("node"), "raft_address": str(v["raft_address"]),
                        "forward_address": v.get("forward_address"),
                        "public_key": v.get("public_key")} for v in doc["voters"])
        if not voters:
            raise ValueError("no voters")
        return LocalVoters(voters, bool(doc.get("pending", False)), "file")
    except (KeyError, TypeError, ValueError) as exc:
        raise VotersFileError(f"{path}: not a saved voter set ({exc}); remove it to start "
                              f"from the config's raft.voters") from None


def save(state_dir: Path, voters: LocalVoters | tuple | list, *, pending: bool = False) -> None:
    """Write the set atomically and fsynced (file and directory)."""
    records = voters.voters if isinstance(voters, LocalVoters) else voters
    doc = {"format": FORMAT, "pending": pending,
           "voters": [{"node": v.get("node"), "raft_address": v["raft_address"],
                       "forward_address": v.get("forward_address"),
                       "public_key": v.get("public_key")} for v in records]}
    path = path_in(state_dir)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def effective(config: Config) -> LocalVoters:
    """The voter set this node starts from: the saved one, else the config's; a config that
    disagrees with the saved set is named in a WARNING (the saved set wins)."""
    configured = from_config(config)
    saved = load(config.node.state_dir)
    if saved is None:
        return configured
    if sorted(saved.addresses) != sorted(configured.addresses):
        log.warning("raft.voters in the config (%s) is not the voter set the log committed "
                    "(%s, saved in %s): following the log; the config only bootstraps a new "
                    "cluster", ", ".join(configured.addresses), ", ".join(saved.addresses),
                    path_in(config.node.state_dir))
    return saved


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
