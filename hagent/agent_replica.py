"""The non-voter backend of an agent: no Raft state, everything through a voter.

A non-voter holds no log, no state and no Raft secret (docs/nonvoters.md says why). Its
proposals and reads go to the voters through ``hagent.forward.client``. Its ``status()`` is
called from the HTTP thread, so it must be synchronous and cheap: it serves a copy of the
last status a voter sent, refreshed by an asyncio task every ``STATUS_INTERVAL``.

Which voters: the set this node started from (``hagent.voters.localfile``: the saved
committed set, else the config's), replaced by ``use_voters`` when the set a voter serves in
its status changes (the daemon's role watcher saves it too), so a non-voter follows the voter
set as voters are replaced.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from typing import Mapping

from hagent.config import Config
from hagent.forward.client import ForwardClient, ForwardUnavailable
from hagent.forward.keys import KeyPair, read_key_pair

log = logging.getLogger(__name__)

#: Seconds between two status requests to a voter: the freshness of /status on a non-voter.
#: Every non-voter asks, so this is load on the voters that grows with the cluster (50 nodes
#: at 0.5 s: 94 requests/s, the leader's idle CPU 4 %); 1 s halves it and still leaves three
#: answers within STALE_AFTER.
STATUS_INTERVAL = 1.0
#: Seconds a status request waits for one voter: a live voter answers in under a
#: millisecond, so a voter that takes longer is dead or stuck and the next one is asked.
STATUS_TIMEOUT = 1.0
#: A non-voter is ready (READY=1, /health 200) only while a voter that knows a leader
#: answered within this many seconds: a few refresh periods, plus one failover.
STALE_AFTER = 3.0


class ReplicaBackend:
    """Non-voter: forwards proposals and reads to the voters; caches a voter's status."""

    kind = "replica"

    def __init__(self, config: Config, node_name: str,
                 voters: list[Mapping[str, Any]] | None = None) -> None:
        """``voters``: records {raft_address, forward_address, public_key} to forward to;
        default the config's ``raft.voters`` with their endpoints and keys."""
        if voters is None:
            voters = [{"raft_address": a, "forward_address": e, "public_key": k}
                      for a, e, k in zip(config.raft.voters, config.forward.endpoints,
                                         config.security.voter_keys)]
        self._key_pair: KeyPair = read_key_pair(config.security.key_file)
        self._timeout = config.forward.timeout
        self.client = self._client(voters)
        # (monotonic time of the answer, the answering voter's Raft address, its status).
        # Replaced whole, never mutated, so the HTTP thread reads a consistent triple.
        self._cached: tuple[float, str, dict[str, Any]] | None = None
        self._last_error: str | None = "no voter has answered yet"
        self._refresher: asyncio.Task | None = None

    def _client(self, voters: list[Mapping[str, Any]]) -> ForwardClient:
        self.voters = [v["raft_address"] for v in voters]
        self.endpoints = [v["forward_address"] for v in voters]
        return ForwardClient(self.endpoints, self.voters, [v["public_key"] for v in voters],
                             self._key_pair, self._timeout)

    async def use_voters(self, voters: list[Mapping[str, Any]]) -> None:
        """Forward to ``voters`` from now on (records with endpoint and key): a new client
        replaces the old one, whose requests in flight fail retryably (the submitter
        resends)."""
        old, self.client = self.client, self._client(voters)
        await self.client.start()
        await old.close()
        log.info("forwarding to the voters %s", ", ".join(self.voters))

    def voter_set(self) -> dict[str, Any] | None:
        """The voter set (``voter_set`` of a voter's status) as last served, or None."""
        cached = self._cached
        return cached[2].get("voter_set") if cached is not None else None

    async def start(self) -> None:
        await self.client.start()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="voter-status")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        await self.client.close()

    async def _refresh(self) -> None:
        while True:
            try:
                client = self.client
                index, status = await client.status(timeout=STATUS_TIMEOUT)
                voter = client.voters[index]
            except ForwardUnavailable as exc:
                if self._last_error is None:
                    log.warning("no voter answered a status request: %s", exc)
                self._last_error = str(exc)
            except Exception as exc:  # noqa: BLE001 - the refresher must outlive any one failure
                log.exception("status refresh failed")
                self._last_error = f"{type(exc).__name__}: {exc}"
            else:
                if not isinstance(status, dict):
                    self._last_error = f"voter {voter} sent a status that is not a map"
                else:
                    if self._last_error is not None:
                        log.info("voter %s answers; leader %s", voter, status.get("leader"))
                    self._cached = (time.monotonic(), voter, status)
                    self._last_error = None
            await asyncio.sleep(STATUS_INTERVAL)

    # --- reads ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cached = self._cached
        doc: dict[str, Any] = {
            "role": "replica", "voter": False, "self_address": None, "leader": None,
            "term": None, "commit_index": None, "applied_index": None,
            "leader_commit_index": None, "log_size": None,
            "voters": [{"address": v, "reachable": False} for v in self.voters],
            "voter_set": None, "notifications": {}, "ready": False, "forward_voter": None,
            "voter_answer_age": None, "error": self._last_error,
        }
        if cached is None:
            return doc
        at, address, voter = cached
        age = time.monotonic() - at
        for key in ("leader", "term", "commit_index", "applied_index", "leader_commit_index",
                    "voter_set"):
            doc[key] = voter.get(key)
        doc["voters"] = voter.get("voters") or doc["voters"]
        doc["notifications"] = voter.get("notifications") or {}
        doc["forward_voter"] = address
        doc["voter_answer_age"] = round(age, 3)
        doc["ready"] = bool(age <= STALE_AFTER and voter.get("leader") and voter.get("ready"))
        if not doc["ready"] and doc["error"] is None:
            doc["error"] = (f"voter {address} knows no leader" if not voter.get("leader")
                            else f"last voter answer {age:.1f} s ago (stale after {STALE_AFTER:g} s)")
        return doc

    def ready(self) -> bool:
        return bool(self.status()["ready"])

    def fatal_error(self) -> str | None:
        """A non-voter has no state that can halt; losing its voters only makes it not ready."""
        return None

    def members(self) -> list[dict[str, Any]]:
        status = self.status()
        endpoints = dict(zip(self.voters, self.endpoints))
        return [{"raft_address": v["address"], "voter": True, "reachable": v["reachable"],
                 "self": False, "forward_endpoint": endpoints.get(v["address"]),
                 "answering": v["address"] == status["forward_voter"]}
                for v in status["voters"]]

    def is_leader(self) -> bool:
        return False

    def health(self, max_lag: int) -> tuple[bool, str]:
        status = self.status()
        if not status["ready"]:
            return False, f"no voter with a leader answered recently: {status['error']}"
        lag = (status["commit_index"] or 0) - (status["applied_index"] or 0)
        if lag > max_lag:
            return False, (f"voter {status['forward_voter']} applied index {lag} entries behind "
                           f"commit (max {max_lag})")
        return True, f"via voter {status['forward_voter']}, leader {status['leader']}, lag {lag}"

    async def query_async(self, name: str, kwargs: dict[str, Any]) -> Any:
        return await self.client.query(name, kwargs)

    # --- writes -----------------------------------------------------------------------------
    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self.client.propose({"at": time.time(), **command})
