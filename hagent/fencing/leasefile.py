"""What one run of the agent leaves the next about its lease: ``STATE_DIR/lease.json``.

Two facts must survive an agent restart (docs/fencing.md, "Restarts"):

- the highest renewal sequence number sent, so numbers keep growing (the log ignores a
  renewal numbered below the one it stores);
- the self-fence deadline the watchdog is armed for, with the boot it belongs to: an agent
  that crashed left its watchdog armed, and its successor on the same boot must not push
  that deadline out before one of its own renewals commits. ``clean_stop`` says the
  previous run disarmed the watchdog on its way out, so there is nothing to inherit.

Monotonic times are only comparable within one boot, hence ``boot_id`` (the kernel's, or
the lab power switch's for a simulated host). The file is replaced atomically and not
fsynced: it matters only within a boot, and a power loss starts a new boot. A missing or
unreadable file costs one renewal (the log's answer tells the new run the number to pass).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "lease.json"


@dataclass(frozen=True)
class LeaseMemory:
    boot_id: str
    seq: int                 # highest sequence number sent so far
    deadline: float          # monotonic self-fence deadline on boot ``boot_id``
    clean_stop: bool         # the run that wrote this disarmed its watchdog on the way out

    def inherited_deadline(self, boot_id: str) -> float | None:
        """The deadline a new run on ``boot_id`` must not exceed, or None if none binds it."""
        return None if self.clean_stop or self.boot_id != boot_id else self.deadline


def load(path: Path) -> LeaseMemory | None:
    """The memory in ``path``, or None (logged) if there is none or it is unreadable."""
    try:
        raw = json.loads(Path(path).read_text())
        memory = LeaseMemory(boot_id=str(raw["boot_id"]), seq=int(raw["seq"]),
                             deadline=float(raw["deadline"]), clean_stop=bool(raw["clean_stop"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s (%s): the first renewal learns the sequence number from the "
                    "log, and this run's deadline counts from start-up", path, exc)
        return None
    if memory.seq < 0:
        log.warning("ignoring %s: negative sequence number %d", path, memory.seq)
        return None
    return memory


def save(path: Path, memory: LeaseMemory) -> None:
    """Replace ``path`` atomically (write a temporary file, rename it over)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(memory)) + "\n")
    os.replace(tmp, path)
