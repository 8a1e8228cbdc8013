"""What the admin socket and the status endpoint may ask of a running agent.

The daemon implements this; the admin server and the status endpoint depend only on
this protocol, so they are tested against a small in-test node without a cluster.
"""
from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import CollectorRegistry


class Unavailable(Exception):
    """The node could not read the replicated state right now (a non-voter whose voters
    did not answer); ``str()`` says why. The admin socket shows it as a refusal."""


class AgentNode(Protocol):
    name: str
    registry: CollectorRegistry  # this agent's Prometheus metrics

    def status(self) -> dict[str, Any]:
        """The `/status` document; safe to call from any thread.

        Keys: node, role (leader|follower|candidate|replica), voter (bool), leader
        (raft address or None), term, commit_index, applied_index, log_size,
        voters (list of {address, node, reachable}), voter_set (``hagent.voters.view.
        status_summary``: the committed voters' records, the eligible non-voters, the change in
        flight with its catch-up progress, the last change), notifications (counts by status),
        ready (bool: joined the log and caught up). With gossip also: members (list of
        {name, state, incarnation}) and membership ({address, members_by_state,
        health_score}).

        A non-voter (role ``replica``) keeps no Raft state: it serves a copy of the status
        of the voter it talks to (refreshed every ~0.5 s; log_size None), plus
        ``forward_voter`` (that voter's Raft address) and ``voter_answer_age`` (seconds since
        it answered); ``ready`` only while a voter that knows a leader answered recently.
        """

    def members(self) -> list[dict[str, Any]]:
        """Known cluster members, safe to call from any thread.

        With gossip (``gossip.bind`` set), one row per member this node's membership knows,
        itself included, sorted by name: name, address (gossip host:port), state
        (alive|suspect|dead|left), incarnation, last_heard_ago (seconds, None for itself),
        confirmations (independent suspicions, 0 unless suspect), suspect_deadline_in
        (seconds until a suspect is declared dead, or None), raft_address (a voter's, from
        its gossip meta, else None), voter (bool). Without gossip: the Raft voters only,
        {raft_address, voter, reachable, ...}.
        """

    def lease_expires_in(self, host: str, lease: dict[str, Any] | None) -> float | None:
        """Seconds until ``host``'s lease runs out as this node judges it (negative: expired),
        given its replicated lease record ({host, seq, renewed_at}) or None if it has none."""

    def is_leader(self) -> bool: ...

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): applied index within status.max_lag of the leader's commit."""

    async def query(self, name: str, **kwargs: Any) -> Any:
        """The read-only ClusterState query ``name(**kwargs)`` (names: hagent.queries).

        A voter answers from its own state; a non-voter asks a voter. Raises
        consensus.queries.QueryError for an unknown name or bad arguments, Unavailable when
        no voter answered.
        """

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commit ``command`` through the log (``at`` is filled in if absent).

        Returns ClusterState.apply's answer ({"ok", "result", "error"}), or
        {"ok": False, "error": "..."} when the log could not commit it in time.
        """

    async def voters_view(self) -> dict[str, Any]:
        """The voter set (``hagent.voters.view.describe``): voters, eligible non-voters, the
        change in flight with its catch-up progress, the last change. Raises Unavailable when
        a non-voter's voters do not answer."""

    async def change_voters(self, kind: str, node: str, *, wait: float) -> dict[str, Any]:
        """Add (``kind`` "add") or remove a voter and wait up to ``wait`` seconds for the
        outcome: the committed change (``last_change``), or the change in flight with
        ``result`` "in_progress". Raises hagent.voters.changer.VoterChangeRefused with the
        reason when it was refused or aborted (nothing changed)."""

    async def submit_notification(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Spool (fsynced) then commit a notification; ``fields`` holds type, hostname,
        generated_time, payload and optionally notification_uuid.

        Returns {"ok": True, "committed": bool, "result": record}. When the log did not
        commit within notifications.submit_timeout, ``committed`` is False, the record is the
        spooled one with status "pending", and the spool keeps resending.
        """
