"""Nova's state names and the status it derives from them, as Nova spells them.

vm_state / task_state values are ``nova/compute/vm_states.py`` and ``task_states.py``;
power_state numbers are ``nova/compute/power_state.py``; ``status`` is
``nova/api/openstack/common.py``'s ``_STATE_MAP`` (the status a client sees is a function of
vm_state and task_state, e.g. ACTIVE + rebuilding = REBUILD).
"""
from __future__ import annotations

# vm_state
ACTIVE = "active"
BUILDING = "building"
STOPPED = "stopped"
ERROR = "error"
DELETED = "deleted"
PAUSED = "paused"
SUSPENDED = "suspended"

# task_state
SCHEDULING = "scheduling"
NETWORKING = "networking"
BLOCK_DEVICE_MAPPING = "block_device_mapping"
SPAWNING = "spawning"
REBUILDING = "rebuilding"
REBUILD_BLOCK_DEVICE_MAPPING = "rebuild_block_device_mapping"
REBUILD_SPAWNING = "rebuild_spawning"
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
DELETING = "deleting"
REBUILD_TASKS = (REBUILDING, REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING)

# power_state
NOSTATE = 0
RUNNING = 1
SHUTDOWN = 4

_REBUILD = {task: "REBUILD" for task in REBUILD_TASKS}
_STATE_MAP: dict[str, dict[str | None, str]] = {
    ACTIVE: {None: "ACTIVE", **_REBUILD},
    BUILDING: {None: "BUILD"},
    STOPPED: {None: "SHUTOFF", **_REBUILD},
    ERROR: {None: "ERROR", **_REBUILD},
    DELETED: {None: "DELETED"},
    PAUSED: {None: "PAUSED"},
    SUSPENDED: {None: "SUSPENDED"},
}


def status(vm_state: str, task_state: str | None) -> str:
    """The ``status`` Nova shows for this vm_state and task_state."""
    tasks = _STATE_MAP.get(vm_state)
    if tasks is None:
        return "UNKNOWN"
    return tasks.get(task_state, tasks[None])
