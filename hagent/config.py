"""Typed configuration for one agent, read from one TOML file.

Every knob is declared here once, with its default and the reason for that
default (the ``doc`` metadata). ``docs/configuration.md`` is generated from these
declarations and a test keeps it true. The parser (``load_config``) walks these
dataclasses, so an unknown key, a wrong type or a bad value stops start-up with
the key path and the reason, e.g. ``raft.voters[2]: "10.0.0.3" is not host:port``.

How a knob is declared, and what the loader does with each piece of metadata:

- ``doc``: the reason for the default; rendered into the docs and the example file.
- ``required``: no default; a file that omits the key is refused.
- ``choices``: the value must be one of these.
- ``check``: constraints on the value, each a function ``value -> reason | None``
  made with :func:`constraint` (its description goes into the docs).
- ``item_check``: the same, applied to every element of a list (errors name ``key[i]``).
- ``example``: a value for the generated example file where the default does not fit.

Constraints between keys of one table are :class:`Rule` objects in the table's
``rules`` class attribute, so validation stays a list of declarations rather than an
if-chain. All problems in a file are collected and raised together as ``ConfigError``.

Relative paths in the file are taken relative to the file's own directory, so a lab
directory can carry its config, secret and state side by side.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import sys
import tomllib
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

DEFAULT_CONFIG_PATH = Path("/etc/hagent/hagent.toml")

Check = Callable[[Any], "str | None"]


# --- declaring knobs ------------------------------------------------------------------

def knob(default, doc: str, **kw):
    """A config field: its default and why that default (rendered into the docs)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


def required(doc: str, **kw):
    """A config field without a default: start-up refuses a file that omits it."""
    return field(metadata={"doc": doc, "required": True, **kw})


def constraint(describes: str) -> Callable[[Check], Check]:
    """Mark ``fn(value) -> reason | None`` as a constraint; ``describes`` goes into the docs."""

    def mark(fn: Check) -> Check:
        fn.describes = describes  # type: ignore[attr-defined]
        return fn

    return mark


@dataclass(frozen=True)
class Rule:
    """A constraint between keys of one table.

    ``check`` receives the values of ``keys`` in order and returns the reason they are
    wrong, or None. The error is reported at the first key. A rule runs only when each of
    its keys passed its own checks, so one mistake is reported once.
    """

    keys: tuple[str, ...]
    check: Callable[..., "str | None"]
    doc: str


# --- value constraints ----------------------------------------------------------------

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_NAME_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def _q(value: Any) -> str:
    """Quote a value the way TOML writes it, so errors show exactly what was read."""
    return json.dumps(value, ensure_ascii=False)


def _hostname_problem(host: str, label: re.Pattern[str]) -> str | None:
    if len(host) > 253:
        return "longer than 253 characters"
    for part in host.split("."):
        if not label.match(part):
            return f"{_q(part)} is not a valid host name label" if part else "empty label"
    return None


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into (host without brackets, port).

    Raises ValueError saying what is wrong. Callers that hand addresses to libraries
    expecting a bare host (socket, pysyncobj) use this rather than ``rsplit(":")``.
    """
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise ValueError("no closing ']'")
        host, rest = value[1:close], value[close + 1:]
        if not rest.startswith(":"):
            raise ValueError("no :port after ']'")
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_q(host)} is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError("no :port")
        if not host:
            raise ValueError("empty host")
        if ":" in host:
            raise ValueError("an IPv6 address needs brackets: [addr]:port")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{_q(host)} is not an IPv4 address") from None
        else:
            problem = _hostname_problem(host, _LABEL)
            if problem:
                raise ValueError(f"host {problem}")
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"port {_q(port)} is not a number")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is outside 1-65535")
    return host, number


@constraint("`host:port` (IPv4, `[IPv6]` or host name; port 1-65535)")
def host_port(value: str) -> str | None:
    try:
        split_host_port(value)
    except ValueError as exc:
        return f"{_q(value)} is not host:port ({exc})"
    return None


@constraint("empty, or `host:port`")
def empty_or_host_port(value: str) -> str | None:
    return host_port(value) if value else None


@constraint("a host name: dot-separated labels of letters, digits, `-` and `_`")
def node_name(value: str) -> str | None:
    problem = _hostname_problem(value, _NAME_LABEL) if value else "it is empty"
    return f"{_q(value)} is not a valid node name ({problem})" if problem else None


@constraint("empty, or a group name")
def group_name(value: str) -> str | None:
    if value and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", value):
        return f"{_q(value)} is not a valid group name"
    return None


@constraint("> 0")
def positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


@constraint(">= 0")
def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


@constraint(">= 2")
def at_least_two(value: int) -> str | None:
    return None if value >= 2 else (f"must be 2 or more, got {value}: a snapshot ends with two "
                                     "log entries (pysyncobj refuses less)")


MAX_LEADER_FALLBACK = 3.0


@constraint(f"> 0 and <= {MAX_LEADER_FALLBACK:g}")
def fallback_window(value: float) -> str | None:
    if 0 < value <= MAX_LEADER_FALLBACK:
        return None
    return (f"must be in (0, {MAX_LEADER_FALLBACK:g}] seconds, got {value}: an isolated leader "
            "must stop acting within seconds, before the majority's new leader starts recovery")


@constraint("3 or 5 entries, no duplicates")
def voter_set(voters: list[str]) -> str | None:
    problems = []
    if len(voters) not in (3, 5):
        problems.append(
            f"{len(voters)} voters given; use 3 or 5: with fewer, one failed voter loses the "
            "majority and the cluster stops; an even count tolerates no more failures than "
            "one voter fewer")
    seen: dict[str, int] = {}
    for i, voter in enumerate(voters):
        key = voter.lower()
        if key in seen:
            problems.append(f"{_q(voter)} is listed twice (entries {seen[key]} and {i})")
        else:
            seen[key] = i
    return "; ".join(problems) or None


Z85_LENGTH = 40
_Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                          ".-:+=^!/*?&<>()[]{}@%$#")


@constraint(f"a Z85 CURVE public key ({Z85_LENGTH} characters, as `hagent keygen` prints)")
def z85_key(value: str) -> str | None:
    if len(value) != Z85_LENGTH:
        return (f"{_q(value)} is not a Z85 CURVE key: {len(value)} characters, not "
                f"{Z85_LENGTH} (copy the public key `hagent keygen` printed)")
    bad = sorted(set(value) - _Z85_ALPHABET)
    if bad:
        return f"{_q(value)} is not a Z85 CURVE key: {_q(''.join(bad))} is not in the Z85 alphabet"
    return None


@constraint("no duplicates")
def no_duplicates(values: list[str]) -> str | None:
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            return f"{_q(value)} is listed twice (entries {seen[value]} and {i})"
        seen[value] = i
    return None


# --- the configuration ------------------------------------------------------------------

@dataclass(frozen=True)
class NodeConfig:
    """This node: its name and where it keeps its files."""

    name: str = required(
        "This node's name: the compute host name Nova knows it by (`hypervisor_hostname`'s "
        "host). Every log record and every notification this node sends carries it.",
        check=(node_name,), example="compute-01")
    state_dir: Path = knob(
        Path("/var/lib/hagent"),
        "Raft journal, snapshots and the submission spool. systemd's `StateDirectory=` "
        "creates it; it must survive reboots.")
    run_dir: Path = knob(
        Path("/run/hagent"),
        "Runtime files (admin socket). systemd's `RuntimeDirectory=` creates it, cleared on reboot.")


def _bind_written_as_in_voters(bind: str, voters: list[str]) -> str | None:
    """A bind outside ``voters`` makes an eligible non-voter; one that names a voters entry
    written differently (``07170`` for ``7170``, a host name's case) is a typo that would
    quietly turn a voter into a non-voter."""
    if not bind or bind in voters:
        return None
    try:
        host, port = split_host_port(bind)
    except ValueError:
        return None  # the value check reports it
    for voter in voters:
        try:
            other_host, other_port = split_host_port(voter)
        except ValueError:
            continue
        if other_port == port and other_host.lower() == host.lower():
            return (f"{_q(bind)} is voters entry {_q(voter)} written differently: addresses "
                    "are compared exactly, so write it as in voters (a bind outside voters "
                    "makes an eligible non-voter)")
    return None


def _min_below_max(low: float, high: float) -> str | None:
    if low < high:
        return None
    return (f"{low} must be below election_timeout_max ({high}): the timeout is drawn from "
            "[min, max] and needs a spread to avoid split votes")


def _heartbeat_below_election(period: float, election_min: float) -> str | None:
    if 3 * period < election_min:
        return None
    return (f"{period} must be below a third of election_timeout_min ({election_min}): "
            "followers would time out a healthy leader after one or two late heartbeats "
            "(pysyncobj refuses to start otherwise)")


def _heartbeat_below_fallback(period: float, fallback: float) -> str | None:
    if period < fallback:
        return None
    return (f"{period} must be below leader_fallback_timeout ({fallback}): a leader would "
            "step down between two heartbeats (pysyncobj refuses to start otherwise)")


def _connection_outlives_election(timeout: float, election_max: float) -> str | None:
    if timeout >= election_max:
        return None
    return (f"{timeout} must be at least election_timeout_max ({election_max}): connections "
            "would be dropped before an election could notice the silence (pysyncobj refuses "
            "to start otherwise)")


@dataclass(frozen=True)
class RaftConfig:
    """The Raft log (pysyncobj): who votes, how it is secured, its timing and durability."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("bind", "voters"), _bind_written_as_in_voters,
             "`bind` outside `voters` is not a `voters` entry written differently"),
        Rule(("election_timeout_min", "election_timeout_max"), _min_below_max,
             "`election_timeout_min` < `election_timeout_max`"),
        Rule(("append_entries_period", "election_timeout_min"), _heartbeat_below_election,
             "3 × `append_entries_period` < `election_timeout_min`"),
        Rule(("append_entries_period", "leader_fallback_timeout"), _heartbeat_below_fallback,
             "`append_entries_period` < `leader_fallback_timeout`"),
        Rule(("connection_timeout", "election_timeout_max"), _connection_outlives_election,
             "`connection_timeout` >= `election_timeout_max`"),
    )

    voters: list[str] = required(
        "`host:port` Raft addresses of the 3 or 5 bootstrap voters. Every node lists the same "
        "set. It only starts the cluster: once the log holds a voter set (changed by "
        "`hagentctl raft add-voter`/`remove-voter` or the autopilot, `[voters]`), that set "
        "rules, and each node keeps its last copy in `STATE_DIR/voters.json` and starts from "
        "it (a config that disagrees is logged, never obeyed).",
        check=(voter_set,), item_check=(host_port,),
        example=["10.0.0.11:7170", "10.0.0.12:7170", "10.0.0.13:7170"])
    secret_file: Path = knob(
        Path("/etc/hagent/cluster.secret"),
        "Cluster secret that authenticates and encrypts Raft traffic (pysyncobj password). "
        "Start-up refuses a file other users may read or change (fix: `chmod 600`).")
    bind: str = knob(
        "",
        "This node's own Raft `host:port`, bound while it is a voter (never 0.0.0.0). Set "
        "on the bootstrap voters (their `voters` entry, written exactly as there) and on "
        "every node that may become a voter: outside the voter set such a node is an "
        "eligible non-voter, which the autopilot or an operator may promote. Empty: a "
        "non-voter that is never promoted.",
        check=(empty_or_host_port,), example="10.0.0.11:7170")
    leader_fallback_timeout: float = knob(
        2.5,
        "Seconds a leader that hears from no majority keeps acting as leader. pysyncobj's "
        "30 s default lets an isolated leader act long after the rest elected another; "
        "2.5 s keeps that window shorter than one failure-detection round (<= 3 s).",
        check=(fallback_window,))
    election_timeout_min: float = knob(
        0.8, "Lower bound of the randomised election timeout (s): four heartbeats, so a leader "
        "that misses up to three (a busy moment, a snapshot) keeps its followers. Measured: "
        "leader SIGKILL to the next commit p50 0.76-1.07 s, p99 1.3-1.5 s (goal <= 2 s).",
        check=(positive,))
    election_timeout_max: float = knob(
        1.6, "Upper bound of the randomised election timeout (s); a spread as wide as the lower "
        "bound avoids split votes.", check=(positive,))
    append_entries_period: float = knob(
        0.2, "Leader heartbeat period (s). Heartbeats are most of an idle voter's CPU (each is "
        "pickled and encrypted): 0.1 s kept voters at 0.6-0.9 % of a core, over the 0.5 % "
        "budget; 0.2 s halves that and still fits four in election_timeout_min.",
        check=(positive,))
    connection_timeout: float = knob(
        3.5, "Seconds without traffic before a Raft peer connection is dropped (pysyncobj default).",
        check=(positive,))
    compaction_min_entries: int = knob(
        20000, "Journal entries that start a snapshot (then the journal is cut to the entries "
        "after it). A forked child writes the snapshot, so the Raft thread only pays the fork "
        "(~5 ms at 100k notifications); what this bounds is the journal, kept whole in memory "
        "and replayed at restart (20k notifications: ~7 MB on disk, ~10 MB in memory, under "
        "1 s to replay), against how often a child serialises the whole state (~0.5 s of CPU "
        "at 100k notifications: every ~8 s at 2,500 commits/s).",
        check=(at_least_two,))
    compaction_min_time: float = knob(
        300.0, "Seconds after which a snapshot is taken anyway if anything was committed "
        "since the last one, however few entries (pysyncobj snapshots when the journal holds "
        "more than `compaction_min_entries` entries *or* this much time has passed). Not a "
        "minimum spacing: under load `compaction_min_entries` alone decides. Keeps the journal "
        "and restart replay short on a quiet cluster.",
        check=(positive,))
    fsync: bool = knob(
        True, "fsync journal entries and term/vote before acknowledging them. Off only for "
        "throwaway labs on tmpfs: without it a power loss of a majority can lose acknowledged "
        "notifications.")


@dataclass(frozen=True)
class ForwardConfig:
    """How non-voters reach the log: they keep no Raft state and send proposals, reads and
    status requests to a voter's forward endpoint (ZeroMQ ROUTER, CURVE-encrypted, only
    `security.allowed_keys` admitted). Each voter serves its own entry; non-voters connect
    to all of them and use the leader, failing over to the next voter."""

    endpoints: list[str] = knob(
        [],
        "`host:port` forward endpoints of the voters, one per `raft.voters` entry and in the "
        "same order. A voter binds exactly its own entry (never 0.0.0.0). Empty: no "
        "forwarding, which only a cluster without non-voters can afford.",
        check=(no_duplicates,), item_check=(host_port,),
        example=["10.0.0.11:7171", "10.0.0.12:7171", "10.0.0.13:7171"])
    bind: str = knob(
        "",
        "This node's own forward endpoint `host:port`, served while it is a voter. Empty on "
        "a bootstrap voter means its `endpoints` entry; an eligible non-voter (`raft.bind` "
        "outside `raft.voters`) must set it, since it is not in `endpoints`: it registers it, "
        "and once promoted the non-voters learn it from the log.",
        check=(empty_or_host_port,))
    timeout: float = knob(
        3.0,
        "Seconds a non-voter waits for one voter's answer before asking the next. A commit "
        "takes milliseconds and an election ~1 s (median); 3 s rides out most elections on "
        "the same voter, and 3 voters x 3 s stays below `notifications.submit_timeout`.",
        check=(positive,))


@dataclass(frozen=True)
class SecurityConfig:
    """CURVE keys for forwarding and gossip: this node's key pair and the public keys it trusts."""

    key_file: Path = knob(
        Path("/etc/hagent/node.key"),
        "This node's CURVE key pair, written by `hagent keygen --out FILE` (mode 0600). "
        "Start-up refuses a file its group or other users may read. Needed when "
        "`forward.endpoints` or `gossip.bind` is set.")
    allowed_keys: list[str] = knob(
        [],
        "Z85 public keys allowed to talk to this node's gossip socket and (on a voter) its "
        "forward endpoint: the allow-list, one key per node of the cluster (`hagent keygen` "
        "prints it). Any other key is refused during the handshake; remove a key to lock its "
        "node out.",
        check=(no_duplicates,), item_check=(z85_key,),
        example=["?^hp}TB@SZW4PO4o@#gJ*>601B]Zjp8]lWSc*AMm", "[d@y&4jL![?ZCz/xBM>kh:Q6/1854yv=IBx{SurV"])
    voter_keys: list[str] = knob(
        [],
        "Z85 public keys of the voters, one per `raft.voters` entry and in the same order: a "
        "non-voter only talks to a forward endpoint that proves it holds that voter's key.",
        item_check=(z85_key,),
        example=["6Dh>1]T/*wB24WZW*]UGy){}I0ML[F{%IDv)4%1<", "NkIz@ym?%?57[]mjkC-LpcX)Kw.9fk(t-9kn#&mT",
                 "9zIE&8ZG4B.Q41A].]iPLrm5WLAjM}u=GwFLMNai"])


@dataclass(frozen=True)
class AdminConfig:
    """The admin socket `hagentctl` uses."""

    socket: Path = knob(
        Path("/run/hagent/hagent.sock"),
        "Unix socket `hagentctl` talks to; created mode 0660.")
    group: str = knob(
        "",
        "Group owning the admin socket; its members (and root) may use it. Empty: the "
        "agent's own primary group.", check=(group_name,))


@dataclass(frozen=True)
class StatusConfig:
    """The read-only HTTP status endpoint (`/status`, `/health`, `/leader`, `/metrics`)."""

    bind: str = knob(
        "127.0.0.1:7180",
        "Read-only HTTP status endpoint `host:port`. Loopback by default: cluster state is "
        "not for the whole network unless an operator opens it.", check=(host_port,))
    max_lag: int = knob(
        100,
        "`/health` answers 200 while this node's applied index is within this many entries "
        "of the leader's commit index: a replica further behind serves stale state.",
        check=(non_negative,))


@dataclass(frozen=True)
class NotificationConfig:
    """Notifications: duplicate detection and how this node delivers its own."""

    duplicate_interval: float = knob(
        180.0,
        "Seconds of generated_time within which the same type + host + payload is `ignored` "
        "as a duplicate (Masakari's `duplicate_notification_detection_interval`).",
        check=(non_negative,))
    resend_interval: float = knob(
        1.0,
        "Seconds between resends of a spooled notification the log has not confirmed; "
        "short so a leader change costs about one election, not minutes.", check=(positive,))
    submit_timeout: float = knob(
        10.0,
        "Seconds `notification create` waits for the log to commit before answering with "
        "the spooled (still pending) record; the spool keeps resending after that.",
        check=(positive,))
    max_in_flight: int = knob(
        64,
        "Proposals of this node's own notifications awaiting the log at once; the rest wait "
        "(already spooled) for a slot. Bounds the burst a restart with a deep spool sends the "
        "leader. Measured (`benchmarks/submit_path`, 128 connections on one node, 3 voters on "
        "2 cores): 16 cost 25-30 % of commits/s, 128 and 256 gained nothing over 64.",
        check=(positive,))


@dataclass(frozen=True)
class LoggingConfig:
    """Logging to stderr (journald under systemd)."""

    level: str = knob("INFO", "Log level (DEBUG, INFO, WARNING, ERROR).", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _keys_per_seed(seeds: list[str], seed_keys: list[str]) -> str | None:
    if len(seeds) == len(seed_keys):
        return None
    return (f"seeds has {len(seeds)} entries but seed_keys has {len(seed_keys)}: give the "
            f"public key of each seed (`hagent keygen` prints it), in the same order")


@dataclass(frozen=True)
class GossipConfig:
    """Failure detection: SWIM gossip with Lifeguard suspicion over ZeroMQ (docs/membership.md).

    Every node takes part; it learns the others from the seeds and from gossip. Traffic is
    CURVE-encrypted and only the keys in `security.allowed_keys` are admitted. The protocol's
    timing knobs live with the protocol (`hagent/membership/knobs.py`, docs/membership.md)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("seeds", "seed_keys"), _keys_per_seed,
             "`seed_keys` has one public key per `seeds` entry"),
    )

    bind: str = knob(
        "",
        "`host:port` this node's gossip socket binds (never 0.0.0.0). Empty: the node takes "
        "no part in failure detection, so nobody notices it die; only for tests of the log "
        "alone (start-up logs a warning).",
        check=(empty_or_host_port,), example="10.0.0.11:7172")
    advertise: str = knob(
        "",
        "`host:port` the other nodes use to reach this one, when it differs from `bind` (NAT). "
        "Empty: `bind`.", check=(empty_or_host_port,))
    seeds: list[str] = knob(
        [],
        "`host:port` gossip addresses this node contacts at start to learn the cluster (a full "
        "state exchange). The voters' gossip addresses are a good choice: they are listed in "
        "every config anyway. A seed that is down is retried; one reachable seed is enough.",
        check=(no_duplicates,), item_check=(host_port,),
        example=["10.0.0.11:7172", "10.0.0.12:7172", "10.0.0.13:7172"])
    seed_keys: list[str] = knob(
        [],
        "Z85 public keys of the seeds, one per `seeds` entry and in the same order: CURVE "
        "needs the server's key before it connects. Other members' keys travel in gossip and "
        "are used only if they are in `security.allowed_keys`.",
        item_check=(z85_key,),
        example=["6Dh>1]T/*wB24WZW*]UGy){}I0ML[F{%IDv)4%1<", "NkIz@ym?%?57[]mjkC-LpcX)Kw.9fk(t-9kn#&mT",
                 "9zIE&8ZG4B.Q41A].]iPLrm5WLAjM}u=GwFLMNai"])


def _margin_below_ttl(ttl: float, margin: float) -> str | None:
    if margin < ttl:
        return None
    return f"{margin:g} must be below lease_ttl ({ttl:g}): the watchdog fires lease_ttl - safety_margin after a renewal"


def _two_renewals_per_window(ttl: float, margin: float, interval: float) -> str | None:
    if 2 * interval <= ttl - margin:
        return None
    return (f"{interval:g} s leaves fewer than two renewals in lease_ttl - safety_margin "
            f"({ttl - margin:g} s): one lost renewal would fence a healthy host; use at most "
            f"{(ttl - margin) / 2:g}")


def _fencing_is_safe(mode: str, driver: str, unsafe: bool) -> str | None:
    if unsafe or (mode != "off" and driver != "none"):
        return None
    return (f"watchdog_mode = {_q(mode)} with watchdog_driver = {_q(driver)} means a host cut "
            f"off from the log keeps running its VMs while they are evacuated elsewhere; "
            f"set unsafe_no_fencing = true only in a lab")


@dataclass(frozen=True)
class FencingConfig:
    """Leases and self-fencing (ARCHITECTURE.md §3 rule 2, docs/fencing.md).

    Each node renews a lease through the log every `renew_interval`. A node that has not
    seen a renewal committed within `lease_ttl - safety_margin` of sending it is fenced by
    its watchdog; the leader treats a host as fenced only `lease_ttl` after it applied that
    host's latest renewal (and after it became leader). The margin absorbs clock-rate
    differences and the time a renewal takes to reach the leader."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("lease_ttl", "safety_margin"), _margin_below_ttl, "`safety_margin` < `lease_ttl`"),
        Rule(("lease_ttl", "safety_margin", "renew_interval"), _two_renewals_per_window,
             "2 × `renew_interval` <= `lease_ttl` - `safety_margin`"),
        Rule(("watchdog_mode", "watchdog_driver", "unsafe_no_fencing"), _fencing_is_safe,
             "`watchdog_mode = \"off\"` or `watchdog_driver = \"none\"` needs `unsafe_no_fencing = true`"),
    )

    lease_ttl: float = knob(
        15.0,
        "Seconds after the leader applied a host's latest renewal before it may treat the host "
        "as fenced (and recovery may start its VMs elsewhere). Far below Masakari's minutes; "
        "long enough that a leader election (~1-3.5 s) and a lost renewal cost no false fence.",
        check=(positive,))
    safety_margin: float = knob(
        5.0,
        "Seconds by which a node's watchdog fires before the leader's `lease_ttl` runs out: "
        "covers the renewal's trip to the leader and clock-rate drift. The watchdog fires "
        "`lease_ttl - safety_margin` (10 s) after the latest committed renewal was sent.",
        check=(positive,))
    renew_interval: float = knob(
        2.5,
        "Seconds between lease renewals: a quarter of `lease_ttl - safety_margin`, so a renewal "
        "may fail three times before the watchdog fires. At `lease_ttl` / 3 (5 s) a healthy "
        "non-voter fenced itself once in 21 leader kills (benchmarks/detection_lab): its last "
        "committed renewal was sent just before the kill, and the election plus a 3 s timeout "
        "on the dead voter used up the one period left. Renewals are batched on the leader "
        "(1,000 hosts at 2.5 s: ~400 renewals/s in ~20 log entries/s).", check=(positive,))
    watchdog_mode: str = knob(
        "required",
        "As Patroni: `required` refuses to start without a working watchdog; `automatic` uses "
        "one if present and logs a warning if not (the host then cannot fence itself); `off` "
        "uses none (needs `unsafe_no_fencing`).",
        choices=("required", "automatic", "off"))
    watchdog_driver: str = knob(
        "linux",
        "`linux`: the kernel watchdog device (`watchdog_device`), which resets the host if the "
        "agent stops feeding it; `lab`: the lab's simulated host power switch; `none`: no "
        "fencing at all (needs `unsafe_no_fencing`).", choices=("linux", "lab", "none"))
    watchdog_device: Path = knob(
        Path("/dev/watchdog"),
        "The watchdog device the `linux` driver opens (softdog or a hardware watchdog).")
    lab_power_socket: str = knob(
        "",
        "Unix socket of the lab's simulated host power switch (`lab` driver only; the lab "
        "writes it).")
    bmc_inventory: str = knob(
        "",
        "TOML file of `[hosts.NAME]` tables naming each host's BMC fence driver (`ipmi` or "
        "`redfish`; docs/fence-drivers.md). With an entry, the leader powers a dead host off "
        "through its BMC and treats it as fenced as soon as the BMC confirms power-off, "
        "without waiting for the lease. The same file on every voter. Empty: leases only.")
    unsafe_no_fencing: bool = knob(
        False,
        "Allow running without self-fencing (`watchdog_mode = \"off\"` or driver `none`). "
        "Every recovery is then logged as unsafe: a partitioned host may still run the VMs "
        "being evacuated. Labs only.")


@dataclass(frozen=True)
class DetectionConfig:
    """How gossip verdicts become COMPUTE_HOST notifications in the log (docs/detection.md)."""

    up_damping: float = knob(
        30.0,
        "Seconds a host that was declared down must be alive in gossip (and renewing its "
        "lease) before the leader commits its STARTED notification: a flapping host produces "
        "one STOPPED and one STARTED per damping window, not a storm.", check=(positive,))


@constraint("empty, or a process list in masakari-monitors' process_list.yaml format")
def process_list_yaml(text: str) -> str | None:
    if not text.strip():
        return None
    from hagent.monitors.process_list import ProcessListError, parse_process_list

    try:
        parse_process_list(text, "process_list_inline")
    except ProcessListError as exc:
        return "; ".join(exc.problems)
    return None


@constraint("a user name or numeric uid")
def user_name(value: str) -> str | None:
    if re.fullmatch(r"[0-9]+|[A-Za-z_][A-Za-z0-9_.-]*\$?", value):
        return None
    return f"{_q(value)} is not a user name or numeric uid"


@constraint("a libvirt connection URI")
def libvirt_connection_uri(value: str) -> str | None:
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:/.*", value):
        return None
    return f"{_q(value)} is not a libvirt URI such as \"qemu:///system\""


def _backoff_ordered(low: float, high: float) -> str | None:
    if low <= high:
        return None
    return f"{low:g} must not exceed instance_reconnect_max ({high:g})"


def _ping_fits_interval(interval: float, timeout: float) -> str | None:
    if timeout < interval:
        return None
    return (f"{interval:g} must be above introspective_timeout ({timeout:g}): a round of "
            "pings would not end before the next one starts")


@dataclass(frozen=True)
class MonitorsConfig:
    """Node-local monitors (docs/monitors.md), as masakari-monitors has them: the process
    monitor restarts compute-node processes and reports those it cannot restart (and when
    they run again); the instance monitor turns libvirt events into VM notifications; the
    introspective monitor pings QEMU guest agents. Each submits through this node's spool,
    so what it reports survives a leader change or an agent restart. Keys are grouped by
    monitor: `process_*`, `instance_*`, `introspective_*`; `libvirt_uri` serves the last two."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("instance_reconnect_min", "instance_reconnect_max"), _backoff_ordered,
             "`instance_reconnect_min` <= `instance_reconnect_max`"),
        Rule(("introspective_interval", "introspective_timeout"), _ping_fits_interval,
             "`introspective_timeout` < `introspective_interval`"),
    )

    process_enabled: bool = knob(
        False,
        "Run the process monitor. Off by default: it needs a process list written for the "
        "host (which processes, how to restart them); on compute nodes list at least "
        "nova-compute and libvirtd.")
    process_list: Path = knob(
        Path("/etc/hagent/process_list.yaml"),
        "masakari-monitors' `process_list.yaml`, read as it is (an existing file can be used "
        "unchanged). Read at start-up; a bad file stops start-up with the entry and field "
        "named. Ignored when `process_list_inline` is set.")
    process_list_inline: str = knob(
        "",
        "The same YAML list written inline (a TOML multi-line string), used instead of "
        "`process_list` when not empty; checked when the config is loaded.",
        check=(process_list_yaml,))
    process_check_interval: float = knob(
        5.0,
        "Seconds between two looks at the process table (masakari-monitors' "
        "`check_interval`): a dead process is noticed within this time. One look reads every "
        "process's command line (a few ms on a busy host).", check=(positive,))
    process_restart_retries: int = knob(
        3,
        "Restart attempts after the first one fails (masakari-monitors' `restart_retries`): "
        "1 + 3 attempts before the process is reported STOPPED, which disables the host.",
        check=(non_negative,))
    process_restart_interval: float = knob(
        5.0,
        "Seconds an attempt waits for the process to appear before the next attempt "
        "(masakari-monitors' `restart_interval`); the process is looked for throughout, so a "
        "fast restart is confirmed at once.", check=(positive,))
    process_command_timeout: float = knob(
        90.0,
        "Seconds any one start, restart, pre or post command may run before it is killed and "
        "the attempt counts as failed; systemd's own default start timeout, so a "
        "`systemctl restart` systemd still waits for is not cut short.", check=(positive,))
    process_command_user: str = knob(
        "nobody",
        "User that runs the commands of entries with `run_as_root: False` when the agent runs "
        "as root (masakari-monitors ran them as its own unprivileged user). Entries with "
        "`run_as_root: True` run as the agent's user.", check=(user_name,))
    libvirt_uri: str = knob(
        "qemu:///system",
        "libvirt connection of the instance and introspective monitors (masakari-monitors' "
        "`connection_uri`); the lab uses `test+unix:///default?socket=...`.",
        check=(libvirt_connection_uri,))
    instance_enabled: bool = knob(
        False,
        "Run the instance monitor: libvirt lifecycle, reboot, watchdog and I/O error events "
        "become VM notifications, mapped as masakari-monitors' event filter table maps them. "
        "Off by default so that an agent on a host without libvirtd does not retry a "
        "connection forever; turn it on on compute nodes.")
    instance_reconnect_min: float = knob(
        1.0,
        "Seconds before the first reconnection attempt after libvirtd went away; each failed "
        "attempt doubles the wait up to `instance_reconnect_max`. The gap is reported.",
        check=(positive,))
    instance_reconnect_max: float = knob(
        30.0,
        "Longest wait between reconnection attempts: a libvirtd restart (seconds) costs at "
        "most one such wait of events, and a long outage costs one attempt per this period.",
        check=(positive,))
    instance_queue_size: int = knob(
        10000,
        "Events held between the libvirt callback and the spool. The callback never waits "
        "while there is room, so a storm slows nothing; when full it waits (nothing is "
        "dropped). 10 s of a 1,000 events/s storm fit, longer than a leader election.",
        check=(positive,))
    introspective_enabled: bool = knob(
        False,
        "Run the introspective monitor: `guest-ping` through the QEMU guest agent of every "
        "domain that has a guest agent channel. Off by default, as in masakari-monitors.")
    introspective_interval: float = knob(
        10.0,
        "Seconds between two pings of one guest (masakari-monitors' "
        "`guest_monitoring_interval`): longer than a guest takes to power off gracefully, so "
        "a shutdown is not mistaken for a hung agent.", check=(positive,))
    introspective_timeout: float = knob(
        2.0,
        "Seconds a `guest-ping` may take before it counts as a failure (masakari-monitors' "
        "`guest_monitoring_timeout`).", check=(positive,))
    introspective_failures: int = knob(
        3,
        "Consecutive failed pings that report the guest (a VM notification "
        "QEMU_GUEST_AGENT_ERROR; masakari-monitors' `guest_monitoring_failure_threshold`). "
        "A successful ping resets the count.", check=(positive,))
    introspective_concurrency: int = knob(
        8,
        "Pings in flight at once. A hung guest holds one slot for `introspective_timeout`, "
        "so it cannot stall the others; 8 slots finish a round over 40 hung guests within "
        "the 10 s interval (40 / 8 x 2 s).", check=(positive,))


@constraint("not empty, at most 255 characters (Nova's limit)")
def nova_text(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if len(value) > 255:
        return f"{len(value)} characters; Nova accepts at most 255"
    return None


def _retry_backoff_ordered(low: float, high: float) -> str | None:
    if low <= high:
        return None
    return f"{low:g} must not exceed retry_interval_max ({high:g})"


def _poll_below_deadlines(poll: float, evacuate: float, stop: float, start: float) -> str | None:
    shortest = min(evacuate, stop, start)
    if poll < shortest:
        return None
    return (f"{poll:g} must be below the shortest of evacuate_timeout, stop_timeout and "
            f"start_timeout ({shortest:g}): Nova would be looked at once or not at all "
            "before the deadline")


@dataclass(frozen=True)
class RecoveryConfig:
    """Recovery through Nova (docs/recovery-nova.md). The Raft leader runs Masakari's
    workflows: host failure (force the compute service down, disable it, evacuate), instance
    failure (stop, start) and process failure (disable the compute service), calling Nova
    through openstacksdk with the credentials of one clouds.yaml entry. Keys named after a
    Masakari option keep its meaning and default, except where said. What hagent does
    differently: no fixed sleeps (each step polls Nova until it shows the state waited for,
    up to a deadline), the compute service is forced down as soon as the host is fenced
    (Masakari waits 180 s instead), and evacuations run 16 at a time (Masakari: 3)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("retry_interval", "retry_interval_max"), _retry_backoff_ordered,
             "`retry_interval` <= `retry_interval_max`"),
        Rule(("poll_interval", "evacuate_timeout", "stop_timeout", "start_timeout"),
             _poll_below_deadlines,
             "`poll_interval` < each of `evacuate_timeout`, `stop_timeout`, `start_timeout`"),
    )

    enabled: bool = knob(
        True,
        "Run recovery on this node while it is the Raft leader (only voters lead). Off: "
        "notifications are still committed and listed, but stay `new` until a leader with "
        "recovery on takes them, so turn it off on every voter only to stop all recovery.")
    clouds_yaml: Path = knob(
        Path("/etc/hagent/clouds.yaml"),
        "openstacksdk's clouds.yaml holding the Nova admin credentials (what Masakari's "
        "`os_privileged_user_*` options held). Only this file is read: no `OS_*` variables, "
        "no ~/.config/openstack. Voters read it; keep it mode 0600 (a warning is logged "
        "otherwise). Relative paths are taken from this config file's directory.")
    cloud: str = knob(
        "hagent",
        "The entry under `clouds:` in `clouds_yaml`. The user needs the admin role: compute "
        "services, other projects' servers and evacuation are admin-only in Nova.",
        check=(nova_text,))
    ha_enabled_instance_metadata_key: str = knob(
        "HA_Enabled",
        "Server metadata key that marks an HA instance when set to `True` (Masakari's "
        "`[host_failure]` and `[instance_failure]` option of this name, one key for both here).",
        check=(nova_text,))
    evacuate_all_instances: bool = knob(
        True,
        "Evacuate every instance of a failed host, HA instances first (Masakari's "
        "`[host_failure] evacuate_all_instances`, default true); false: only HA instances.")
    ignore_instances_in_error_state: bool = knob(
        False,
        "Leave instances in ERROR on a failed host where they are (Masakari's `[host_failure] "
        "ignore_instances_in_error_state`, default false: they are evacuated too).")
    process_all_instances: bool = knob(
        False,
        "Recover (stop, start) every instance a VM notification names (Masakari's "
        "`[instance_failure] process_all_instances`, default false: only HA instances, the "
        "others' notifications end `ignored`).")
    add_reserved_host_to_aggregate: bool = knob(
        False,
        "`reserved_host` recovery also adds the reserved host to the failed host's aggregates "
        "(Masakari's `[host_failure] add_reserved_host_to_aggregate`, default false).")
    service_disable_reason: str = knob(
        "hagent detected host failed.",
        "Disabled reason Nova shows for the compute service of a failed host (Masakari's "
        "`[host_failure] service_disable_reason`, \"Masakari detected host failed.\").",
        check=(nova_text,))
    process_disable_reason: str = knob(
        "hagent detected process failed.",
        "Disabled reason for the compute service of a host whose nova-compute process failed "
        "(Masakari's `[process_failure] service_disable_reason`). A STARTED notification "
        "re-enables the service only while this is still its reason, so a service an operator "
        "disabled stays disabled.",
        check=(nova_text,))
    max_concurrent_evacuations: int = knob(
        16,
        "Evacuations in flight at once (Masakari's `host_failure_recovery_threads`: 3). Nova "
        "accepts an evacuation in ~0.06 s and the instance is ACTIVE on its new host 3-4 s "
        "later (real Nova 34, docs/recovery-nova.md), so 3 at a time take ~2 minutes for 100 "
        "instances and 16 about 25 s; the cost is load on nova-conductor and the scheduler.",
        check=(positive,))
    poll_interval: float = knob(
        0.5,
        "Seconds between two looks at Nova while a step waits for a state (instance ACTIVE on "
        "another host, stopped, started). Masakari's `verify_interval` is 1 s; half of it "
        "trims the wait after a 3 s evacuation for one GET per waiting instance per look.",
        check=(positive,))
    evacuate_timeout: float = knob(
        90.0,
        "Seconds an evacuated instance has to reach its previous state on another host before "
        "its evacuation counts as failed (Masakari's `wait_period_after_evacuation`, 90 s). "
        "A deadline, not a wait: the step ends as soon as Nova shows the state.",
        check=(positive,))
    stop_timeout: float = knob(
        180.0,
        "Seconds a stopped instance has to reach SHUTOFF (Masakari's "
        "`wait_period_after_power_off`, 180 s; Nova itself waits up to 60 s for a clean "
        "guest shutdown before powering off). A deadline, not a wait.", check=(positive,))
    start_timeout: float = knob(
        60.0,
        "Seconds a started instance has to reach ACTIVE (Masakari's "
        "`wait_period_after_power_on`, 60 s). A deadline, not a wait.", check=(positive,))
    nova_timeout: float = knob(
        30.0,
        "Seconds one Nova or Keystone call may take (each HTTP request, and the whole call "
        "with authentication). Calls take milliseconds; a call that hangs usually waits on "
        "nova-api's RPC to a dead compute (60 s, `rpc_response_timeout`). A timed-out call "
        "counts as retryable: the step asks Nova what happened before repeating it.",
        check=(positive,))
    max_retries: int = knob(
        5,
        "Retries of a notification whose recovery ended in `error` (a retryable Nova failure) "
        "before it is `failed` with the reason. Masakari retries an `error` notification once, "
        "on its next `process_unfinished_notifications_interval` (120 s) pass; five retries "
        "with backoff (5+10+20+40+80 s) ride out a Nova API restart.",
        check=(non_negative,))
    retry_interval: float = knob(
        5.0,
        "Seconds before the first retry of a notification in `error`; each further retry "
        "waits twice as long, up to `retry_interval_max`.", check=(positive,))
    retry_interval_max: float = knob(
        120.0,
        "Longest wait between two retries (Masakari's "
        "`process_unfinished_notifications_interval`, 120 s, which is its only retry "
        "spacing).", check=(positive,))
    notification_expiry: float = knob(
        86400.0,
        "Seconds after its generated_time when a notification still `new` or in `error` is "
        "`failed` as expired instead of recovered (Masakari's "
        "`notifications_expired_interval`, 1 day): acting on a day-old failure would move "
        "instances their owners may have recovered by hand. Masakari expires `running` ones "
        "too, as its engine can lose them; hagent's leader resumes those.", check=(positive,))
    restore_host_on_return: bool = knob(
        False,
        "When a fenced host is back and renewing its lease, unset force down, re-enable its "
        "compute service and clear its maintenance flag. Off by default, as Masakari leaves "
        "a recovered host on maintenance until an operator runs `hagentctl host update "
        "--no-maintenance`.")


@constraint("0 (the number of bootstrap voters), 3 or 5")
def voter_target(value: int) -> str | None:
    if value in (0, 3, 5):
        return None
    return (f"must be 0, 3 or 5, got {value}: an even count tolerates no more failures than "
            "one voter fewer, and fewer than 3 lose the majority with one failure")


_DOMAIN = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")


@constraint("empty, or up to 63 letters, digits, `_`, `.`, `:` and `-`")
def failure_domain_label(value: str) -> str | None:
    if not value or _DOMAIN.match(value):
        return None
    return f"{_q(value)} is not a failure domain label (letters, digits, _ . : -; at most 63)"


@dataclass(frozen=True)
class VotersConfig:
    """The Raft voter set as the cluster manages it (docs/voters.md): the leader adds and
    removes voters one change at a time, and replaces a voter whose host is dead and fenced
    by the best eligible non-voter (a node with `raft.bind` outside the voter set)."""

    auto_replace: bool = knob(
        True,
        "Let the leader replace a voter whose host was declared dead and fenced by an eligible "
        "non-voter, keeping `target` voters. On by default: a voter set of compute hosts "
        "loses a member whenever a host dies, and one more loss would stop the log, so no "
        "recovery could run. Off: only `hagentctl raft add-voter`/`remove-voter` change it.")
    target: int = knob(
        0,
        "How many voters the autopilot keeps. 0: as many as `raft.voters` lists (3 or 5). "
        "5 survives two host failures at once; 3 costs the leader less per commit.",
        check=(voter_target,))
    max_catchup_lag: int = knob(
        100,
        "A non-voter being promoted counts toward quorum only once its applied index is "
        "within this many entries of the leader's commit (its reports are fresh): added "
        "earlier, a lagging voter would hold back every commit that needs its "
        "acknowledgement. 100 entries is well under a second of catch-up at hagent's rates.",
        check=(non_negative,))
    catchup_timeout: float = knob(
        60.0,
        "Seconds a promotion may take from its start until the candidate has caught up; "
        "after that it is aborted (the candidate goes back to being a non-voter) and the "
        "autopilot may try another. A fresh node installs a snapshot and replays the journal "
        "tail in a few seconds; 60 s allows a large state on a slow link.",
        check=(positive,))
    failure_domain: str = knob(
        "",
        "This node's failure domain (rack, room, power feed). The autopilot prefers a "
        "replacement in a domain no other voter is in, so one outage cannot take a majority. "
        "Empty: no label; every node counts as its own domain.",
        check=(failure_domain_label,), example="rack-a")


def _endpoints_per_voter(forward: ForwardConfig, raft: RaftConfig) -> str | None:
    if not forward.endpoints or len(forward.endpoints) == len(raft.voters):
        return None
    return (f"endpoints has {len(forward.endpoints)} entries but raft.voters has "
            f"{len(raft.voters)}: give one forward endpoint per voter, in the same order")


def _keys_per_voter(security: SecurityConfig, raft: RaftConfig) -> str | None:
    if not security.voter_keys or len(security.voter_keys) == len(raft.voters):
        return None
    return (f"voter_keys has {len(security.voter_keys)} entries but raft.voters has "
            f"{len(raft.voters)}: give one public key per voter, in the same order")


def _non_voter_can_forward(forward: ForwardConfig, security: SecurityConfig,
                           raft: RaftConfig) -> str | None:
    if raft.bind and raft.bind in raft.voters:
        return None
    missing = [name for name, value in (("forward.endpoints", forward.endpoints),
                                        ("security.voter_keys", security.voter_keys)) if not value]
    if not missing:
        return None
    return (f"this node is a non-voter (raft.bind is not in raft.voters) and keeps no Raft "
            f"state: it reaches the log only through the voters' forward endpoints, so set "
            f"{' and '.join(missing)}")


def _eligible_has_forward_bind(forward: ForwardConfig, raft: RaftConfig) -> str | None:
    if not raft.bind or raft.bind in raft.voters or not forward.endpoints or forward.bind:
        return None
    return (f"raft.bind {_q(raft.bind)} is not in raft.voters, so this node is an eligible "
            "non-voter that may be promoted; set forward.bind to the forward endpoint it will "
            "serve as a voter (non-voters learn it from the log)")


def _forward_bind_is_own_entry(forward: ForwardConfig, raft: RaftConfig) -> str | None:
    if not forward.bind or raft.bind not in raft.voters or not forward.endpoints \
            or len(forward.endpoints) != len(raft.voters):
        return None
    own = forward.endpoints[raft.voters.index(raft.bind)]
    if forward.bind == own:
        return None
    return (f"bind {_q(forward.bind)} differs from this voter's endpoints entry {_q(own)}: "
            "non-voters connect to the entry, so leave bind empty or make them equal")


@dataclass(frozen=True)
class Config:
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("forward", "raft"), _endpoints_per_voter,
             "`forward.endpoints` is empty or has one entry per `raft.voters` entry"),
        Rule(("security", "raft"), _keys_per_voter,
             "`security.voter_keys` is empty or has one entry per `raft.voters` entry"),
        Rule(("forward", "security", "raft"), _non_voter_can_forward,
             "a non-voter (`raft.bind` not in `raft.voters`) has `forward.endpoints` and "
             "`security.voter_keys`"),
        Rule(("forward", "raft"), _eligible_has_forward_bind,
             "an eligible non-voter (`raft.bind` outside `raft.voters`) with forwarding sets "
             "`forward.bind`"),
        Rule(("forward", "raft"), _forward_bind_is_own_entry,
             "a bootstrap voter's `forward.bind` is empty or its `forward.endpoints` entry"),
    )

    node: NodeConfig
    raft: RaftConfig
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    notifications: NotificationConfig = field(default_factory=NotificationConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    fencing: FencingConfig = field(default_factory=FencingConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    monitors: MonitorsConfig = field(default_factory=MonitorsConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    voters: VotersConfig = field(default_factory=VotersConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def is_voter(self) -> bool:
        """Whether ``raft.bind`` is in ``raft.voters``: a bootstrap voter, or (in the config
        the daemon derives from the committed voter set) a voter now."""
        return bool(self.raft.bind) and self.raft.bind in self.raft.voters

    @property
    def eligible(self) -> bool:
        """Whether this node may be a voter at all (it has a Raft address)."""
        return bool(self.raft.bind)

    @property
    def forwarding(self) -> bool:
        """Whether forwarding is configured (voters serve it, non-voters use it)."""
        return bool(self.forward.endpoints)

    @property
    def own_forward_endpoint(self) -> str:
        """The forward endpoint this node serves whenever it is a voter: ``forward.bind``, or
        its ``forward.endpoints`` entry on a bootstrap voter ('' without forwarding)."""
        if not self.forwarding or not self.raft.bind:
            return ""
        if self.forward.bind:
            return self.forward.bind
        if self.raft.bind in self.raft.voters and len(self.forward.endpoints) == len(self.raft.voters):
            return self.forward.endpoints[self.raft.voters.index(self.raft.bind)]
        return ""

    @property
    def forward_bind(self) -> str:
        """This voter's own forward endpoint ('' on a non-voter or without forwarding)."""
        return self.own_forward_endpoint if self.is_voter else ""


class ConfigError(Exception):
    """A config file that must not start an agent; ``str()`` names the key path and the reason."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


# --- loading ------------------------------------------------------------------------------

def load_config(path: Path) -> Config:
    """Parse and validate ``path``; raises ConfigError listing every problem found.

    Each error is ``key.path: reason`` (or ``TOML syntax error: ... (at line N, column M)``);
    the file name is not repeated in them, so callers prefix it.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"]) from None
    return parse_config(data, base_dir=path.parent)


def loads_config(text: str, base_dir: Path | None = None) -> Config:
    """``load_config`` for TOML text (tests, the lab)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"]) from None
    return parse_config(data, base_dir=base_dir)


def parse_config(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validate an already-parsed TOML document; relative paths resolve against ``base_dir``."""
    errors: list[str] = []
    config = _Loader(errors, base_dir).table(Config, data, "")
    if errors or config is None:
        raise ConfigError(errors or ["invalid configuration"])
    return config


_TYPE_NAMES: dict[Any, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false",
    Path: "a path (string)",
}


def type_name(tp: Any) -> str:
    """How the docs and errors name a knob's type."""
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return "an array of " + _TYPE_NAMES[item].split(" ", 1)[1] + "s"
    return _TYPE_NAMES[tp]


def describe_value(value: Any) -> str:
    """What a TOML value is, for 'expected X, got Y' messages."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {_q(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"{type(value).__name__} {value}"  # TOML dates and times


def section_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation (annotations are strings under PEP 563)."""
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Loader:
    """Walks the dataclasses and the TOML document together, collecting errors."""

    def __init__(self, errors: list[str], base_dir: Path | None) -> None:
        self.errors = errors
        self.base_dir = base_dir

    def error(self, key_path: str, reason: str) -> None:
        self.errors.append(f"{key_path}: {reason}")

    def table(self, cls: type, data: Any, prefix: str) -> Any:
        if not isinstance(data, dict):
            self.error(prefix, f"expected a table ([{prefix}]), got {describe_value(data)}")
            return None
        types = section_types(cls)
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                what = "unknown table" if not prefix and isinstance(data[key], dict) else "unknown key"
                self.error(_join(prefix, key), what + (f" (did you mean {_q(hint[0])}?)" if hint else ""))
        values: dict[str, Any] = {}
        bad: set[str] = set()
        for f in fields(cls):
            key_path = _join(prefix, f.name)
            tp = types[f.name]
            if is_dataclass(tp):
                value = self.table(tp, data.get(f.name, {}), key_path)
            elif f.name not in data:
                if f.metadata.get("required"):
                    self.error(key_path, "required key missing")
                    value = None
                else:
                    value = _default(f)
            else:
                value = self.value(f, tp, data[f.name], key_path)
            if value is None:
                bad.add(f.name)
            else:
                values[f.name] = value
        for rule in getattr(cls, "rules", ()):
            if any(k in bad for k in rule.keys):
                continue
            reason = rule.check(*(values[k] for k in rule.keys))
            if reason:
                self.error(_join(prefix, rule.keys[0]), reason)
                bad.add(rule.keys[0])
        return None if bad else cls(**values)

    def value(self, f: Field, tp: Any, raw: Any, key_path: str) -> Any:
        """Convert and check one value; None (with errors recorded) when it is wrong."""
        if typing.get_origin(tp) is list:
            if not isinstance(raw, list):
                self.error(key_path, f"expected {type_name(tp)}, got {describe_value(raw)}")
                return None
            (item_tp,) = typing.get_args(tp)
            if not all(_convert(item_tp, item) is not None for item in raw):
                for i, item in enumerate(raw):
                    self.scalar(item_tp, item, f"{key_path}[{i}]", ())
                return None
            # Every element has the right type: check each, and the list as a whole too
            # (count, duplicates), so one pass reports every problem.
            items = [self.scalar(item_tp, item, f"{key_path}[{i}]", f.metadata.get("item_check", ()))
                     for i, item in enumerate(raw)]
            whole = self.checked(f, [_convert(item_tp, item) for item in raw], key_path)
            return None if whole is None or any(item is None for item in items) else items
        converted = self.scalar(tp, raw, key_path, ())
        return None if converted is None else self.checked(f, converted, key_path)

    def scalar(self, tp: Any, raw: Any, key_path: str, checks: tuple[Check, ...]) -> Any:
        value = _convert(tp, raw)
        if value is None:
            self.error(key_path, f"expected {type_name(tp)}, got {describe_value(raw)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.error(key_path, f"must be a finite number, got {raw}")
            return None
        if tp is Path:
            if not raw:
                self.error(key_path, "must not be empty")
                return None
            if not value.is_absolute() and self.base_dir is not None:
                value = self.base_dir / value
        for check in checks:
            reason = check(value)
            if reason:
                self.error(key_path, reason)
                return None
        return value

    def checked(self, f: Field, value: Any, key_path: str) -> Any:
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            self.error(key_path, f"{_q(value)} is not one of {', '.join(map(str, choices))}")
            return None
        for check in f.metadata.get("check", ()):
            reason = check(value)
            if reason:
                self.error(key_path, reason)
                return None
        return value


def _convert(tp: Any, raw: Any) -> Any:
    """The TOML value as ``tp``, or None if TOML gave another type (a bool is not an int)."""
    if tp is bool:
        return raw if isinstance(raw, bool) else None
    if isinstance(raw, bool):
        return None
    if tp is int:
        return raw if isinstance(raw, int) else None
    if tp is float:
        return float(raw) if isinstance(raw, (int, float)) else None
    if tp is str:
        return raw if isinstance(raw, str) else None
    if tp is Path:
        return Path(raw) if isinstance(raw, str) else None
    raise TypeError(f"config fields of type {tp!r} are not supported")


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


# --- writing ------------------------------------------------------------------------------

def toml_value(value: Any) -> str:
    """A value as TOML source (the subset config knobs use)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return _q(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_config(config: Config) -> str:
    """``config`` as a TOML file that ``load_config`` reads back to an equal Config (the lab)."""
    out: list[str] = []
    for section in fields(config):
        table = getattr(config, section.name)
        out.append(f"[{section.name}]")
        for f in fields(table):
            out.append(f"{f.name} = {toml_value(getattr(table, f.name))}")
        out.append("")
    return "\n".join(out)


# --- hagent check-config --------------------------------------------------------------

def check_config_main(path: str, *, check_secret: bool = True) -> int:
    """Print every problem in config ``path`` (each prefixed with the path) or ``PATH: ok``.

    Returns the exit status: 1 if the agent would refuse to start, else 0. With
    ``check_secret`` the files start-up reads are read too, so a wrong mode is caught
    before a restart: the Raft secret on a node that may vote (`raft.bind` set; plain
    non-voters never hold it, an eligible one needs it once promoted), the CURVE
    key file when forwarding or gossip is configured, and the BMC inventory.
    """
    try:
        config = load_config(Path(path))
    except ConfigError as exc:
        for error in exc.errors:
            print(f"{path}: {error}", file=sys.stderr)
        return 1
    if check_secret:
        from hagent.secretfile import SecretFileError, read_secret

        problems = []
        if config.eligible:
            try:
                read_secret(config.raft.secret_file)
            except SecretFileError as exc:
                problems.append(f"raft.secret_file: {exc}")
        if config.forwarding or config.gossip.bind:
            from hagent.forward.keys import read_key_pair

            try:
                read_key_pair(config.security.key_file)
            except SecretFileError as exc:
                problems.append(f"security.key_file: {exc}")
        if config.fencing.bmc_inventory:
            from hagent.fencing.inventory import InventoryError, load_fence_inventory

            try:
                load_fence_inventory(Path(config.fencing.bmc_inventory))
            except InventoryError as exc:
                problems.append(f"fencing.bmc_inventory: {exc}")
        if problems:
            for problem in problems:
                print(f"{path}: {problem}", file=sys.stderr)
            return 1
    print(f"{path}: ok")
    return 0
