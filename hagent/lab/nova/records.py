"""The simulated Nova's records: what it stores (hosts, servers, flavors, actions,
migrations, aggregates), who calls (Context), its settings (Timings, HostSpec) and its error
(NovaError). Plain dataclasses; the rules live in ``model.py``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hagent.lab.nova import states as st


class NovaError(Exception):
    """An API error: the HTTP ``status`` Nova answers and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Timings:
    """Simulated durations (seconds) and Nova's service settings.

    Defaults are close to what real Nova 34 did on this machine (REAL-NOVA.md): evacuation
    POST -> ACTIVE on the new host 2.8-3.6 s, boot ~1 s, ``service_down_time = 10`` and
    ``report_interval = 2`` as that lab configured them, ``rpc_response_timeout`` Nova's 60 s.
    Tests shorten them with ``scaled``."""

    evacuate_schedule: float = 0.3   # POST -> the conductor has a destination (claimed)
    evacuate_spawn: float = 2.7      # destination claimed -> spawned there (ACTIVE)
    evacuate_power_off: float = 0.3  # spawned -> stopped again (2.95+, or a stopped server)
    #: How long a finish_evacuation (which moves ``host`` to the destination) holds the
    #: destination compute's resource-tracker lock; they queue for it in order, so with many
    #: evacuations to one host the last ones show their end state on the source for
    #: seconds (real Nova 34: up to 1.4-3.1 s with 10 at once, docs/nova-real.md).
    resource_lock: float = 0.25
    boot: float = 1.0
    stop: float = 1.0
    start: float = 1.0
    delete: float = 0.3
    service_down_time: float = 10.0
    report_interval: float = 2.0
    rpc_response_timeout: float = 60.0
    #: How often a step waiting for a dead nova-compute looks again.
    retry: float = 0.2

    def scaled(self, factor: float) -> Timings:
        """Every duration multiplied by ``factor`` (service settings included)."""
        return Timings(**{name: value * factor for name, value in self.__dict__.items()})


@dataclass(frozen=True)
class HostSpec:
    """A hypervisor's capacity; ratios are Nova's initial_*_allocation_ratio defaults. The
    default host (32 vCPUs x 4.0 = 128 one-vCPU instances, 64 GiB) takes a whole 100-instance
    benchmark host's load; tests that need a full host give a small spec."""

    vcpus: int = 32
    memory_mb: int = 65536
    disk_gb: int = 500
    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int
    disk: int
    ephemeral: int = 0
    swap: int = 0
    is_public: bool = True
    description: str | None = None
    extra_specs: dict[str, str] = field(default_factory=dict)


DEFAULT_FLAVORS = (
    Flavor("1", "m1.tiny", 1, 512, 1),
    Flavor("2", "m1.small", 1, 2048, 20),
    Flavor("3", "m1.medium", 2, 4096, 40),
    Flavor("10", "lab.tiny", 1, 64, 0),  # the real-Nova lab's flavor (REAL-NOVA.md)
)


@dataclass(frozen=True)
class Context:
    """Who calls: from the Keystone token."""

    user_id: str
    project_id: str
    is_admin: bool


@dataclass
class Host:
    name: str
    spec: HostSpec
    service_id: int
    service_uuid: str
    hypervisor_id: int
    hypervisor_uuid: str
    disabled: bool = False
    disabled_reason: str | None = None
    forced_down: bool = False
    power_on: bool = True
    boot: int = 1
    off_at: float | None = None
    seen_on_at: float | None = None      # last time the power switch said on
    compute_since: float | None = None   # nova-compute running since (heartbeats from here)
    last_heartbeat: float | None = None  # once nova-compute is gone


@dataclass
class Server:
    id: str
    name: str
    project_id: str
    user_id: str
    flavor: Flavor
    image_id: str
    metadata: dict[str, str]
    availability_zone: str | None   # requested (None: any)
    created: float
    updated: float
    host: str | None = None
    vm_state: str = st.BUILDING
    task_state: str | None = st.SCHEDULING
    power_state: int = st.NOSTATE
    launched_at: float | None = None
    fault: dict[str, Any] | None = None
    key_name: str | None = None
    description: str | None = None

    @property
    def status(self) -> str:
        return st.status(self.vm_state, self.task_state)


@dataclass
class ActionEvent:
    event: str
    start: float
    host: str | None
    finish: float | None = None
    result: str | None = None   # "Success" / "Error"
    details: str | None = None  # a failed event's exception message (shown from 2.84)


@dataclass
class Action:
    action: str
    request_id: str
    instance: str
    user_id: str
    project_id: str
    start: float
    updated: float
    message: str | None = None
    events: list[ActionEvent] = field(default_factory=list)


@dataclass
class Migration:
    id: int
    uuid: str
    instance: str
    source: str
    dest: str | None
    status: str                 # accepted, pre-migrating, done, completed, error, failed
    created: float
    migration_type: str = "evacuation"


@dataclass
class Aggregate:
    id: int
    uuid: str
    name: str
    availability_zone: str | None
    hosts: list[str]
    metadata: dict[str, str]
    created: float
    updated: float | None = None
