"""hagentctl: the operator's CLI, talking to the local agent over its admin socket.

Verbs and positional arguments follow python-masakariclient's ``openstack segment|host|
notification|vmove`` commands, so a Masakari operator's habits carry over; ``status``,
``members``, ``raft`` (with ``voters``, ``add-voter NODE``, ``remove-voter NODE``) and
``incident`` are hagent's own. Every verb takes ``-f table|json``.

Exit codes: 0 done; 1 the agent refused (reason on stderr) or could not be reached
(the message names the socket); 2 usage error (argparse's usage message), which
includes a payload that is not a JSON object and a boolean that is not True/False.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from hagent.admin import client, protocol
from hagent.ctl import recovery, render
from hagent.voters.view import change_line, last_change_line

DEFAULT_SOCKET = Path("/run/hagent/hagent.sock")

# The table columns, in python-masakariclient's order (plus hagent's extras).
SEGMENT_LIST = ("uuid", "name", "description", "service_type", "recovery_method", "enabled")
SEGMENT_SHOW = ("created_at", "updated_at", "uuid", "name", "description", "service_type",
                "recovery_method", "enabled")
HOST_LIST = ("uuid", "name", "type", "control_attributes", "reserved", "on_maintenance",
             "failover_segment_id")
HOST_SHOW = ("created_at", "updated_at", "uuid", "name", "type", "control_attributes", "reserved",
             "on_maintenance", "failover_segment_id")
NOTIFICATION_LIST = ("notification_uuid", "generated_time", "status", "type", "source_host_uuid",
                     "hostname", "payload")
NOTIFICATION_SHOW = ("created_at", "updated_at", "notification_uuid", "type", "status", "hostname",
                     "source_host_uuid", "source_node", "generated_time", "payload", "message",
                     "recovery_attempts", "recovery_steps", "vmoves")
INCIDENT_LIST = ("hostname", "status", "opened_at", "fenced", "fence_method", "fenced_at",
                 "closed_at", "notification_uuid")
INCIDENT_SHOW = ("hostname", "status", "host_uuid", "notification_uuid", "notification_status",
                 "source_node", "opened_at", "fenced", "fence_method", "fence_detail",
                 "fenced_at", "closed_at", "up_notification_uuid")
MEMBERS = ("name", "raft_address", "voter", "reachable")
STATUS = ("node", "role", "voter", "leader", "term", "commit_index", "applied_index", "log_size",
          "ready", "voters", "voter_set", "notifications", "membership", "members", "lease",
          "detection", "recovery", "monitors")
VOTERS = ("node", "raft_address", "forward_address", "failure_domain", "reachable", "leader")
ELIGIBLE = ("node", "raft_address", "forward_address", "failure_domain")

RECOVERY_METHODS = ("auto", "reserved_host", "auto_priority", "rh_priority")
NOTIFICATION_TYPES = ("COMPUTE_HOST", "PROCESS", "VM")

Call = Callable[[str, dict[str, Any]], dict[str, Any]]


class Refused(Exception):
    """The agent answered with an error; exit 1 with its reason."""


# --- argument types (a bad value is a usage error: exit 2) -------------------------------
def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, not {text!r}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"payload is not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"payload must be a JSON object, not {type(value).__name__}")
    return value


def iso_time(text: str) -> str:
    try:
        datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2016-01-01T01:00:00.000, not {text!r}") from None
    return text


def filters_arg(text: str) -> dict[str, str]:
    """``key=value`` or ``key1=value1;key2=value2`` (python-masakariclient's form)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"filter must be key=value, not {part!r}")
        out[key.strip()] = value.strip()
    return out


# --- parser ------------------------------------------------------------------------------
def _leaf_options() -> argparse.ArgumentParser:
    """Options every verb accepts after itself too (defaults stay with the top level)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-f", "--format", choices=("table", "json"), default=argparse.SUPPRESS,
                   help="output format (default: table)")
    p.add_argument("--socket", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                   help=f"agent admin socket (default: {DEFAULT_SOCKET})")
    return p


def _list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filters", type=filters_arg, action="append", default=[],
                   metavar="KEY=VALUE[;KEY=VALUE...]",
                   help="filter the records; repeat it or separate pairs with ';'")
    p.add_argument("--sort-key", "--sort_key", dest="sort_key", metavar="KEY",
                   help="field to sort by (default: created_at)")
    p.add_argument("--sort-dir", "--sort_dir", dest="sort_dir", choices=("asc", "desc"),
                   help="sort direction (default: desc)")
    p.add_argument("--sort", metavar="KEY[:DIR]",
                   help="python-masakariclient's form of --sort-key/--sort-dir")
    p.add_argument("--limit", type=positive_int, metavar="N", help="return at most N records")
    p.add_argument("--marker", metavar="ID", help="return records after this one")


def _bool_option(p: argparse.ArgumentParser, dest: str, *names: str, help: str) -> None:
    p.add_argument(*names, dest=dest, type=boolean, metavar="True|False", help=help)


def build_parser() -> argparse.ArgumentParser:
    leaf = _leaf_options()
    parser = argparse.ArgumentParser(
        prog="hagentctl", description="Administer the local hagent agent over its admin socket.")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"agent admin socket (default: {DEFAULT_SOCKET})")
    parser.add_argument("-f", "--format", choices=("table", "json"), default="table",
                        help="output format (default: table)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    verbs.add_parser("status", parents=[leaf], help="this agent: role, leader, term, indexes")
    verbs.add_parser("members", parents=[leaf],
                     help="cluster members: gossip state, incarnation, last heard, suspicion, "
                          "lease, voter")
    raft = verbs.add_parser("raft", parents=[leaf],
                            help="this node's Raft state; the voter set and its changes")
    raft_actions = raft.add_subparsers(dest="action", metavar="ACTION")
    raft_actions.add_parser("voters", parents=[leaf],
                            help="voters, eligible non-voters, the change in flight, the last one")
    p = raft_actions.add_parser("add-voter", parents=[leaf],
                                help="promote an eligible non-voter (it catches up first)")
    p.add_argument("node", metavar="NODE", help="node name (hagentctl raft voters lists them)")
    p = raft_actions.add_parser("remove-voter", parents=[leaf],
                                help="demote a voter; it goes on as a non-voter")
    p.add_argument("node", metavar="NODE", help="node name, or a voter's Raft address")

    # segment
    seg = verbs.add_parser("segment", help="failover segments").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = seg.add_parser("list", parents=[leaf], help="list segments")
    _list_options(p)
    p = seg.add_parser("show", parents=[leaf], help="show one segment")
    p.add_argument("segment", metavar="SEGMENT", help="name or uuid")
    p = seg.add_parser("create", parents=[leaf], help="create a segment")
    p.add_argument("name", metavar="NAME")
    p.add_argument("recovery_method", metavar="RECOVERY_METHOD", choices=RECOVERY_METHODS)
    p.add_argument("service_type", metavar="SERVICE_TYPE")
    p.add_argument("--description", metavar="TEXT")
    _bool_option(p, "enabled", "--is_enabled", "--is-enabled", "--enabled",
                 help="whether recovery runs for this segment (default True)")
    p = seg.add_parser("update", parents=[leaf], help="change a segment")
    p.add_argument("segment", metavar="SEGMENT", help="name or uuid")
    p.add_argument("--name", metavar="NAME")
    p.add_argument("--description", metavar="TEXT")
    p.add_argument("--recovery_method", "--recovery-method", dest="recovery_method",
                   choices=RECOVERY_METHODS, metavar="METHOD")
    p.add_argument("--service_type", "--service-type", dest="service_type", metavar="TYPE")
    _bool_option(p, "enabled", "--is_enabled", "--is-enabled", "--enabled",
                 help="whether recovery runs for this segment")
    p = seg.add_parser("delete", parents=[leaf], help="delete segments")
    p.add_argument("segment", metavar="SEGMENT", nargs="+", help="name or uuid")

    # host
    host = verbs.add_parser("host", help="hosts of a segment").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = host.add_parser("list", parents=[leaf], help="list the hosts of a segment")
    p.add_argument("segment", metavar="SEGMENT", help="segment name or uuid")
    _list_options(p)
    p = host.add_parser("show", parents=[leaf], help="show one host")
    p.add_argument("segment", metavar="SEGMENT", help="segment name or uuid")
    p.add_argument("host", metavar="HOST", help="host name or uuid")
    p = host.add_parser("create", parents=[leaf], help="add a host to a segment")
    p.add_argument("name", metavar="NAME", help="compute host name, as Nova knows it")
    p.add_argument("type", metavar="TYPE", help="host type, e.g. COMPUTE")
    p.add_argument("control_attributes", metavar="CONTROL_ATTRIBUTES")
    p.add_argument("segment", metavar="SEGMENT", help="segment name or uuid")
    _bool_option(p, "reserved", "--reserved", help="a reserved (spare) host")
    _bool_option(p, "on_maintenance", "--on_maintenance", "--on-maintenance",
                 help="on maintenance: its notifications are ignored")
    p = host.add_parser("update", parents=[leaf], help="change a host")
    p.add_argument("segment", metavar="SEGMENT", help="segment name or uuid")
    p.add_argument("host", metavar="HOST", help="host name or uuid")
    p.add_argument("--name", metavar="NAME")
    p.add_argument("--type", metavar="TYPE")
    p.add_argument("--control_attributes", "--control-attributes", dest="control_attributes",
                   metavar="TEXT")
    _bool_option(p, "reserved", "--reserved", help="a reserved (spare) host")
    _bool_option(p, "on_maintenance", "--on_maintenance", "--on-maintenance",
                 help="on maintenance: its notifications are ignored")
    p = host.add_parser("delete", parents=[leaf], help="remove a host")
    p.add_argument("segment", metavar="SEGMENT", help="segment name or uuid")
    p.add_argument("host", metavar="HOST", help="host name or uuid")

    # notification
    note = verbs.add_parser("notification", help="failure notifications").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = note.add_parser("list", parents=[leaf], help="list notifications")
    _list_options(p)
    p = note.add_parser("show", parents=[leaf],
                        help="show one notification, the steps taken and each instance's progress")
    p.add_argument("notification", metavar="NOTIFICATION", help="notification uuid")
    p = note.add_parser("create", parents=[leaf], help="submit a notification")
    p.add_argument("type", metavar="TYPE", choices=NOTIFICATION_TYPES,
                   help=f"one of {', '.join(NOTIFICATION_TYPES)}")
    p.add_argument("hostname", metavar="HOSTNAME")
    p.add_argument("generated_time", metavar="GENERATED_TIME", type=iso_time,
                   help="e.g. 2016-01-01T01:00:00.000")
    p.add_argument("payload", metavar="PAYLOAD", type=json_object, help="JSON object")

    # vmove (per-instance progress of a host recovery)
    vmove = verbs.add_parser("vmove", help="instances of a host recovery").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = vmove.add_parser("list", parents=[leaf],
                         help="one row per instance of a COMPUTE_HOST notification's recovery")
    p.add_argument("notification", metavar="NOTIFICATION", help="notification uuid")
    _list_options(p)

    # incident (host failures detected by the cluster)
    incident = verbs.add_parser("incident", help="host failures: STOPPED to fenced to STARTED"
                                ).add_subparsers(dest="action", metavar="ACTION", required=True)
    p = incident.add_parser("list", parents=[leaf], help="open incidents and each host's last")
    p.add_argument("--status", choices=("open", "closed"), help="only open or only closed ones")
    p = incident.add_parser("show", parents=[leaf], help="a host's open (else last) incident")
    p.add_argument("hostname", metavar="HOST", help="host name")
    return parser


# --- verbs -------------------------------------------------------------------------------
def _list_query(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    query: dict[str, Any] = {}
    filters: dict[str, str] = {}
    for f in ns.filters:
        filters.update(f)
    if filters:
        query["filters"] = filters
    sort_key, sort_dir = ns.sort_key, ns.sort_dir
    if ns.sort:
        if "," in ns.sort:
            parser.error("--sort: only one sort key is supported")
        key, _, direction = ns.sort.partition(":")
        if direction and direction not in ("asc", "desc"):
            parser.error(f"--sort: direction must be asc or desc, not {direction!r}")
        sort_key = sort_key or key
        sort_dir = sort_dir or direction or None
    for name, value in (("sort_key", sort_key), ("sort_dir", sort_dir), ("limit", ns.limit),
                        ("marker", ns.marker)):
        if value is not None:
            query[name] = value
    return query


def _given(ns: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(ns, n) for n in names if getattr(ns, n, None) is not None}


def _request(call: Call, verb: str, args: dict[str, Any]) -> Any:
    reply = call(verb, args)
    if not reply["ok"]:
        raise Refused(reply["error"])
    return reply["result"]


def _out(ns: argparse.Namespace, value: Any, table: Callable[[Any], str]) -> None:
    print(render.to_json(value) if ns.format == "json" else table(value))


def _columns(rows: list[dict[str, Any]], preferred: Sequence[str]) -> list[str]:
    """``preferred`` columns any row has, then the rest by name (the agent may add fields)."""
    present = {k for r in rows for k in r}
    return [c for c in preferred if c in present] + sorted(present - set(preferred))


def _fields(value: dict[str, Any]) -> str:
    """Field/Value table of a status document; voters and members shown one per line."""
    value = dict(value)
    if isinstance(value.get("voters"), list):
        value["voters"] = [
            (f"{v['node']} " if v.get("node") else "")
            + f"{v.get('address')} ({'reachable' if v.get('reachable') else 'unreachable'})"
            if isinstance(v, dict) else v for v in value["voters"]]
    if isinstance(value.get("voter_set"), dict):
        value["voter_set"] = _voter_set_lines(value["voter_set"])
    if isinstance(value.get("members"), list):
        value["members"] = [f"{m.get('name')} {m.get('state')} (incarnation {m.get('incarnation')})"
                            if isinstance(m, dict) else m for m in value["members"]]
    if isinstance(value.get("lease"), dict):
        lease = value["lease"]
        line = (f"seq {lease.get('seq')}, self-fence in {lease.get('deadline_in')} s, watchdog "
                f"{(lease.get('watchdog') or {}).get('detail')}")
        value["lease"] = line + (" (SELF-FENCED)" if lease.get("self_fenced") else "")
    if isinstance(value.get("recovery"), dict):
        value["recovery"] = recovery.engine_lines(value["recovery"])
    if isinstance(value.get("monitors"), dict):
        value["monitors"] = [
            f"{name}: {st.get('events_seen', 0)} events, {st.get('notifications_sent', 0)} sent, "
            f"{st.get('notifications_failed', 0)} failed, queue {st.get('queue_depth', 0)}"
            + (f", {st['restarts']} restarts" if "restarts" in st else "")
            for name, st in sorted(value["monitors"].items()) if isinstance(st, dict)]
    return render.show_table(value, STATUS)


def _voter_set_lines(doc: dict[str, Any]) -> list[str]:
    voters = ", ".join(v.get("node") or v.get("raft_address") for v in doc.get("voters") or [])
    return [f"voters: {voters or '(not bootstrapped)'}",
            f"eligible: {', '.join(doc.get('eligible') or []) or 'none'}",
            f"change: {change_line(doc.get('change'))}",
            f"last change: {last_change_line(doc.get('last_change'))}"]


def _voters_view(doc: dict[str, Any]) -> str:
    """``raft voters``: a table of voters, one of eligible non-voters, then the changes."""
    voters = [{**v, "leader": "yes" if v.get("leader") else "",
               "reachable": {True: "yes", False: "NO", None: "?"}[v.get("reachable")]}
              for v in doc.get("voters") or []]
    parts = [f"Voters ({len(voters)}, target {doc.get('target') or 'bootstrap count'}, "
             f"autopilot {'on' if doc.get('auto_replace') else 'off'}):",
             render.list_table(voters, VOTERS),
             f"Eligible non-voters ({len(doc.get('eligible') or [])}):",
             render.list_table(doc.get("eligible") or [], ELIGIBLE),
             f"Change in flight: {change_line(doc.get('change'))}",
             f"Last change: {last_change_line(doc.get('last_change'))}"]
    return "\n".join(parts)


def _change_done(ns: argparse.Namespace, answer: dict[str, Any]) -> None:
    if answer.get("result") == "in_progress":
        print(f"hagentctl: warning: {change_line(answer)} is still in flight; follow it with "
              f"`hagentctl raft voters`", file=sys.stderr)
    if ns.format == "json":
        print(render.to_json(answer))
    elif answer.get("result") != "in_progress":
        print(f"Voter {'added' if answer.get('op') == 'add' else 'removed'}: {answer.get('node')} "
              f"({answer.get('address')}, term {answer.get('term')})")


def _members_table(rows: list[dict[str, Any]]) -> str:
    """Gossip members (they have a ``state``); an agent without gossip lists its voters."""
    if any("state" in r for r in rows):
        return render.members_table(rows)
    return render.list_table(rows, _columns(rows, MEMBERS))


def run(ns: argparse.Namespace, parser: argparse.ArgumentParser, call: Call) -> int:
    """Carry out one parsed command; returns the exit status."""
    if ns.verb == "raft" and ns.action:
        verb = f"raft.{ns.action.replace('-', '_')}"
    elif ns.verb in ("status", "members", "raft"):
        verb = ns.verb
    else:
        verb = f"{ns.verb}.{ns.action}"

    if verb in ("status", "raft"):
        _out(ns, _request(call, verb, {}), _fields)
    elif verb == "raft.voters":
        _out(ns, _request(call, verb, {}), _voters_view)
    elif verb in ("raft.add_voter", "raft.remove_voter"):
        _change_done(ns, _request(call, verb, {"node": ns.node}))
    elif verb == "members":
        _out(ns, _request(call, verb, {}), _members_table)

    elif verb == "segment.list":
        _out(ns, _request(call, verb, _list_query(ns, parser)),
             lambda rows: render.list_table(rows, SEGMENT_LIST))
    elif verb == "segment.show":
        _out(ns, _request(call, verb, {"segment": ns.segment}),
             lambda r: render.show_table(r, SEGMENT_SHOW))
    elif verb in ("segment.create", "segment.update"):
        args = _given(ns, "name", "recovery_method", "service_type", "description", "enabled")
        if verb == "segment.update":
            if not args:
                parser.error("segment update: give at least one of --name, --description, "
                             "--recovery_method, --service_type, --is_enabled")
            args["segment"] = ns.segment
        _out(ns, _request(call, verb, args), lambda r: render.show_table(r, SEGMENT_SHOW))
    elif verb == "segment.delete":
        return _delete_each(ns, call, [("segment.delete", {"segment": s}, f"Segment deleted: {s}")
                                       for s in ns.segment])

    elif verb == "host.list":
        _out(ns, _request(call, verb, {"segment": ns.segment, **_list_query(ns, parser)}),
             lambda rows: render.list_table(rows, HOST_LIST))
    elif verb == "host.show":
        _out(ns, _request(call, verb, {"segment": ns.segment, "host": ns.host}),
             lambda r: render.show_table(r, HOST_SHOW, skip=("failover_segment",)))
    elif verb in ("host.create", "host.update"):
        args = _given(ns, "name", "type", "control_attributes", "reserved", "on_maintenance")
        if verb == "host.update" and not args:
            parser.error("host update: give at least one of --name, --type, --control_attributes, "
                         "--reserved, --on_maintenance")
        args["segment"] = ns.segment
        if verb == "host.update":
            args["host"] = ns.host
        _out(ns, _request(call, verb, args),
             lambda r: render.show_table(r, HOST_SHOW, skip=("failover_segment",)))
    elif verb == "host.delete":
        return _delete_each(ns, call, [("host.delete", {"segment": ns.segment, "host": ns.host},
                                        f"Host deleted: {ns.host}")])

    elif verb == "notification.list":
        _out(ns, _request(call, verb, _list_query(ns, parser)),
             lambda rows: render.list_table(rows, NOTIFICATION_LIST))
    elif verb == "notification.show":
        _out(ns, _request(call, verb, {"notification_uuid": ns.notification}),
             lambda r: recovery.notification_view(r, NOTIFICATION_SHOW))
    elif verb == "notification.create":
        answer = _request(call, verb, {"type": ns.type, "hostname": ns.hostname,
                                       "generated_time": ns.generated_time, "payload": ns.payload})
        if not answer.get("committed"):
            print("hagentctl: warning: not committed to the log yet; this node's spool keeps "
                  "resending it", file=sys.stderr)
        _out(ns, answer["notification"], lambda r: recovery.notification_view(r, NOTIFICATION_SHOW))
    elif verb == "vmove.list":
        _out(ns, _request(call, verb, {"notification_uuid": ns.notification,
                                       **_list_query(ns, parser)}), recovery.vmoves_table)
    elif verb == "incident.list":
        _out(ns, _request(call, verb, _given(ns, "status")),
             lambda rows: render.list_table(rows, INCIDENT_LIST))
    elif verb == "incident.show":
        _out(ns, _request(call, verb, {"hostname": ns.hostname}),
             lambda r: render.show_table(r, INCIDENT_SHOW))
    else:  # pragma: no cover - argparse only lets known verbs through
        parser.error(f"unknown verb {verb}")
    return 0


def _delete_each(ns: argparse.Namespace, call: Call, requests: list[tuple[str, dict, str]]) -> int:
    """Delete one by one like python-masakariclient; exit 1 if any was refused.

    JSON output is the list of names/uuids that were deleted."""
    deleted, status = [], 0
    for verb, args, message in requests:
        reply = call(verb, args)
        if reply["ok"]:
            deleted.append(args.get("host") or args.get("segment"))
            if ns.format != "json":
                print(message)
        else:
            print(f"hagentctl: {reply['error']}", file=sys.stderr)
            status = 1
    if ns.format == "json":
        print(render.to_json(deleted))
    return status


def main(argv: Sequence[str] | None = None, call: Call | None = None) -> int:
    """Entry point of ``hagentctl``; ``call`` replaces the socket client in tests."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if call is None:
        def call(verb: str, args: dict[str, Any]) -> dict[str, Any]:
            return client.call(ns.socket, verb, args)
    try:
        return run(ns, parser, call)
    except Refused as exc:
        print(f"hagentctl: {exc}", file=sys.stderr)
        return 1
    except client.AdminUnavailable as exc:
        print(f"hagentctl: {exc}", file=sys.stderr)
        return 1
    except protocol.ProtocolError as exc:
        print(f"hagentctl: bad answer from {ns.socket}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
