"""External fencing: one interface over the BMCs (IPMI, Redfish) that can power a host off.

Safety rule 1 (ARCHITECTURE.md §3): instances of a failed host may start elsewhere only once
the host is fenced. An external fence counts only when the BMC *reports the host off* after
we asked: ``power_off`` returns ``FenceResult(confirmed=True)`` in that case and no other.
A refused request, a wrong password, a BMC that does not answer, a host still "on" at the
deadline, a state we cannot read: all give ``confirmed=False``, and the caller must not treat
the host as fenced (it waits for the host's lease to expire instead, or tries again).

Nothing here can hold its caller longer than its deadline: every BMC call is bounded by the
driver's own timeout (ipmitool is killed, sockets time out), and by an asyncio timeout just
above it in case a driver fails to keep its bound. ``power_off`` is bounded by
``power_off_timeout`` (plus one call's grace).

The polling loop lives here, once, for every driver; a driver supplies one state read and one
power-off request (``_read_state`` / ``_request_off``).
"""
from __future__ import annotations

import abc
import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, ClassVar, TypeVar

log = logging.getLogger(__name__)

# What power_state() returns: "unknown" means the BMC answered but with no state we know
# (never "the BMC could not be asked": that raises FenceError).
STATES = ("on", "off", "unknown")

# Seconds the event loop waits past a driver's own timeout before abandoning the call. Drivers
# enforce their timeout themselves (ipmitool is killed, sockets time out); this backstop only
# matters if one fails to, so no call holds the caller longer than timeout + this.
BACKSTOP_GRACE = 1.0

T = TypeVar("T")


class FenceError(Exception):
    """A BMC could not be asked or refused; the message names the host, the BMC and the fix.

    ``retryable`` tells the power-off loop (and the recovery engine) whether asking again
    may help: False for mistakes only an operator can fix (configuration, credentials).
    """

    retryable: ClassVar[bool] = True

    def __init__(self, host: str, bmc: str, problem: str, fix: str) -> None:
        self.host = host
        self.bmc = bmc
        self.problem = problem
        self.fix = fix
        super().__init__(f"fencing host {host} through BMC {bmc}: {problem}; {fix}")


class FenceConfigError(FenceError):
    """The fence spec, the password file, a CA file or a needed tool is wrong or missing."""

    retryable = False


class FenceAuthError(FenceError):
    """The BMC refused our credentials, or we refused its TLS certificate."""

    retryable = False


class FenceUnreachable(FenceError):
    """No connection to the BMC: refused, no route, or no answer to any retry."""


class FenceTimeout(FenceError):
    """The BMC did not answer completely within the call's timeout."""


class FenceProtocolError(FenceError):
    """The BMC answered, but not as its protocol says (an error status, unparsable output)."""


@dataclass(frozen=True)
class FenceResult:
    """The outcome of one ``power_off``.

    ``confirmed`` is True only if the BMC read "off" before the deadline: the one result that
    may count as fenced. ``state`` is the last state read ("unknown" if the last read failed),
    ``detail`` says what happened in words for logs and notifications, ``elapsed`` is seconds
    since the call started, ``error`` the last FenceError seen (None when confirmed, or when
    the BMC answered every time but never read "off").
    """

    confirmed: bool
    state: str
    detail: str
    elapsed: float
    error: FenceError | None = None


class FenceDriver(abc.ABC):
    """Powers one host off through its BMC, and reads its power state.

    Callers rely on: ``power_state`` returns one of ``STATES`` within ``timeout`` (plus
    ``BACKSTOP_GRACE``) or raises FenceError; ``power_off`` never raises for anything the BMC
    or the network does, returns within ``power_off_timeout`` (plus one call's grace), and
    confirms only an "off" read from the BMC. Cancelling either cancels the BMC call in flight
    (an ipmitool process is killed).
    """

    def __init__(self, *, host: str, bmc: str, timeout: float, power_off_timeout: float,
                 poll_interval: float) -> None:
        self.host = host
        self.bmc = bmc
        self.timeout = timeout
        self.power_off_timeout = power_off_timeout
        self.poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"<{type(self).__name__} host={self.host} bmc={self.bmc}>"

    @abc.abstractmethod
    async def _read_state(self, timeout: float) -> str:
        """Ask the BMC once for the power state, within ``timeout``; one of STATES.

        Raises FenceError (FenceTimeout if the BMC did not answer in time).
        """

    @abc.abstractmethod
    async def _request_off(self, timeout: float) -> None:
        """Ask the BMC once to cut power now (not a graceful shutdown), within ``timeout``.

        Returns when the BMC accepted the request; raises FenceError otherwise.
        """

    def error(self, kind: type[FenceError], problem: str, fix: str) -> FenceError:
        """A FenceError of ``kind`` naming this driver's host and BMC."""
        return kind(self.host, self.bmc, problem, fix)

    async def power_state(self) -> str:
        """The host's power state as the BMC reports it now: "on", "off" or "unknown"."""
        return await self._bounded(self._read_state, self.timeout)

    async def power_off(self) -> FenceResult:
        """Power the host off and poll until the BMC reads "off" or the deadline passes.

        Reads the state first (a host already off needs no request; some BMCs refuse to
        power off a host that is off), sends one power-off request, then polls every
        ``poll_interval``. A request that failed in a way that may pass (no answer, an
        error status) is sent again on the next poll; a configuration or credentials error
        ends the attempt at once, since asking again cannot help.
        """
        start = time.monotonic()
        deadline = start + self.power_off_timeout
        state, sent, error = "unknown", False, None
        log.info("fencing %s: asking BMC %s to power it off", self.host, self.bmc)
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                state = await self._bounded(self._read_state, min(self.timeout, remaining))
                error = None
                if state == "off":
                    detail = ("BMC reports the host off" if sent
                              else "BMC reports the host off (it was already off)")
                    log.info("fencing %s: confirmed, %s", self.host, detail)
                    return FenceResult(True, "off", detail, time.monotonic() - start)
                if not sent and (remaining := deadline - time.monotonic()) > 0:
                    await self._bounded(self._request_off, min(self.timeout, remaining))
                    sent = True
                    continue  # read back at once: many BMCs switch off within the request
            except FenceError as exc:
                state, error = "unknown", exc
                if not exc.retryable:
                    break
            await asyncio.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))
        elapsed = time.monotonic() - start
        request = "power-off request accepted" if sent else "power-off request not accepted"
        why = str(error) if error else f"BMC still reports the host {state}"
        detail = f"not confirmed off after {elapsed:.1f} s ({request}): {why}"
        log.warning("fencing %s: %s", self.host, detail)
        return FenceResult(False, state, detail, elapsed, error)

    async def _bounded(self, call: Callable[[float], Awaitable[T]], timeout: float) -> T:
        """``call(timeout)``, abandoned (FenceTimeout) if it overruns its own bound.

        Anything but a FenceError escaping a driver is a bug (say, an answer shaped in a way
        its parser did not expect); it becomes a FenceProtocolError, so it is logged and the
        fence stays unconfirmed instead of the exception killing the caller's task.
        """
        try:
            return await asyncio.wait_for(call(timeout), timeout + BACKSTOP_GRACE)
        except TimeoutError:
            raise self.error(FenceTimeout, f"no answer within {timeout:.3g} s",
                             "check that the BMC is up and reachable from this node") from None
        except FenceError:
            raise
        except Exception as exc:
            log.exception("fencing %s: driver for BMC %s failed", self.host, self.bmc)
            raise self.error(FenceProtocolError, f"the driver failed: {exc!r}",
                             "report it as a hagent bug, with the traceback logged above") \
                from exc
