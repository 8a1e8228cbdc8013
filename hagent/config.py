"""Typed configuration for one agent, read from one TOML file.

Every knob is declared here once, with its default and the reason for that
default (the ``doc`` metadata). ``docs/configuration.md`` is generated from these
declarations and a test keeps it true. The parser (``load_config``) walks these
dataclasses, so an unknown key, a wrong type or a bad value stops start-up with
the key path and the reason, e.g. ``raft.voters[2]: "10.0.0.3" is not host:port``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/hagent/hagent.toml")


def knob(default, doc: str, **kw):
    """A config field: its default and why that default (rendered into the docs)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


def required(doc: str, **kw):
    """A config field without a default: start-up refuses a file that omits it."""
    return field(metadata={"doc": doc, "required": True, **kw})


@dataclass(frozen=True)
class NodeConfig:
    name: str = required(
        "This node's name: the compute host name Nova knows it by (`hypervisor_hostname`'s "
        "host). Every log record and every notification this node sends carries it.")
    state_dir: Path = knob(
        Path("/var/lib/hagent"),
        "Raft journal, snapshots and the submission spool. systemd's `StateDirectory=` "
        "creates it; it must survive reboots.")
    run_dir: Path = knob(
        Path("/run/hagent"),
        "Runtime files (admin socket). systemd's `RuntimeDirectory=` creates it, cleared on reboot.")


@dataclass(frozen=True)
class RaftConfig:
    voters: list[str] = required(
        "`host:port` Raft addresses of the 3 or 5 voters. Every node lists the same set; "
        "a node whose `bind` is in this list is a voter, every other node a non-voter replica.")
    secret_file: Path = knob(
        Path("/etc/hagent/cluster.secret"),
        "Cluster secret that authenticates and encrypts Raft traffic (pysyncobj password). "
        "Start-up refuses a file that is group or world readable.")
    bind: str = knob(
        "",
        "This node's own Raft `host:port` when it is a voter (must appear in `voters`); "
        "empty on non-voters. Only this address is bound, never 0.0.0.0.")
    leader_fallback_timeout: float = knob(
        2.5,
        "Seconds a leader that hears from no majority keeps acting as leader. pysyncobj's "
        "30 s default lets an isolated leader act long after the rest elected another; "
        "2.5 s keeps that window shorter than one failure-detection round (<= 3 s).")
    election_timeout_min: float = knob(
        0.4, "Lower bound of the randomised election timeout (s); pysyncobj's default, "
        "several heartbeats on a LAN.")
    election_timeout_max: float = knob(
        1.4, "Upper bound of the randomised election timeout (s); a wide spread avoids split votes.")
    append_entries_period: float = knob(
        0.1, "Leader heartbeat period (s); well under election_timeout_min so followers never "
        "time out a healthy leader.")
    connection_timeout: float = knob(
        3.5, "Seconds without traffic before a Raft peer connection is dropped (pysyncobj default).")
    compaction_min_entries: int = knob(
        5000, "Log entries since the last snapshot before compaction may run; bounds journal "
        "size and restart replay time.")
    compaction_min_time: float = knob(
        300.0, "Minimum seconds between two snapshots, so compaction never dominates CPU.")
    fsync: bool = knob(
        True, "fsync journal entries and term/vote before acknowledging them. Off only for "
        "throwaway labs on tmpfs: without it a power loss of a majority can lose acknowledged "
        "notifications.")


@dataclass(frozen=True)
class AdminConfig:
    socket: Path = knob(
        Path("/run/hagent/hagent.sock"),
        "Unix socket `hagentctl` talks to; created mode 0660.")
    group: str = knob(
        "",
        "Group owning the admin socket; its members (and root) may use it. Empty: the "
        "agent's own primary group.")


@dataclass(frozen=True)
class StatusConfig:
    bind: str = knob(
        "127.0.0.1:7180",
        "Read-only HTTP status endpoint `host:port`. Loopback by default: cluster state is "
        "not for the whole network unless an operator opens it.")
    max_lag: int = knob(
        100,
        "`/health` answers 200 while this node's applied index is within this many entries "
        "of the leader's commit index: a replica further behind serves stale state.")


@dataclass(frozen=True)
class NotificationConfig:
    duplicate_interval: float = knob(
        180.0,
        "Seconds of generated_time within which the same type + host + payload is `ignored` "
        "as a duplicate (Masakari's `duplicate_notification_detection_interval`).")
    resend_interval: float = knob(
        1.0,
        "Seconds between resends of a spooled notification the log has not confirmed; "
        "short so a leader change costs about one election, not minutes.")
    submit_timeout: float = knob(
        10.0,
        "Seconds `notification create` waits for the log to commit before answering with "
        "the spooled (still pending) record; the spool keeps resending after that.")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = knob("INFO", "Log level (DEBUG, INFO, WARNING, ERROR).", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    raft: RaftConfig
    admin: AdminConfig = field(default_factory=AdminConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    notifications: NotificationConfig = field(default_factory=NotificationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def is_voter(self) -> bool:
        return bool(self.raft.bind) and self.raft.bind in self.raft.voters


class ConfigError(Exception):
    """A config file that must not start an agent; ``str()`` names the key path and the reason."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def load_config(path: Path) -> Config:
    """Parse and validate ``path``; raises ConfigError listing every problem found."""
    raise NotImplementedError  # implemented by the config work item
