"""A local cluster of real agent processes: start, inspect, break and stop it.

``Lab.up(dir, nodes, voters)`` writes one config per node (``hagent/lab/configs.py``), starts
``python -m hagent run --config DIR/<name>/hagent.toml`` for each in its own session (so a
signal to the lab never hits the caller, and the caller's Ctrl-C never hits the lab), waits
until every agent's ``GET /status`` says ``ready``, registers segment ``lab`` with one host per
agent through the admin socket, and records the cluster in ``DIR/lab.json``: a list of
``{name, pid, admin_socket, status_url, voter, config, raft_address, log}``.
``status_url`` is the endpoint's base URL (``/status``, ``/health``, ``/leader``, ``/metrics``).

``Lab.load(dir)`` reads ``lab.json`` back, so the CLI (one process per command), tests and the
demo drive the same cluster. Signals go only to a pid whose command line still names that
node's config file, never to a recycled pid.

``Lab.up(..., netns=True)`` puts each agent in a network namespace of its own on one bridge
(``hagent/lab/netns.py``, recorded in ``DIR/netns.json``); every endpoint binds the namespace's
address, which the lab tooling reaches over the bridge, and the admin sockets stay files. Such a
lab can be partitioned, healed and made to lose packets; ``down`` removes its network too.

``Lab.up(..., libvirt=True)`` gives each lab host a simulated hypervisor: a libvirtd with the
test driver of its own (``hagent/lab/libvirtd.py``, recorded in ``DIR/libvirtd.json``), which
the host's agent's instance monitor watches (``LabNode.libvirt_uri``). A domain destroyed there
becomes a VM notification from that host; ``down`` stops the libvirtds too.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

from hagent.lab import configs, libvirtd, power
from hagent.lab.nova import NovaSim
from hagent.lab.nova.sim import NovaSimError
from hagent.lab.realnova import RealNova, RealNovaError
from hagent.lab.realnova.handle import stop_lab as stop_real_nova
from hagent.lab.realnova.layout import RECORD_FILE as REALNOVA_RECORD
from hagent.lab.netns import ALL_LINKS, NetnsError, Network
from hagent.lab.ports import PortPicker

log = logging.getLogger(__name__)

LAB_FILE = "lab.json"
SEGMENT = "lab"
# Start-up of a 3-5 agent lab takes a few seconds (imports, one election); 60 s leaves room
# for a loaded CI machine without hiding a real hang.
READY_TIMEOUT = 60.0
# SIGTERM first: the agent syncs its journal and removes its socket. Then SIGKILL.
STOP_TIMEOUT = 10.0
POLL = 0.05
# Attempts of `up` when another process took one of the picked ports.
UP_ATTEMPTS = 3
# The repository root, so `-m hagent` finds this very package whatever the cwd.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]

START_MARKER = "lab: starting"

RUNNING, PAUSED, STOPPED = "running", "paused", "stopped"


class LabError(Exception):
    """The lab could not do what was asked; the message names the node(s) and what to look at."""


@dataclass
class LabNode:
    """One agent of the lab as recorded in ``lab.json``."""

    name: str
    pid: int | None
    admin_socket: str
    status_url: str
    voter: bool
    config: str
    raft_address: str = ""
    log: str = ""
    forward_address: str = ""  # a voter's forward endpoint (non-voters connect to it)
    netns: str = ""            # the network namespace it runs in; "" on loopback
    gossip_address: str = ""   # its gossip socket (host:port)
    libvirt_uri: str = ""      # its host's test-driver libvirtd; "" in a lab without libvirt

    @classmethod
    def from_plan(cls, plan: configs.NodePlan, network: Network | None = None,
                  libvirt: bool = False) -> LabNode:
        return cls(name=plan.name, pid=None, admin_socket=str(plan.admin_socket),
                   status_url=plan.status_url, voter=plan.voter, config=str(plan.config),
                   raft_address=plan.raft_address, log=str(plan.log),
                   forward_address=plan.forward_address, gossip_address=plan.gossip_address,
                   netns=network.link(plan.name).netns if network else "",
                   libvirt_uri=plan.libvirt_uri if libvirt else "")


def admin_call(socket_path: str | Path, verb: str, args: dict[str, Any] | None = None,
               timeout: float = 30.0) -> dict[str, Any]:
    """One admin request (JSON-lines protocol): the agent's reply ``{"ok": ..., ...}``.

    The lab's only dependency on the admin socket; raises ``hagent.admin.client``'s
    AdminUnavailable when no agent answers.
    """
    from hagent.admin.client import call

    return call(socket_path, verb, args or {}, timeout=timeout)


def http_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET ``url`` and decode its JSON body, whatever the HTTP status (/leader answers 503)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return json.loads(body)
        except ValueError:
            raise LabError(f"{url}: HTTP {exc.code}: {body[:200]!r}") from None


def tail(path: str | Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _all_threads_gone(pid: int) -> bool:
    """A zombie's main thread has exited; its other threads (Raft, HTTP) may still run and
    hold sockets. It is gone only once no task of it is left but the zombie leader."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return False
    return True


class Lab:
    """A running (or stopped) lab in ``dir``; build it with ``up`` or ``load``."""

    def __init__(self, dir: Path | str, nodes: list[LabNode]) -> None:
        self.dir = Path(dir).resolve()
        self.nodes = nodes
        self._procs: dict[str, subprocess.Popen] = {}  # children this object started

    # ---- creating and loading ------------------------------------------------------------

    @classmethod
    def up(cls, dir: Path | str, nodes: int = 3, voters: int | None = None, *,
           timeout: float = READY_TIMEOUT, register: bool = True,
           config_extra: dict[str, dict[str, Any]] | None = None,
           env: dict[str, str] | None = None, picker: PortPicker | None = None,
           netns: bool = False, libvirt: bool = False, nova: bool | str = False,
           instances: int = 0, nova_timings: Any = None, bmc: bool = False,
           eligible: bool = True, failure_domains: dict[str, str] | None = None) -> Lab:
        """Start ``nodes`` agents (the first ``voters`` vote), wait until all are ready,
        register segment ``lab`` and one host per agent. Raises LabError (after stopping what
        it started) if the agents are not ready within ``timeout`` seconds.

        ``netns``: each agent in its own network namespace (needs root), so ``partition``,
        ``heal`` and ``loss`` work; its endpoints bind the namespace's address.
        ``libvirt``: a test-driver libvirtd per host, watched by its agent's instance monitor
        (``config_extra["monitors"]`` may add to or override that).``nova``: the lab's Nova simulator (``hagent.lab.nova``), one simulated compute host
        per agent, powered by the agents' power switches; it writes ``DIR/clouds.yaml`` and
        the agents recover through it. ``instances``: boot that many, three in four with
        metadata HA_Enabled=True, spread over the hosts (``nova="sim"`` is ``True``).
        ``nova="real"``: a real Nova instead (``hagent.lab.realnova``, ~35 s to start,
        docs/nova-real.md). ``nova_timings``: its
        ``Timings`` (default: close to real Nova's). ``bmc``: ``DIR/bmc.toml`` names each
        host's power switch as its fence driver (``driver = "lab"``), in every config's
        ``fencing.bmc_inventory``: the leader powers a dead host off through it and needs no
        lease expiry (docs/fence-drivers.md). ``eligible``: every non-voter may be promoted
        (its own Raft and forward address; docs/voters.md); False: plain non-voters without
        the Raft secret. ``failure_domains``: a ``voters.failure_domain`` label per node name.
        """
        voters = configs.default_voters(nodes) if voters is None else voters
        configs.check_sizes(nodes, voters)
        lab_dir = Path(dir).resolve()
        lab_dir.mkdir(parents=True, exist_ok=True)
        cls._clear_previous(lab_dir)
        secret = lab_dir / configs.SECRET_FILE
        if not secret.exists():
            from hagent.secretfile import write_secret

            write_secret(secret)
        network = None
        if netns:
            try:
                network = Network.create(lab_dir, [configs.node_name(i + 1) for i in range(nodes)])
            except NetnsError as exc:
                raise LabError(str(exc)) from None
        picker = picker or PortPicker(lab_dir)
        lab = None
        try:
            # A netns lab binds fixed ports on addresses of its own: nothing can collide.
            for attempt in range(1, 2 if network else UP_ATTEMPTS + 1):
                if network:
                    ports: list[int] = []
                    plans = configs.plan_netns_nodes(lab_dir, nodes, voters,
                                                     [link.address for link in network.nodes],
                                                     eligible=eligible,
                                                     failure_domains=failure_domains)
                else:
                    ports = picker.pick(4 * nodes)
                    plans = configs.plan_nodes(lab_dir, nodes, voters, ports[:nodes],
                                               ports[2 * nodes:3 * nodes],
                                               forward_ports=ports[nodes:2 * nodes],
                                               gossip_ports=ports[3 * nodes:],
                                               eligible=eligible,
                                               failure_domains=failure_domains)
                configs.write_node_files(plans, secret, config_extra, libvirt=libvirt,
                                         nova=bool(nova), bmc=bmc)
                lab = cls(lab_dir, [LabNode.from_plan(p, network, libvirt) for p in plans])
                lab._env = env
                try:
                    power.start_switches(lab_dir, {p.name: p.power_socket for p in plans},
                                         lab._child_env())
                    if libvirt:
                        libvirtd.start_hosts(lab_dir, {p.name: (p.libvirt_dir,
                                                                p.libvirt_socket_dir)
                                                       for p in plans})
                    if nova == "real":
                        RealNova.start(lab_dir, [p.name for p in plans], lab_dir=lab_dir,
                                       bind=network.gateway if network else "127.0.0.1")
                    elif nova:
                        # In a netns lab the agents reach it over the lab bridge.
                        NovaSim.start(lab_dir, [p.name for p in plans], in_process=False,
                                      lab_dir=lab_dir, timings=nova_timings,
                                      bind=network.gateway if network else "127.0.0.1")
                except (power.PowerError, libvirtd.LibvirtdError, NovaSimError,
                        RealNovaError) as exc:
                    raise LabError(str(exc)) from None
                for node in lab.nodes:
                    lab._spawn(node)
                lab._save()
                try:
                    lab.wait_ready(timeout=timeout)
                    break
                except LabError as exc:
                    collided = lab._collisions()
                    lab.down(timeout=STOP_TIMEOUT)
                    picker.release(ports)
                    if collided and attempt < UP_ATTEMPTS and not network:
                        log.warning("lab %s: port collision (%s); retrying with new ports",
                                    lab_dir, ", ".join(collided))
                        for plan in plans:  # a new cluster: no log, no saved voter set
                            shutil.rmtree(plan.state_dir, ignore_errors=True)
                            plan.state_dir.mkdir(parents=True, mode=0o700)
                        continue
                    raise LabError(f"{exc}\n(agents stopped; configs and logs kept in {lab_dir})") from None
        except BaseException:
            if lab is not None:  # interrupted between spawning and waiting
                lab._stop(lab.names, STOP_TIMEOUT)
            _stop_nova(lab_dir)
            power.stop_switches(lab_dir)
            libvirtd.stop_hosts(lab_dir)
            if network is not None and Network.load(lab_dir) is not None:
                network.teardown()
            raise
        if register:
            lab.register(timeout=timeout)
        if nova and instances:
            ha = (3 * instances + 3) // 4
            lab.nova.boot(n_ha=ha, n_non_ha=instances - ha, hosts=lab.names, wait=60.0)
        return lab

    @property
    def nova(self) -> NovaSim | RealNova:
        """The lab's Nova: its simulator (``lab up --nova``) or real Nova (``--nova real``);
        LabError if it has none."""
        if (self.dir / REALNOVA_RECORD).exists():
            try:
                return RealNova.attach(self.dir)
            except RealNovaError as exc:
                raise LabError(str(exc)) from None
        try:
            return NovaSim.attach(self.dir)
        except (OSError, NovaSimError) as exc:
            raise LabError(f"the lab in {self.dir} has no Nova simulator ({exc}); start one "
                           f"with `hagent lab up --nova`") from None

    @staticmethod
    def _clear_previous(lab_dir: Path) -> None:
        """Refuse to start over a running lab; wipe the state of a stopped one (and its network,
        also one left by an `up` that died before it wrote ``lab.json``)."""
        if not (lab_dir / LAB_FILE).exists():
            _stop_nova(lab_dir)
            power.stop_switches(lab_dir)
            libvirtd.stop_hosts(lab_dir)
            Lab.remove_network(lab_dir)
            return
        old = Lab.load(lab_dir)
        alive = [n.name for n in old.nodes if old.state(n.name) != STOPPED]
        if alive:
            raise LabError(f"a lab is already running in {lab_dir} ({', '.join(alive)}); "
                           f"run `hagent lab down --dir {lab_dir}` first")
        _stop_nova(lab_dir)  # left by a lab whose agents all stopped
        power.stop_switches(lab_dir)
        libvirtd.stop_hosts(lab_dir)
        for node in old.nodes:
            shutil.rmtree(Path(node.config).parent, ignore_errors=True)
        Lab.remove_network(lab_dir)
        (lab_dir / LAB_FILE).unlink()

    @staticmethod
    def remove_network(lab_dir: Path) -> bool:
        """Remove the lab network recorded in ``lab_dir``, if any (False if there was none).
        Works without ``lab.json``: an `up --netns` that died early leaves only the network."""
        try:
            network = Network.load(lab_dir)
            if network is None:
                return False
            network.teardown()
        except NetnsError as exc:
            raise LabError(str(exc)) from None
        return True

    @classmethod
    def load(cls, dir: Path | str) -> Lab:
        """The lab recorded in ``DIR/lab.json``."""
        lab_dir = Path(dir).resolve()
        try:
            raw = json.loads((lab_dir / LAB_FILE).read_text())
        except FileNotFoundError:
            raise LabError(f"no lab in {lab_dir} (no {LAB_FILE}); start one with "
                           f"`hagent lab up --dir {lab_dir}`") from None
        except ValueError as exc:
            raise LabError(f"{lab_dir / LAB_FILE} is not valid JSON: {exc}") from None
        return cls(lab_dir, [LabNode(**entry) for entry in raw])

    def _save(self) -> None:
        tmp = self.dir / (LAB_FILE + ".tmp")
        tmp.write_text(json.dumps([asdict(n) for n in self.nodes], indent=2) + "\n")
        os.replace(tmp, self.dir / LAB_FILE)

    # ---- looking up ----------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def node(self, name: str) -> LabNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node {name!r} in the lab in {self.dir} (nodes: {', '.join(self.names)})")

    def _process(self, node: LabNode) -> psutil.Process | None:
        """The live agent process of ``node``, or None (never a recycled pid)."""
        if not node.pid:
            return None
        proc = self._procs.get(node.name)
        own = proc is not None and proc.pid == node.pid
        # Our own child: gone once waitpid reaps it, which is only after every thread exited.
        if own and proc.poll() is not None:
            return None
        try:
            p = psutil.Process(node.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                # Exiting (threads still running) or exited and not reaped by its parent.
                return None if _all_threads_gone(node.pid) else p
            # A pid from lab.json may have been recycled; our own live child cannot be, and
            # between fork and exec its command line is still this process's.
            if not own and node.config not in p.cmdline():
                return None
            return p
        except psutil.ZombieProcess:
            return None if _all_threads_gone(node.pid) else p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def state(self, name: str) -> str:
        """``running``, ``paused`` (SIGSTOPped) or ``stopped`` (no process)."""
        p = self._process(self.node(name))
        if p is None:
            return STOPPED
        try:
            return PAUSED if p.status() == psutil.STATUS_STOPPED else RUNNING
        except psutil.NoSuchProcess:
            return STOPPED

    def running(self) -> list[str]:
        """Names of nodes with a live (possibly paused) process."""
        return [n.name for n in self.nodes if self.state(n.name) != STOPPED]

    # ---- processes -----------------------------------------------------------------------

    _env: dict[str, str] | None = None

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._env or {})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("NOTIFY_SOCKET", None)  # the lab is not systemd
        return env

    def _spawn(self, node: LabNode) -> None:
        env = self._child_env()
        argv = [sys.executable, "-m", "hagent", "run", "--config", node.config]
        if node.netns:  # `ip netns exec` execs in place: the pid stays the agent's
            argv = ["ip", "netns", "exec", node.netns, *argv]
        with open(node.log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {START_MARKER} {node.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=Path(node.config).parent, env=env, start_new_session=True)
        self._procs[node.name] = proc
        node.pid = proc.pid

    def _signal(self, name: str, sig: signal.Signals) -> bool:
        """Send ``sig`` to the node's process group (its own session); False if not running."""
        node = self.node(name)
        p = self._process(node)
        if p is None:
            return False
        try:
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, sig)
            else:
                os.kill(p.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def crash(self, name: str) -> None:
        """SIGKILL the agent: no clean-up at all, as a power cut of the process."""
        if not self._signal(name, signal.SIGKILL):
            raise LabError(f"{name} is not running")
        self._wait_gone([name], STOP_TIMEOUT)

    def start(self, name: str) -> None:
        """Start a stopped or crashed agent again with the same config and ports, powering
        its host on first if the watchdog or ``kill_host`` turned it off."""
        node = self.node(name)
        if self.state(name) != STOPPED:
            raise LabError(f"{name} is already running (pid {node.pid})")
        try:
            if not power.power_state(self.dir, name)["on"]:
                power.power(self.dir, name, "on")
        except power.PowerError as exc:
            raise LabError(str(exc)) from None
        self._spawn(node)
        self._save()

    def kill_host(self, name: str) -> dict[str, Any]:
        """Power ``name``'s simulated host off at once: its agent dies with it. Returns the
        switch's record (``off_at_monotonic`` on this machine's monotonic clock)."""
        try:
            record = power.power(self.dir, name, "off")
        except power.PowerError as exc:
            raise LabError(str(exc)) from None
        self._wait_gone([name], STOP_TIMEOUT)
        return record

    def power_state(self, name: str) -> dict[str, Any]:
        """``name``'s simulated host: on, off_at_monotonic, reason (``watchdog``, ``lab``), ..."""
        try:
            return power.power_state(self.dir, name)
        except power.PowerError as exc:
            raise LabError(str(exc)) from None

    def pause(self, name: str) -> None:
        """SIGSTOP: the process freezes (no heartbeats, no answers) but keeps its sockets."""
        if not self._signal(name, signal.SIGSTOP):
            raise LabError(f"{name} is not running")
        self._wait_state(name, PAUSED)

    def resume(self, name: str) -> None:
        """SIGCONT a paused agent."""
        if not self._signal(name, signal.SIGCONT):
            raise LabError(f"{name} is not running")
        self._wait_state(name, RUNNING)

    def _wait_state(self, name: str, want: str, timeout: float = STOP_TIMEOUT) -> None:
        """Signals are delivered asynchronously: return once ``name`` is in state ``want``."""
        deadline = time.monotonic() + timeout
        while (state := self.state(name)) != want:
            if time.monotonic() >= deadline:
                raise LabError(f"{name} is {state}, not {want}, {timeout:g} s after the signal")
            time.sleep(0.01)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        """Stop one agent cleanly (SIGTERM), SIGKILL it if it has not exited in ``timeout``."""
        self._stop([name], timeout)

    def down(self, timeout: float = STOP_TIMEOUT, purge: bool = False) -> None:
        """Stop every agent (SIGTERM, SIGKILL after ``timeout``) and the libvirtds, and remove
        the lab network if it has one. Configs, state and logs stay for debugging unless
        ``purge``, which deletes the lab directory."""
        self._stop(self.names, timeout)
        _stop_nova(self.dir)
        power.stop_switches(self.dir)
        libvirtd.stop_hosts(self.dir)
        self.remove_network(self.dir)
        ports = []
        for node in self.nodes:
            for addr in (node.raft_address, node.forward_address, node.gossip_address,
                         node.status_url.rsplit("/", 1)[-1]):
                if addr and ":" in addr:
                    ports.append(int(addr.rsplit(":", 1)[1]))
        PortPicker(self.dir).release(ports)
        sockets = {Path(n.admin_socket).parent for n in self.nodes}
        if purge:
            for d in sockets:
                if d.name.startswith("hagent-lab-"):
                    shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop(self, names: Iterable[str], timeout: float) -> None:
        names = [n for n in names if self.state(n) != STOPPED]
        for name in names:
            self._signal(name, signal.SIGTERM)
            self._signal(name, signal.SIGCONT)  # a paused agent must run to handle SIGTERM
        left = self._wait_gone(names, timeout, fail=False)
        for name in left:
            log.warning("%s did not stop within %g s of SIGTERM; sending SIGKILL", name, timeout)
            self._signal(name, signal.SIGKILL)
        if left:
            self._wait_gone(left, STOP_TIMEOUT)

    def _wait_gone(self, names: list[str], timeout: float, fail: bool = True) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = [n for n in names if self.state(n) != STOPPED]
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        if left and fail:
            raise LabError(f"still running after {timeout:g} s: {', '.join(left)}")
        return left

    # ---- network faults (netns labs) -----------------------------------------------------

    @property
    def network(self) -> Network:
        """The lab network as recorded now (faults included); LabError on a loopback lab."""
        try:
            network = Network.load(self.dir)
        except NetnsError as exc:
            raise LabError(str(exc)) from None
        if network is None:
            raise LabError(f"the lab in {self.dir} runs on loopback: partitions and loss need "
                           f"a lab started with `hagent lab up --netns`")
        return network

    def partition(self, groups: list[list[str]]) -> None:
        """Drop all traffic between the groups of nodes, both ways (replaces an earlier
        partition). A node in no group still talks to everyone; the lab tooling reaches all."""
        self._fault(lambda net: net.partition(groups))

    def heal(self) -> None:
        """Remove every network fault (partition and loss)."""
        self._fault(lambda net: net.heal())

    def loss(self, name: str, percent: int) -> None:
        """Drop ``percent`` % of ``name``'s packets to and from other nodes (0 stops it);
        ``name`` "all": ``percent`` % on every link between two nodes."""
        if name == "all":
            name = ALL_LINKS
        else:
            self.node(name)
        self._fault(lambda net: net.loss(name, percent))

    def _fault(self, change: Callable[[Network], None]) -> None:
        try:
            change(self.network)
        except NetnsError as exc:
            raise LabError(str(exc)) from None

    # ---- talking to agents ---------------------------------------------------------------

    def status(self, name: str, timeout: float = 2.0) -> dict[str, Any]:
        """The node's ``GET /status`` document (raises LabError if it does not answer)."""
        node = self.node(name)
        try:
            return http_json(node.status_url + "/status", timeout)
        except (OSError, ValueError) as exc:
            raise LabError(f"{name}: no status from {node.status_url}/status: {exc}") from None

    def admin(self, name: str, verb: str, args: dict[str, Any] | None = None,
              timeout: float = 30.0) -> Any:
        """Run an admin verb on ``name``; its ``result``, or LabError with the agent's reason."""
        node = self.node(name)
        try:
            reply = admin_call(node.admin_socket, verb, args, timeout)
        except Exception as exc:  # AdminUnavailable, ProtocolError, OSError
            raise LabError(f"{name}: admin {verb}: {exc}") from None
        if not reply.get("ok"):
            raise LabError(f"{name}: admin {verb} refused: {reply.get('error')}")
        return reply.get("result")

    def _poll(self, what: str, names: list[str], check: Callable[[str], bool],
              timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while True:
            waiting = [n for n in waiting if not check(n)]
            if not waiting:
                return
            dead = [n for n in waiting if self.state(n) == STOPPED]
            if dead or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        parts = []
        for name in waiting:
            why = "its process exited" if self.state(name) == STOPPED else f"not {what} after {timeout:g} s"
            log_path = self.node(name).log
            parts.append(f"--- {name}: {why}; last lines of {log_path}:\n{tail(log_path)}")
        raise LabError(f"not {what}: {', '.join(waiting)}\n" + "\n".join(parts))

    def _ready(self, name: str) -> bool:
        try:
            return bool(self.status(name, timeout=1.0).get("ready"))
        except LabError:
            return False

    def wait_ready(self, names: Iterable[str] | None = None, timeout: float = READY_TIMEOUT) -> None:
        """Return once every named node (default: all) reports ``ready`` in ``/status``;
        LabError listing the laggards and their log tails otherwise (at once if one exits)."""
        self._poll("ready", list(names) if names is not None else self.names, self._ready, timeout)

    def leader(self, timeout: float = 10.0, among: Iterable[str] | None = None) -> str:
        """The name of the node that is leader in the highest term any live node reports."""
        candidates = list(among) if among is not None else self.names
        deadline = time.monotonic() + timeout
        while True:
            best: tuple[int, str] | None = None
            for name in candidates:
                if self.state(name) != RUNNING:
                    continue
                try:
                    st = self.status(name, timeout=1.0)
                except LabError:
                    continue
                if st.get("role") == "leader" and (best is None or st.get("term", 0) > best[0]):
                    best = (st.get("term", 0), name)
            if best is not None:
                return best[1]
            if time.monotonic() >= deadline:
                raise LabError(f"no leader among {', '.join(candidates)} within {timeout:g} s")
            time.sleep(POLL)

    def register(self, timeout: float = READY_TIMEOUT) -> None:
        """Segment ``lab`` (auto, compute) and one COMPUTE host per agent, named after it.

        Idempotent: an entity that already exists is left as it is, so a retry after a
        commit timeout (which may have committed) is harmless.
        """
        deadline = time.monotonic() + timeout
        via = self.nodes[0].name
        self._admin_retry(via, "segment.create", {"name": SEGMENT, "recovery_method": "auto",
                                                   "service_type": "compute"}, deadline)
        for node in self.nodes:
            self._admin_retry(via, "host.create", {"segment": SEGMENT, "name": node.name,
                                                    "type": "COMPUTE", "control_attributes": "SSH"},
                              deadline)
        self.wait_applied(timeout=max(1.0, deadline - time.monotonic()))

    def wait_applied(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once every voter has applied what the leader had committed when called, so
        a read on any node (non-voters read from a voter) sees it. A follower learns a commit
        only from the leader's next heartbeat, so without this a read right after a write
        through another node may miss it."""
        target = self.status(self.leader(timeout=timeout))["commit_index"]
        voters = [n.name for n in self.nodes if n.voter and self.state(n.name) == RUNNING]

        def applied(name: str) -> bool:
            try:
                return self.status(name, timeout=1.0).get("applied_index", 0) >= target
            except LabError:
                return False

        self._poll(f"applied up to index {target}", voters, applied, timeout)

    def _admin_retry(self, name: str, verb: str, args: dict[str, Any], deadline: float) -> Any:
        while True:
            try:
                return self.admin(name, verb, args, timeout=max(1.0, deadline - time.monotonic()))
            except LabError as exc:
                if "already exists" in str(exc):
                    return None
                if time.monotonic() >= deadline:
                    raise
                log.info("retrying %s: %s", verb, exc)
                time.sleep(0.2)

    # ---- start-up collisions -------------------------------------------------------------

    def _collisions(self) -> list[str]:
        """Ports of this lab held by some other process, or agents whose log says EADDRINUSE."""
        found = []
        mine = {n.pid for n in self.nodes if n.pid}
        wanted: dict[int, str] = {}
        for node in self.nodes:
            if node.raft_address:
                wanted[int(node.raft_address.rsplit(":", 1)[1])] = f"{node.name} raft"
            if node.forward_address:
                wanted[int(node.forward_address.rsplit(":", 1)[1])] = f"{node.name} forward"
            wanted[int(node.status_url.rsplit(":", 1)[1])] = f"{node.name} status"
        try:
            conns = psutil.net_connections(kind="tcp")
        except (psutil.AccessDenied, OSError):
            conns = []
        for c in conns:
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in wanted \
                    and c.pid not in mine and c.pid is not None:
                found.append(f"{wanted[c.laddr.port]} port {c.laddr.port} held by pid {c.pid}")
        for node in self.nodes:
            last_run = tail(node.log, 400).rsplit(START_MARKER, 1)[-1]
            if "Address already in use" in last_run:
                found.append(f"{node.name}: address already in use")
        return found


def _stop_nova(lab_dir: Path) -> None:
    """Stop the lab's Nova simulator (its record is DIR/nova.json) or real Nova, if any."""
    stop_real_nova(lab_dir)
    if (lab_dir / "nova.json").exists():
        try:
            NovaSim.attach(lab_dir).stop()
        except NovaSimError:
            pass
        (lab_dir / "nova.json").unlink(missing_ok=True)
