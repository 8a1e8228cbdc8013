"""What each admin verb does: reads are named queries, writes go through the log.

A verb is an ``async (node, args) -> result`` function. It checks its arguments,
then either runs a named read-only query (``node.query``: a voter reads its own
state, a non-voter asks a voter) or turns the request into one of the replicated commands of
``docs/architecture.md`` and proposes it (``node.propose``). Anything the operator
can fix (a missing argument, an unknown segment, a refused command) raises
``VerbError`` with a message saying so; the server turns it into
``{"ok": false, "error": ...}``.

The server picks uuids (uuid4) for new segments and hosts here, because a
replicated command must carry every value that varies; ``node.propose`` fills in
the time.
"""
from __future__ import annotations

import uuid
from typing import Any, Awaitable, Callable

from consensus.queries import QueryError
from hagent.node_api import AgentNode, Unavailable

Verb = Callable[[AgentNode, dict[str, Any]], Awaitable[Any]]


class VerbError(Exception):
    """A request the agent refuses; ``str()`` is the reason shown to the operator."""


class UnknownVerb(VerbError):
    """A verb this agent does not know (counted as a malformed request)."""


# --- argument checks --------------------------------------------------------------------
_MISSING = object()


def _arg(args: dict[str, Any], key: str, kind: type | tuple[type, ...] = str, default: Any = _MISSING) -> Any:
    value = args.get(key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise VerbError(f"missing argument '{key}'")
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise VerbError(f"argument '{key}' must be {names}, not {type(value).__name__}")
    return value


def _no_unknown(args: dict[str, Any], allowed: set[str]) -> None:
    extra = set(args) - allowed
    if extra:
        raise VerbError(f"unknown arguments: {', '.join(sorted(extra))}")


_LIST_ARGS = {"filters", "sort_key", "sort_dir", "limit", "marker"}


def _list_args(args: dict[str, Any]) -> dict[str, Any]:
    filters = _arg(args, "filters", dict, {})
    for k, v in filters.items():
        if not isinstance(v, (str, int, float, bool)):
            raise VerbError(f"filter '{k}' must be a string, number or boolean")
    sort_dir = _arg(args, "sort_dir", str, "desc")
    if sort_dir not in ("asc", "desc"):
        raise VerbError(f"sort_dir must be asc or desc, not {sort_dir!r}")
    limit = _arg(args, "limit", int, None)
    if limit is not None and limit < 1:
        raise VerbError("limit must be a positive integer")
    return {"filters": filters, "sort_key": _arg(args, "sort_key", str, "created_at"),
            "sort_dir": sort_dir, "limit": limit, "marker": _arg(args, "marker", str, None)}


async def _query(node: AgentNode, name: str, **kwargs: Any) -> Any:
    """Run a named query; a bad argument or an unreachable state becomes a VerbError."""
    try:
        return await node.query(name, **kwargs)
    except QueryError as exc:
        raise VerbError(str(exc)) from None
    except Unavailable as exc:
        raise VerbError(f"cannot read the cluster state: {exc}") from None


def _committed(answer: dict[str, Any]) -> Any:
    if not answer.get("ok"):
        raise VerbError(answer.get("error") or "the log refused the command")
    return answer.get("result")


def _found(record: Any, what: str, key: str) -> Any:
    if record is None:
        raise VerbError(f"{what} not found: {key}")
    return record


def _pick(args: dict[str, Any], spec: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The optional fields of ``spec`` present in ``args``, type-checked."""
    return {k: _arg(args, k, kind) for k, kind in spec.items() if args.get(k) is not None}


# --- node-wide --------------------------------------------------------------------------
async def status(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, set())
    return node.status()


async def members(node: AgentNode, args: dict[str, Any]) -> Any:
    """The node's member rows, each with its replicated lease: ``lease_seq`` (latest committed
    renewal) and ``lease_expires_in`` (seconds, as this node judges it); both None when the
    member has no lease or the replicated state cannot be read right now (membership is
    still shown: that is when an operator needs it most)."""
    _no_unknown(args, set())
    rows = [dict(row) for row in node.members()]
    try:
        leases = {lease["host"]: lease for lease in await node.query("list_leases")}
    except (QueryError, Unavailable):
        leases = None
    # Nodes that hold no leases (a test double) say nothing about expiry.
    expires_in = getattr(node, "lease_expires_in", None)
    for row in rows:
        lease = leases.get(row.get("name")) if leases is not None and "name" in row else None
        row["lease_seq"] = lease["seq"] if lease else None
        row["lease_expires_in"] = expires_in(row["name"], lease) if lease and expires_in else None
    return rows


# Status keys that are not about Raft; ``raft`` shows every other key, so fields the Raft
# shell adds later (durable index, fsync counts, ...) appear without touching this file.
NOT_RAFT_KEYS = frozenset({"notifications", "spool_depth", "submissions_total", "members",
                           "membership", "lease", "detection", "recovery", "monitors"})


async def raft(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, set())
    return {k: v for k, v in node.status().items() if k not in NOT_RAFT_KEYS}


# --- the voter set (docs/voters.md) -------------------------------------------------------
#: Seconds add-voter/remove-voter wait for the change's outcome before answering that it is
#: still in flight: under the admin server's REQUEST_TIMEOUT (60 s), above a typical add
#: (re-exec and catch-up take a few seconds). The change carries on either way.
VOTER_CHANGE_WAIT = 45.0


async def raft_voters(node: AgentNode, args: dict[str, Any]) -> Any:
    """The voter set: voters, eligible non-voters, the change in flight and the last one."""
    _no_unknown(args, set())
    try:
        return await node.voters_view()
    except QueryError as exc:
        raise VerbError(str(exc)) from None
    except Unavailable as exc:
        raise VerbError(f"cannot read the voter set: {exc}") from None


async def _voter_change(node: AgentNode, args: dict[str, Any], kind: str) -> Any:
    from hagent.voters.changer import VoterChangeRefused

    _no_unknown(args, {"node"})
    name = _arg(args, "node")
    try:
        return await node.change_voters(kind, name, wait=VOTER_CHANGE_WAIT)
    except VoterChangeRefused as exc:
        raise VerbError(str(exc)) from None
    except Unavailable as exc:
        raise VerbError(f"cannot reach the log: {exc}") from None


async def raft_add_voter(node: AgentNode, args: dict[str, Any]) -> Any:
    """Promote an eligible non-voter; answers the committed change, or the change still in
    flight after VOTER_CHANGE_WAIT (``result`` "in_progress")."""
    return await _voter_change(node, args, "add")


async def raft_remove_voter(node: AgentNode, args: dict[str, Any]) -> Any:
    """Demote a voter (it goes on as a non-voter); as ``raft.add_voter``."""
    return await _voter_change(node, args, "remove")


# --- segments ---------------------------------------------------------------------------
_SEGMENT_FIELDS = {"name": str, "description": str, "recovery_method": str, "service_type": str,
                   "enabled": bool}


async def segment_list(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, _LIST_ARGS)
    q = _list_args(args)
    return await _query(node, "list_segments", **q)


async def segment_show(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"segment"})
    key = _arg(args, "segment")
    return _found(await _query(node, "get_segment", ref=key), "segment", key)


async def segment_create(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, set(_SEGMENT_FIELDS))
    cmd = {"op": "segment.create", "uuid": str(uuid.uuid4()), "name": _arg(args, "name"),
           "recovery_method": _arg(args, "recovery_method"), "service_type": _arg(args, "service_type")}
    cmd.update(_pick(args, {"description": str, "enabled": bool}))
    return _committed(await node.propose(cmd))


async def segment_update(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"segment"} | set(_SEGMENT_FIELDS))
    changes = _pick(args, _SEGMENT_FIELDS)
    if not changes:
        raise VerbError(f"nothing to update: give one of {', '.join(_SEGMENT_FIELDS)}")
    return _committed(await node.propose({"op": "segment.update", "segment": _arg(args, "segment"),
                                          **changes}))


async def segment_delete(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"segment"})
    return _committed(await node.propose({"op": "segment.delete", "segment": _arg(args, "segment")}))


# --- hosts ------------------------------------------------------------------------------
_HOST_FIELDS = {"name": str, "type": str, "control_attributes": str, "reserved": bool,
                "on_maintenance": bool}


async def host_list(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"segment"} | _LIST_ARGS)
    segment = _arg(args, "segment", str, None)
    q = _list_args(args)
    return await _query(node, "list_hosts", segment=segment, **q)


async def host_show(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"segment", "host"})
    key = _arg(args, "host")
    segment = _arg(args, "segment", str, None)
    return _found(await _query(node, "get_host", ref=key, segment=segment), "host", key)


async def host_create(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"segment"} | set(_HOST_FIELDS))
    cmd = {"op": "host.create", "uuid": str(uuid.uuid4()), "name": _arg(args, "name"),
           "type": _arg(args, "type"), "control_attributes": _arg(args, "control_attributes"),
           "segment": _arg(args, "segment")}
    cmd.update(_pick(args, {"reserved": bool, "on_maintenance": bool}))
    return _committed(await node.propose(cmd))


async def host_update(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"segment", "host"} | set(_HOST_FIELDS))
    changes = _pick(args, _HOST_FIELDS)
    if not changes:
        raise VerbError(f"nothing to update: give one of {', '.join(_HOST_FIELDS)}")
    cmd = {"op": "host.update", "host": _arg(args, "host"), **changes}
    segment = _arg(args, "segment", str, None)
    if segment is not None:
        cmd["segment"] = segment
    return _committed(await node.propose(cmd))


async def host_delete(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"segment", "host"})
    cmd = {"op": "host.delete", "host": _arg(args, "host")}
    segment = _arg(args, "segment", str, None)
    if segment is not None:
        cmd["segment"] = segment
    return _committed(await node.propose(cmd))


# --- notifications ----------------------------------------------------------------------
async def notification_list(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, _LIST_ARGS)
    q = _list_args(args)
    return await _query(node, "list_notifications", **q)


async def notification_show(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"notification_uuid"})
    key = _arg(args, "notification_uuid")
    return _found(await _query(node, "get_notification", notification_uuid=key), "notification", key)


# --- vmoves (per-instance progress of a host recovery) -------------------------------------
#: Sort keys and filters of ``vmove.list``: Masakari's (masakari/api/openstack/ha/vmoves.py)
#: plus the fields an operator looks an instance up by.
VMOVE_SORT_KEYS = ("created_at", "updated_at", "type", "status", "start_time", "end_time",
                   "instance_uuid", "instance_name", "source_host", "dest_host")
VMOVE_FILTERS = ("type", "status")


async def vmove_list(node: AgentNode, args: dict[str, Any]) -> Any:
    """The vmoves of a COMPUTE_HOST notification, one per instance, filtered, sorted
    (default ``created_at`` desc, as Masakari) and paged by ``marker`` (an instance uuid)
    and ``limit``. Read from the notification record, so always as fresh as its show."""
    _no_unknown(args, {"notification_uuid"} | _LIST_ARGS)
    key = _arg(args, "notification_uuid")
    q = _list_args(args)
    unknown = sorted(set(q["filters"]) - set(VMOVE_FILTERS))
    if unknown:
        raise VerbError(f"unknown filter {', '.join(unknown)} "
                        f"(allowed: {', '.join(VMOVE_FILTERS)})")
    if q["sort_key"] not in VMOVE_SORT_KEYS:
        raise VerbError(f"sort_key must be one of {', '.join(VMOVE_SORT_KEYS)} "
                        f"(got {q['sort_key']!r})")
    record = _found(await _query(node, "get_notification", notification_uuid=key),
                    "notification", key)
    if record["type"] != "COMPUTE_HOST":
        raise VerbError(f"notification {key} is of type {record['type']}: only COMPUTE_HOST "
                        f"notifications have vmoves")
    rows = [v for v in record.get("vmoves") or []
            if all(v.get(f) == wanted for f, wanted in q["filters"].items())]
    # None sorts first ascending, as NULL does in Masakari's MySQL; ties keep record order.
    rows.sort(key=lambda v: (v.get(q["sort_key"]) is not None, v.get(q["sort_key"]) or ""),
              reverse=q["sort_dir"] == "desc")
    if q["marker"] is not None:
        uuids = [v["instance_uuid"] for v in rows]
        if q["marker"] not in uuids:
            raise VerbError(f"marker {q['marker']!r} not found")
        rows = rows[uuids.index(q["marker"]) + 1:]
    return rows if q["limit"] is None else rows[:q["limit"]]


# --- incidents (host failures, docs/detection.md) ------------------------------------------
async def incident_list(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"status"})
    status = args.get("status")
    if status not in (None, "open", "closed"):
        raise VerbError(f"status must be 'open' or 'closed' (got {status!r})")
    return await _query(node, "incidents", status=status)


async def incident_show(node: AgentNode, args: dict[str, Any]) -> Any:
    _no_unknown(args, {"hostname"})
    host = _arg(args, "hostname")
    return _found(await _query(node, "incident", hostname=host), "incident of host", host)


async def notification_create(node: AgentNode, args: dict[str, Any]) -> Any:
    """Spool then commit; answers {"committed": bool, "notification": record}.

    ``committed`` False means the log did not commit within the submit timeout: the
    notification is safe in this node's spool, which keeps resending it.
    """
    _no_unknown(args, {"type", "hostname", "generated_time", "payload", "notification_uuid"})
    fields = {"type": _arg(args, "type"), "hostname": _arg(args, "hostname"),
              "generated_time": _arg(args, "generated_time"), "payload": _arg(args, "payload", dict)}
    if args.get("notification_uuid") is not None:
        fields["notification_uuid"] = _arg(args, "notification_uuid")
    answer = await node.submit_notification(fields)
    if not answer.get("ok"):
        raise VerbError(answer.get("error") or "notification refused")
    return {"committed": bool(answer.get("committed")), "notification": answer.get("result")}


VERBS: dict[str, Verb] = {
    "status": status,
    "members": members,
    "raft": raft,
    "raft.voters": raft_voters,
    "raft.add_voter": raft_add_voter,
    "raft.remove_voter": raft_remove_voter,
    "segment.list": segment_list,
    "segment.show": segment_show,
    "segment.create": segment_create,
    "segment.update": segment_update,
    "segment.delete": segment_delete,
    "host.list": host_list,
    "host.show": host_show,
    "host.create": host_create,
    "host.update": host_update,
    "host.delete": host_delete,
    "notification.list": notification_list,
    "notification.show": notification_show,
    "notification.create": notification_create,
    "vmove.list": vmove_list,
    "incident.list": incident_list,
    "incident.show": incident_show,
}


async def run_verb(node: AgentNode, verb: str, args: dict[str, Any]) -> Any:
    """Run one verb; raises UnknownVerb or VerbError for requests to refuse."""
    fn = VERBS.get(verb)
    if fn is None:
        raise UnknownVerb(f"unknown verb {verb!r}; known: {', '.join(VERBS)}")
    return await fn(node, args)
