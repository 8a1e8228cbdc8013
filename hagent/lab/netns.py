"""A lab network made of real network namespaces, and the faults nftables can put on it.

Why: on loopback every agent shares one network stack, so a partition or packet loss cannot be
made. Here each lab node gets its own namespace on one bridge, as hosts on one switch, and
faults are nftables rules on that switch. There is no ``tc netem`` on the target machines, so
delay and jitter are the simulator's job; loss and partitions are made here.

Layout, for a lab whose id is ``ID`` (6 hex digits derived from the lab directory):

- bridge ``hlID`` in the root namespace with address ``<subnet>.1/24``: the lab tooling (status
  endpoints, probes) reaches every node over it;
- per node ``i`` (0-based), namespace ``hlID-<name>`` with loopback up and ``eth0`` =
  ``<subnet>.<i+2>/24``, the other end of veth ``hlIDv<i>`` enslaved to the bridge;
- nftables table ``bridge hlID`` with one ``forward`` chain: the faults. The bridge forward
  hook sees only node-to-node frames, so faults never cut the lab tooling off from a node;
- the subnet is a /24 of 198.18.0.0/15 (RFC 2544, reserved for benchmarking), chosen from the
  lab directory and skipped when any address or route of this host overlaps it.

``DIR/netns.json`` records all of it *before* anything is created, so ``teardown(DIR)`` removes
exactly what the lab made (and nothing else), even after the process that created it died
half-way. It also holds the current faults, so every process (the CLI, a test) that changes them
renders the whole rule set from one state.
"""
from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

RECORD_FILE = "netns.json"
PREFIX = "hl"
#: 512 /24s reserved for benchmarking networks: a host has no business routing them.
SUPERNET = ipaddress.ip_network("198.18.0.0/15")
#: .1 is the bridge, .255 broadcast: nodes take .2 to .254.
MAX_NODES = 253
#: Creation holds this lock: two labs starting at once must not pick the same names or subnet.
LOCK_FILE = Path(tempfile.gettempdir()) / "hagent-lab-netns.lock"
#: How many (id, subnet) candidates to try before giving up.
CANDIDATES = 64
NETNS_DIR = Path("/run/netns")
SYS_NET = Path("/sys/class/net")

# Runs in a node's namespace: one TCP connect, its outcome on stdout.
_PROBE = """\
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("timeout")
except OSError:
    print("unreachable")
"""

OPEN, REFUSED, TIMEOUT, UNREACHABLE = "open", "refused", "timeout", "unreachable"
#: Probe outcomes that prove packets went both ways (a RST is an answer too).
REACHABLE = (OPEN, REFUSED)


class NetnsError(Exception):
    """A namespace, link or nftables command failed; the message names the command and says
    what the kernel answered."""


@dataclass
class NodeLink:
    """One lab node's place on the lab network."""

    name: str      # the lab node name (node1, ...)
    netns: str     # its network namespace
    veth: str      # the root-namespace end of its link, a port of the bridge
    address: str   # its IPv4 address (eth0 in its namespace)


@dataclass
class Faults:
    """The faults in force: ``partition`` groups of node names (traffic between two groups is
    dropped; a node in no group talks to everyone) and ``loss`` percent per node."""

    partition: list[list[str]] = field(default_factory=list)
    loss: dict[str, int] = field(default_factory=dict)


def _run(argv: list[str], check: bool = True, input: str | None = None,
         timeout: float = 30.0) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _gone(proc: subprocess.CompletedProcess) -> bool:
    """The command failed only because the thing to delete does not exist (any more)."""
    err = proc.stderr.lower()
    return any(s in err for s in ("cannot find device", "no such file", "does not exist",
                                  "not found"))


#: ``loss(ALL_LINKS, pct)``: loss on every node-to-node link (each frame drawn once), where a
#: node's own loss applies to its frames in and out (a frame between two lossy nodes is
#: drawn twice).
ALL_LINKS = "*"


def rules(links: list[NodeLink], faults: Faults) -> list[str]:
    """The ``forward`` chain's rules (nft syntax, without ``add rule ...``) for ``faults``.

    Pure: unit tests check it without a kernel. Partition: for each ordered pair of groups,
    frames entering from one group's veths and leaving to the other's are dropped. Loss:
    ``numgen random mod 100 < pct`` on frames from and to the node, so each direction loses
    ``pct`` % independently.
    """
    veth = {link.name: link.veth for link in links}
    out = []

    def names(group: list[str]) -> str:
        return "{ " + ", ".join(f'"{veth[n]}"' for n in group) + " }"

    for a in faults.partition:
        for b in faults.partition:
            if a is not b:
                out.append(f"iifname {names(a)} oifname {names(b)} drop")
    for name in sorted(faults.loss):
        pct = faults.loss[name]
        # numgen's range is 0-99: "< 100" is no valid rule, 100 % is a plain drop.
        chance = "" if pct >= 100 else f" numgen random mod 100 < {pct}"
        if pct > 0 and name == ALL_LINKS:
            # One draw per frame between two of this lab's nodes: every link loses exactly
            # pct %. Scoped to the lab's veths: a bridge table sees every bridge's frames.
            every = names(sorted(veth))
            out.append(f"iifname {every} oifname {every}{chance} drop")
        elif pct > 0:
            out.append(f'iifname "{veth[name]}"{chance} drop')
            out.append(f'oifname "{veth[name]}"{chance} drop')
    return out


def check_partition(groups: list[list[str]], known: list[str]) -> list[list[str]]:
    """``groups`` as lists of known names, each name in one group at most, at least two
    non-empty groups; ValueError naming the problem otherwise."""
    groups = [list(g) for g in groups if g]
    if len(groups) < 2:
        raise ValueError(f"a partition needs at least two groups of nodes, got {groups}")
    seen: set[str] = set()
    for group in groups:
        for name in group:
            if name not in known:
                raise ValueError(f"no node {name!r} in this lab (nodes: {', '.join(known)})")
            if name in seen:
                raise ValueError(f"{name} is in two groups of the partition")
            seen.add(name)
    return groups


def parse_groups(text: str) -> list[list[str]]:
    """``"node1,node2/node3,node4,node5"`` -> ``[["node1", "node2"], ["node3", ...]]``."""
    return [[n.strip() for n in part.split(",") if n.strip()] for part in text.split("/")]


class Network:
    """A lab's namespaces, links, bridge and fault table, as recorded in ``DIR/netns.json``."""

    def __init__(self, lab_dir: Path, lab_id: str, subnet: str, nodes: list[NodeLink],
                 faults: Faults | None = None) -> None:
        self.lab_dir = Path(lab_dir)
        self.lab_id = lab_id
        self.subnet = subnet
        self.nodes = nodes
        self.faults = faults or Faults()

    @property
    def bridge(self) -> str:
        return PREFIX + self.lab_id

    @property
    def table(self) -> str:
        """The nftables table (family ``bridge``): the same name as the bridge."""
        return PREFIX + self.lab_id

    @property
    def gateway(self) -> str:
        """The bridge's address: where the lab tooling's packets come from."""
        return str(ipaddress.ip_network(self.subnet)[1])

    # ---- creating, loading, removing -----------------------------------------------------

    @classmethod
    def create(cls, lab_dir: Path | str, names: list[str]) -> Network:
        """Create a namespace per name on a new bridge, record it, and return it.

        On failure everything made so far is removed again and NetnsError says which command
        failed. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
        """
        lab_dir = Path(lab_dir).resolve()
        if not 1 <= len(names) <= MAX_NODES:
            raise ValueError(f"a netns lab holds 1 to {MAX_NODES} nodes, not {len(names)}")
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root: run the lab as root, or without --netns")
        if Network.load(lab_dir) is not None:
            raise NetnsError(f"{lab_dir / RECORD_FILE} exists: the lab's network is still up; "
                             f"run `hagent lab down --dir {lab_dir}` first")
        lab_dir.mkdir(parents=True, exist_ok=True)
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lab_id, subnet = _choose(lab_dir)
            net = ipaddress.ip_network(subnet)
            links = [NodeLink(name=n, netns=f"{PREFIX}{lab_id}-{n}", veth=f"{PREFIX}{lab_id}v{i}",
                              address=str(net[i + 2])) for i, n in enumerate(names)]
            network = cls(lab_dir, lab_id, subnet, links)
            network._save()  # first: whatever happens next, teardown knows what to remove
            try:
                network._build()
            except BaseException:
                network.teardown()
                raise
        log.info("lab network %s: bridge %s, %d namespaces", subnet, network.bridge, len(links))
        return network

    def _build(self) -> None:
        prefix = ipaddress.ip_network(self.subnet).prefixlen
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        _run(["nft", "-f", "-"], input=(
            f"table bridge {self.table} {{\n"
            f"  chain forward {{ type filter hook forward priority 0; policy accept; }}\n}}\n"))
        for link in self.nodes:
            _run(["ip", "netns", "add", link.netns])
            _run(["ip", "link", "add", link.veth, "type", "veth", "peer", "name", "eth0",
                  "netns", link.netns])
            _run(["ip", "link", "set", link.veth, "master", self.bridge, "up"])
            _run(["ip", "-n", link.netns, "addr", "add", f"{link.address}/{prefix}", "dev", "eth0"])
            _run(["ip", "-n", link.netns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", link.netns, "link", "set", "lo", "up"])

    @classmethod
    def load(cls, lab_dir: Path | str) -> Network | None:
        """The network recorded in ``DIR/netns.json``, or None if the lab has none."""
        path = Path(lab_dir) / RECORD_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise NetnsError(f"{path} is not valid JSON ({exc}); remove the lab's namespaces "
                             f"(ip netns list | grep {PREFIX}) and that file by hand") from None
        return cls(Path(lab_dir).resolve(), raw["lab_id"], raw["subnet"],
                   [NodeLink(**n) for n in raw["nodes"]], Faults(**raw.get("faults", {})))

    def _save(self) -> None:
        path = self.lab_dir / RECORD_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"lab_id": self.lab_id, "subnet": self.subnet,
                                   "bridge": self.bridge, "table": f"bridge {self.table}",
                                   "nodes": [asdict(n) for n in self.nodes],
                                   "faults": asdict(self.faults)}, indent=2) + "\n")
        os.replace(tmp, path)

    def teardown(self) -> None:
        """Remove every namespace, veth, the bridge and the nftables table of this lab, then
        the record. Processes still inside the lab's namespaces (agents whose pid was never
        recorded because the lab CLI died) are SIGKILLed first: the lab started them. What is
        already gone is skipped; other failures are raised after everything else was tried."""
        errors = []
        for link in self.nodes:
            for pid in self.pids(link.name):
                try:
                    os.kill(pid, signal.SIGKILL)
                    log.warning("killed pid %d left in namespace %s", pid, link.netns)
                except ProcessLookupError:
                    pass
        steps = [["nft", "delete", "table", "bridge", self.table]]
        for link in self.nodes:
            steps.append(["ip", "link", "del", link.veth])  # both ends, synchronously
            steps.append(["ip", "netns", "del", link.netns])
        steps.append(["ip", "link", "del", self.bridge])
        for argv in steps:
            proc = _run(argv, check=False)
            if proc.returncode != 0 and not _gone(proc):
                errors.append(f"`{' '.join(argv)}`: {proc.stderr.strip()}")
        if errors:
            raise NetnsError("could not remove all of the lab network " + self.subnet + ": "
                             + "; ".join(errors))
        (self.lab_dir / RECORD_FILE).unlink(missing_ok=True)
        log.info("lab network %s removed", self.subnet)

    # ---- looking up and running ----------------------------------------------------------

    def link(self, name: str) -> NodeLink:
        for link in self.nodes:
            if link.name == name:
                return link
        raise ValueError(f"no node {name!r} on the lab network "
                         f"(nodes: {', '.join(n.name for n in self.nodes)})")

    def address(self, name: str) -> str:
        return self.link(name).address

    def exec_argv(self, name: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``name``'s namespace. ``ip netns exec`` execs in place, so the
        pid of the started process is the pid of ``argv``'s program."""
        return ["ip", "netns", "exec", self.link(name).netns, *argv]

    def pids(self, name: str) -> list[int]:
        """Processes inside ``name``'s namespace right now."""
        link = self.link(name)
        if not (NETNS_DIR / link.netns).exists():
            return []
        proc = _run(["ip", "netns", "pids", link.netns], check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def probe(self, src: str, host: str, port: int, timeout: float = 1.0) -> str:
        """One TCP connect from ``src``'s namespace to ``host:port``: ``open``, ``refused``
        (both prove the path works both ways), ``timeout`` or ``unreachable``."""
        proc = _run(self.exec_argv(src, [sys.executable, "-c", _PROBE, host, str(port),
                                         str(timeout)]), timeout=timeout + 30)
        return proc.stdout.strip()

    # ---- faults --------------------------------------------------------------------------

    def partition(self, groups: list[list[str]]) -> None:
        """Drop all traffic between the groups, both ways; replaces any earlier partition
        (losses stay)."""
        self._change(lambda f: setattr(f, "partition", check_partition(groups, self._names())))

    def heal(self) -> None:
        """Remove every fault: the partition and every node's loss."""
        self._change(lambda f: (setattr(f, "partition", []), f.loss.clear()))

    def loss(self, name: str, percent: int) -> None:
        """Drop ``percent`` % of the frames from and to ``name``, at random (0 removes it);
        ``name`` ALL_LINKS: of the frames on every link between nodes."""
        if name != ALL_LINKS:
            self.link(name)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be an integer 0-100, got {percent!r}")

        def change(f: Faults) -> None:
            if percent:
                f.loss[name] = percent
            else:
                f.loss.pop(name, None)

        self._change(change)

    def _names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def _change(self, edit: Callable[[Faults], object]) -> None:
        """Apply ``edit`` to the recorded faults (another process may have changed them since
        this object was loaded), install the whole rule set in one nft transaction, record it."""
        current = Network.load(self.lab_dir)
        if current is None:
            raise NetnsError(f"the lab network in {self.lab_dir} is gone (no {RECORD_FILE})")
        faults = current.faults
        edit(faults)
        script = [f"flush chain bridge {self.table} forward"]
        script += [f"add rule bridge {self.table} forward {r}" for r in rules(self.nodes, faults)]
        _run(["nft", "-f", "-"], input="\n".join(script) + "\n")
        self.faults = faults
        self._save()


def teardown(lab_dir: Path | str) -> bool:
    """Remove the lab network recorded in ``DIR``; False if there was none."""
    network = Network.load(lab_dir)
    if network is None:
        return False
    network.teardown()
    return True


def _in_use() -> list[ipaddress.IPv4Network]:
    """IPv4 networks this host has addresses in or routes to (default routes aside)."""
    nets = []
    for entry in json.loads(_run(["ip", "-j", "-4", "addr"]).stdout or "[]"):
        for a in entry.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for r in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
        dst = r.get("dst", "default")
        if dst != "default":
            nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
    return nets


def _choose(lab_dir: Path) -> tuple[str, str]:
    """A lab id and subnet derived from ``lab_dir`` that nothing on this host uses yet."""
    used = _in_use()
    subnets = list(SUPERNET.subnets(new_prefix=24))
    for k in range(CANDIDATES):
        digest = hashlib.sha256(f"{lab_dir}\0{k}".encode()).hexdigest()
        lab_id = digest[:6]
        subnet = subnets[int(digest[6:14], 16) % len(subnets)]
        if (SYS_NET / (PREFIX + lab_id)).exists():
            continue
        if NETNS_DIR.is_dir() and any(p.name.startswith(f"{PREFIX}{lab_id}-")
                                      for p in NETNS_DIR.iterdir()):
            continue
        if _run(["nft", "list", "table", "bridge", PREFIX + lab_id], check=False).returncode == 0:
            continue
        if any(subnet.overlaps(n) for n in used):
            continue
        return lab_id, str(subnet)
    raise NetnsError(f"no free lab id and /24 of {SUPERNET} after {CANDIDATES} tries; "
                     f"remove stale lab networks (ip link | grep {PREFIX})")
