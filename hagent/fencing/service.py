"""The lease service: renews this node's lease through the log, keeps its watchdog armed to
the self-fence deadline, fences itself when that passes, and on voters judges every other
host's lease for the leader (ARCHITECTURE.md §3 rule 2, docs/fencing.md).

The decisions are ``hagent.fencing.lease`` (sans-IO); this module is the asyncio shell
around them: one task that sends renewals and watches the deadline, one short task per
renewal in flight, and callbacks from the Raft thread (applies, role changes) that update
the thread-safe ``LeaseJudge`` directly, so it never lags the log.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from hagent.config import Config
from hagent.fencing import leasefile
from hagent.fencing.lease import COMMITTED, OLDER, STALE, LeaseJudge, LeaseKeeper, renewal_command
from hagent.fencing.watchdog import Watchdog, WatchdogError, open_watchdog

log = logging.getLogger(__name__)


class LeaseService:
    """One per agent. ``agent`` provides ``propose(command)`` (voters and non-voters) and
    ``backend``; on a voter the backend's ``add_apply_observer``/``add_role_observer`` feed
    ``judge``, which stays None on a non-voter.

    ``start`` raises ``WatchdogRequired`` when ``watchdog_mode = "required"`` and the driver
    cannot open: the agent must not run. ``watchdog`` replaces the configured driver with
    one already open (tests).
    """

    def __init__(self, config: Config, agent: Any, node_name: str, *,
                 watchdog: Watchdog | None = None) -> None:
        self.fencing = config.fencing
        self.agent = agent
        self.name = node_name
        self.memory_path = config.node.state_dir / leasefile.FILE_NAME
        self.watchdog: Watchdog | None = watchdog
        self.keeper: LeaseKeeper | None = None
        self.judge: LeaseJudge | None = None
        #: True once this node fenced itself: it renews no more and never disarms.
        self.self_fenced = False
        self._leader_term: int | None = None
        self._role_lock = threading.Lock()
        self._boot_id = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._renewals: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._failing = False  # renewals are failing (logged once per episode)
        self._expired_unfenced = False  # deadline passed with no watchdog (logged once)
        self._observing = False

    # --- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.watchdog is None:
            self.watchdog = open_watchdog(self.fencing)  # raises WatchdogRequired
        try:
            self._start_keeper()
        except BaseException:
            # Never disarm here: the watchdog may carry a deadline an earlier run armed and
            # the leader relies on. It fires when that runs out.
            self.watchdog.abandon()
            raise
        backend = getattr(self.agent, "backend", None)
        if hasattr(backend, "add_apply_observer") and hasattr(backend, "add_role_observer"):
            self.judge = LeaseJudge(self.fencing.lease_ttl)
            backend.add_apply_observer(self._observe_apply)
            backend.add_role_observer(self._observe_role)
            self._observing = True
        self._task = self._loop.create_task(self._run(), name="lease")

    def _start_keeper(self) -> None:
        """Build the keeper from what the previous run left, arm the watchdog for its first
        deadline and record that before anything else can crash."""
        watchdog = self.watchdog
        assert watchdog is not None
        self._boot_id = watchdog.boot_id()
        memory = leasefile.load(self.memory_path)
        inherited = memory.inherited_deadline(self._boot_id) if memory and watchdog.active else None
        now = time.monotonic()
        self.keeper = LeaseKeeper(
            self.name, lease_ttl=self.fencing.lease_ttl, safety_margin=self.fencing.safety_margin,
            renew_interval=self.fencing.renew_interval, now=now,
            first_seq=memory.seq + 1 if memory else 1, inherited_deadline=inherited)
        if inherited is not None:
            log.info("the previous run left the watchdog armed until %.1f s from now: this "
                     "run may not extend that before a renewal commits", inherited - now)
        watchdog.arm(self.keeper.deadline)  # a WatchdogError here stops start-up
        self._remember(clean_stop=False)
        log.info("lease: renewing every %g s from seq %d; %s", self.fencing.renew_interval,
                 self.keeper.next_seq, watchdog.describe())

    async def stop(self) -> None:
        """Stop renewing. Unless this node fenced itself, disarm the watchdog (a clean stop
        must not reset the host) and note the clean stop for the next run."""
        if self._observing:
            backend = self.agent.backend
            backend.remove_apply_observer(self._observe_apply)
            backend.remove_role_observer(self._observe_role)
            self._observing = False
        tasks = [t for t in (self._task, *self._renewals) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self.watchdog is None or self.keeper is None:
            return
        if self.self_fenced:
            log.critical("stopping after self-fencing: the watchdog stays armed")
            return
        self.watchdog.close()
        self._remember(clean_stop=True)

    # --- renewing ---------------------------------------------------------------------------
    async def _run(self) -> None:
        keeper = self.keeper
        assert keeper is not None and self._loop is not None
        while True:
            now = time.monotonic()
            if keeper.expired(now) and self._deadline_passed(now):
                return
            seq = keeper.poll(now)
            if seq is not None:
                task = self._loop.create_task(self._renew(seq), name=f"lease-renew-{seq}")
                self._renewals.add(task)
                task.add_done_callback(self._renewals.discard)
            delay = keeper.next_wakeup(now) - time.monotonic()
            if delay > 0:
                self._wake.clear()
                timer = self._loop.call_later(delay, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()

    async def _renew(self, seq: int) -> None:
        try:
            answer = await self.agent.propose(renewal_command(self.name, seq))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed renewal is an answer like any other
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if self.self_fenced or self.keeper is None:
            return
        keeper = self.keeper
        outcome = keeper.answered(seq, answer, time.monotonic())
        if outcome == COMMITTED:
            self._committed()
        elif outcome == STALE:
            log.warning("lease renewal %d was stale: the log holds a higher number from an "
                        "earlier run; the next renewal uses %d", seq, keeper.next_seq)
        elif outcome != OLDER and not self._failing:
            self._failing = True
            log.warning("lease renewal %d not committed: %s (retrying every %g s; self-fence "
                        "in %.1f s)", seq, _error_of(answer), keeper.retry_after,
                        keeper.deadline - time.monotonic())
        self._wake.set()

    def _committed(self) -> None:
        keeper = self.keeper
        assert keeper is not None and self.watchdog is not None
        if self._failing or self._expired_unfenced:
            log.info("lease renewal %d committed; renewals work again", keeper.committed_seq)
            self._failing = self._expired_unfenced = False
        try:
            self.watchdog.arm(keeper.deadline)
        except WatchdogError as exc:
            # The previous arm still stands and fires by the previous deadline.
            log.error("cannot re-arm the watchdog: %s", exc)
        self._remember(clean_stop=False)

    def _deadline_passed(self, now: float) -> bool:
        """The self-fence deadline passed; True if this node fenced itself (stop renewing)."""
        keeper = self.keeper
        assert keeper is not None and self.watchdog is not None
        silent = keeper.silent_for(now)
        if not self.watchdog.active:
            if not self._expired_unfenced:
                self._expired_unfenced = True
                log.critical("no lease renewal committed for %.1f s and there is no watchdog "
                             "(%s): this host cannot fence itself, and the leader may count it "
                             "fenced while its VMs run; renewals go on", silent,
                             self.watchdog.describe())
            return False
        self.self_fenced = True
        log.critical("self-fencing: no renewal committed for %.1f s (lease_ttl %g s - "
                     "safety_margin %g s); renewals stop and %s fences this host",
                     silent, self.fencing.lease_ttl, self.fencing.safety_margin,
                     self.watchdog.describe())
        self.watchdog.abandon()
        for task in self._renewals:
            task.cancel()
        return True

    def _remember(self, *, clean_stop: bool) -> None:
        keeper = self.keeper
        assert keeper is not None
        try:
            leasefile.save(self.memory_path, leasefile.LeaseMemory(
                boot_id=self._boot_id, seq=keeper.highest_sent, deadline=keeper.deadline,
                clean_stop=clean_stop))
        except OSError as exc:
            log.error("cannot write %s: %s (a restart may reuse sequence numbers, which costs "
                      "one renewal)", self.memory_path, exc)

    # --- the leader's judge (called in the Raft thread) ------------------------------------------
    def _observe_apply(self, command: dict, result: dict) -> None:
        """Right after the entry is applied, before this node answers its proposer and
        before any later entry is applied: a recovery intent committed after a renewal
        is always judged with that renewal counted (docs/fencing.md, "Timing")."""
        judge = self.judge
        if (judge is None or command.get("op") != "lease.renew" or not isinstance(result, dict)
                or not result.get("ok") or not isinstance(command.get("hosts"), dict)):
            return
        now = time.monotonic()  # after the apply: never earlier than the renewal was sent
        for host, seq in command["hosts"].items():
            judge.renewal_applied(host, seq, now)

    def _observe_role(self, role: str, term: int) -> None:
        """Raft thread (and once from the loop at start): a new term as leader restarts the
        count; any other role stops judging at once."""
        judge = self.judge
        if judge is None:
            return
        with self._role_lock:
            if role == "leader":
                if self._leader_term != term:
                    judge.became_leader(time.monotonic())
                    self._leader_term = term
                    log.info("leader in term %d: no host's lease counts as expired for %g s",
                             term, judge.lease_ttl)
            elif self._leader_term is not None:
                judge.lost_leadership()
                self._leader_term = None

    # --- status ---------------------------------------------------------------------------------
    def lease_status(self) -> dict[str, Any]:
        """This node's lease, and on the leader every known host's, for status/hagentctl.
        Times are seconds relative to now (monotonic clocks mean nothing elsewhere)."""
        now = time.monotonic()
        keeper, watchdog = self.keeper, self.watchdog
        doc: dict[str, Any] = {
            "host": self.name,
            "watchdog": {"mode": self.fencing.watchdog_mode, "driver": self.fencing.watchdog_driver,
                         "active": bool(watchdog and watchdog.active),
                         "detail": watchdog.describe() if watchdog else "not started"},
            "self_fenced": self.self_fenced,
        }
        if keeper is not None:
            doc.update({
                "seq": keeper.committed_seq,
                "committed_ago": (None if keeper.committed_at is None
                                  else round(now - keeper.committed_at, 3)),
                "deadline_in": round(keeper.deadline - now, 3),
                "renewals_in_flight": keeper.in_flight,
            })
        judge = self.judge
        since = judge.leader_since if judge is not None else None
        if judge is not None and since is not None:
            hosts = {}
            for host in judge.hosts():
                expires_in = judge.expires_in(host, now)
                if expires_in is not None:  # None: leadership lost while listing
                    hosts[host] = {"seq": judge.last_seq(host), "expires_in": round(expires_in, 3)}
            doc["leader"] = {"leader_for": round(now - since, 3), "hosts": hosts}
        return doc


def _error_of(answer: Any) -> str:
    if isinstance(answer, dict) and answer.get("error"):
        return str(answer["error"])
    return f"unexpected answer {answer!r}"[:200]
