"""The lab's on-disk layout and the agent config files it writes.

Per node ``DIR/<name>/``: ``hagent.toml``, ``node.key`` (its CURVE key pair, mode 0600),
``state/`` (Raft journal, spool), ``run/`` (admin socket), ``agent.log`` and, in a lab with
libvirt, ``libvirt/`` (its host's test-driver libvirtd: ``hagent/lab/libvirtd.py``); one shared
``DIR/cluster.secret`` (mode 0600). The first ``voters`` nodes are the bootstrap Raft voters;
the others are non-voters that keep no Raft state and forward to the voters (every node's
public key is in ``security.allowed_keys``, the voters' in ``security.voter_keys``). Every
node is eligible for promotion by default (a Raft and a forward address of its own, the
secret; docs/voters.md), so the leader can replace a dead voter; ``eligible=False`` leaves
the non-voters plain (no Raft address, no secret). Every file is a
plain agent config: `hagent check-config DIR/node1/hagent.toml` accepts it and an operator can
read it to learn what a real deployment looks like.

Addresses: on loopback every node binds 127.0.0.1 on ports picked for it (``hagent/lab/ports.py``);
in a netns lab (``hagent/lab/netns.py``) every node binds its own namespace's address on the
ports a deployment uses (``DEPLOYMENT_PORTS``). ``node_config`` is the one place that turns a
node's plan into its TOML document: a new section goes there.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# AF_UNIX paths are limited to 108 bytes including the terminating NUL (sun_path); keep
# some slack for a ".tmp" suffix a server may bind first and rename.
MAX_SOCKET_PATH = 100
SECRET_FILE = "cluster.secret"
CONFIG_FILE = "hagent.toml"
LOG_FILE = "agent.log"
KEY_FILE = "node.key"
NOVA_CLOUDS = "clouds.yaml"   # written by the lab's Nova simulator (hagent.lab.nova)
NOVA_CLOUD = "hagent-lab"     # its entry under clouds:
BMC_INVENTORY = "bmc.toml"    # `lab up --bmc`: every host's power switch as its fence driver
#: Ports every node of a netns lab binds on its own address, as in docs/configuration.md's
#: examples; each node has an address of its own there, so they never collide.
DEPLOYMENT_PORTS = {"raft": 7170, "forward": 7171, "gossip": 7172, "status": 7180}


@dataclass(frozen=True)
class NodePlan:
    """Where one lab agent lives and what it binds."""

    name: str
    dir: Path
    raft_address: str   # host:port bound while it votes; "" on a node never promoted
    status_bind: str    # host:port of the HTTP status endpoint
    admin_socket: Path
    voter: bool         # a bootstrap voter (the committed voter set may differ later)
    forward_address: str = ""  # host:port served while it votes; "" on a node never promoted
    host: str = "127.0.0.1"    # the address every endpoint of this node binds
    gossip_address: str = ""   # host:port of its gossip socket (failure detection)
    failure_domain: str = ""   # its voters.failure_domain label ("" none)

    @property
    def key_file(self) -> Path:
        return self.dir / KEY_FILE

    @property
    def config(self) -> Path:
        return self.dir / CONFIG_FILE

    @property
    def log(self) -> Path:
        return self.dir / LOG_FILE

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def power_socket(self) -> Path:
        """Its simulated host's power switch (the ``lab`` watchdog driver's socket)."""
        return power_socket_path(self.dir.parent, self.name)

    @property
    def libvirt_dir(self) -> Path:
        """Its simulated hypervisor (``lab up --libvirt``): libvirtd's config, pid file, log."""
        return self.dir / "libvirt"

    @property
    def libvirt_socket_dir(self) -> Path:
        return libvirt_socket_dir(self.dir.parent, self.name)

    @property
    def libvirt_uri(self) -> str:
        """The test driver on its own libvirtd (hagent.lab.libvirtd)."""
        return f"test+unix:///default?socket={self.libvirt_socket_dir / 'libvirt-sock'}"

    @property
    def status_url(self) -> str:
        """Base URL of the status endpoint (append /status, /health, /leader, /metrics)."""
        return f"http://{self.status_bind}"


def node_name(index: int) -> str:
    """Lab node names: node1, node2, ... (1-based)."""
    return f"node{index}"


def admin_socket_path(lab_dir: Path, name: str, socket: str = "hagent.sock") -> Path:
    """``DIR/<name>/run/<socket>``, or a short path under the temp dir if that one would
    not fit in an AF_UNIX address (the short path is derived from DIR, so it is stable)."""
    path = Path(lab_dir) / name / "run" / socket
    if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH:
        return path
    stem = name if socket == "hagent.sock" else f"{name}-{socket.removesuffix('.sock')}"
    return _short_dir(lab_dir) / f"{stem}.sock"


def _short_dir(lab_dir: Path) -> Path:
    """``/tmp/hagent-lab-<hash of DIR>``: where sockets go whose path in DIR is too long."""
    digest = hashlib.sha256(os.fsencode(str(Path(lab_dir).resolve()))).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"hagent-lab-{digest}"


def libvirt_socket_dir(lab_dir: Path, name: str) -> Path:
    """The directory of ``name``'s libvirtd sockets: ``DIR/<name>/libvirt``, or a short one
    under the temp dir when libvirtd's longest socket name would not fit there."""
    path = Path(lab_dir) / name / "libvirt"
    if len(os.fsencode(str(path / "libvirt-admin-sock"))) <= MAX_SOCKET_PATH:
        return path
    return _short_dir(lab_dir) / f"{name}-libvirt"


def power_socket_path(lab_dir: Path, name: str) -> Path:
    """The socket of ``name``'s simulated power switch and watchdog (hagent.lab.power)."""
    return admin_socket_path(lab_dir, name, "power.sock")


def plan_nodes(lab_dir: Path, nodes: int, voters: int, raft_ports: list[int],
               status_ports: list[int], host: str = "127.0.0.1", *,
               forward_ports: list[int], gossip_ports: list[int],
               hosts: list[str] | None = None, eligible: bool = True,
               failure_domains: dict[str, str] | None = None) -> list[NodePlan]:
    """The layout of an ``nodes``-agent lab whose first ``voters`` agents vote.

    Every port list has one port per node (a non-voter's Raft and forward ports are used once
    it is promoted; without ``eligible`` they stay unused). Every node binds ``host``, or its
    own entry of ``hosts`` (one per node) when given. ``failure_domains`` labels nodes by name.
    """
    check_sizes(nodes, voters)
    if any(len(ports) != nodes for ports in (raft_ports, forward_ports, status_ports,
                                              gossip_ports)):
        raise ValueError(f"need {nodes} raft, forward, status and gossip ports each, got "
                         f"{len(raft_ports)}, {len(forward_ports)}, {len(status_ports)} and "
                         f"{len(gossip_ports)}")
    domains = dict(failure_domains or {})
    unknown = sorted(set(domains) - {node_name(i + 1) for i in range(nodes)})
    if unknown:
        raise ValueError(f"failure_domains names nodes the lab does not have: {', '.join(unknown)}")
    if hosts is not None and len(hosts) != nodes:
        raise ValueError(f"need {nodes} hosts, got {len(hosts)}")
    lab_dir = Path(lab_dir).resolve()
    plans = []
    for i in range(nodes):
        name = node_name(i + 1)
        voter = i < voters
        may_vote = voter or eligible
        h = hosts[i] if hosts is not None else host
        plans.append(NodePlan(
            name=name, dir=lab_dir / name,
            raft_address=f"{h}:{raft_ports[i]}" if may_vote else "",
            status_bind=f"{h}:{status_ports[i]}",
            admin_socket=admin_socket_path(lab_dir, name), voter=voter,
            forward_address=f"{h}:{forward_ports[i]}" if may_vote else "", host=h,
            gossip_address=f"{h}:{gossip_ports[i]}", failure_domain=domains.get(name, "")))
    return plans


def plan_netns_nodes(lab_dir: Path, nodes: int, voters: int, hosts: list[str], *,
                     eligible: bool = True,
                     failure_domains: dict[str, str] | None = None) -> list[NodePlan]:
    """The layout of a netns lab: node ``i`` binds ``hosts[i]`` on ``DEPLOYMENT_PORTS``."""
    return plan_nodes(lab_dir, nodes, voters, [DEPLOYMENT_PORTS["raft"]] * nodes,
                      [DEPLOYMENT_PORTS["status"]] * nodes,
                      forward_ports=[DEPLOYMENT_PORTS["forward"]] * nodes,
                      gossip_ports=[DEPLOYMENT_PORTS["gossip"]] * nodes, hosts=hosts,
                      eligible=eligible, failure_domains=failure_domains)


def check_sizes(nodes: int, voters: int) -> None:
    """Refuse lab sizes that cannot work, with the reason."""
    if nodes < 1:
        raise ValueError(f"a lab needs at least 1 node (got {nodes})")
    if not 1 <= voters <= nodes:
        raise ValueError(f"voters must be between 1 and the number of nodes ({nodes}), got {voters}")


def default_voters(nodes: int) -> int:
    """3 voters (5 from 5 nodes up would also do; 3 keeps a small lab's elections fast)."""
    return min(nodes, 3)


def node_config(plan: NodePlan, voter_addresses: list[str], secret: Path,
                extra: dict[str, dict[str, Any]] | None = None, *,
                forward_endpoints: list[str], public_keys: dict[str, str],
                voter_keys: list[str], gossip_seeds: list[str],
                libvirt: bool = False, nova: bool = False,
                bmc_inventory: Path | None = None) -> dict[str, dict[str, Any]]:
    """The TOML document (as nested dicts) for one lab agent; ``extra`` overrides per section.

    ``public_keys`` maps every node's name to its Z85 public key (every node's allow-list
    holds them all: gossip runs between all nodes); ``voter_keys`` are the voters' keys in
    ``voter_addresses`` order, and the voters' gossip addresses (``gossip_seeds``, same order)
    are every node's seeds. Every node that may vote (a Raft address) names the Raft secret
    and its own forward endpoint (``forward.bind``). ``libvirt``: the
    instance monitor watches the node's own simulated hypervisor (``plan.libvirt_uri``).
    ``bmc_inventory``: the lab's BMC inventory (``write_bmc_inventory``), so the leader
    powers a dead host off through its switch instead of waiting for its lease.
    """
    raft: dict[str, Any] = {"voters": list(voter_addresses)}
    forward: dict[str, Any] = {"endpoints": list(forward_endpoints)}
    if plan.raft_address:
        raft.update(secret_file=str(secret), bind=plan.raft_address)
        forward["bind"] = plan.forward_address
    doc: dict[str, dict[str, Any]] = {
        "node": {"name": plan.name, "state_dir": str(plan.state_dir), "run_dir": str(plan.run_dir)},
        "raft": raft,
        "forward": forward,
        "security": {"key_file": str(plan.key_file),
                     "allowed_keys": [public_keys[n] for n in sorted(public_keys)],
                     "voter_keys": list(voter_keys)},
        "gossip": {"bind": plan.gossip_address, "seeds": list(gossip_seeds),
                   "seed_keys": list(voter_keys)},
        "admin": {"socket": str(plan.admin_socket)},
        "status": {"bind": plan.status_bind},
        # The simulated host's power switch is the watchdog: it powers the host off if the
        # agent stops seeing its lease renewals committed (docs/fencing.md).
        "fencing": {"watchdog_driver": "lab", "lab_power_socket": str(plan.power_socket)},
    }
    if bmc_inventory is not None:
        doc["fencing"]["bmc_inventory"] = str(bmc_inventory)
    if plan.failure_domain:
        doc["voters"] = {"failure_domain": plan.failure_domain}
    if libvirt:
        doc["monitors"] = {"instance_enabled": True, "libvirt_uri": plan.libvirt_uri}
    # With the lab's Nova simulator, the leader recovers through it (the clouds.yaml the
    # simulator writes in the lab directory); without one there is nothing to recover through.
    doc["recovery"] = ({"enabled": True, "clouds_yaml": str(plan.dir.parent / NOVA_CLOUDS),
                        "cloud": NOVA_CLOUD} if nova else {"enabled": False})
    for section, values in (extra or {}).items():
        if not isinstance(values, dict):
            raise ValueError(f"config override [{section}] must be a table of keys")
        doc.setdefault(section, {}).update(values)
    return doc


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise ValueError(f"{where}: cannot write {type(value).__name__} to TOML")


def render_toml(doc: dict[str, dict[str, Any]]) -> str:
    """TOML for a document of tables of scalars and arrays (all an agent config holds)."""
    out = ["# Written by `hagent lab`; a plain agent config (see docs/configuration.md).\n"]
    for section, values in doc.items():
        out.append(f"\n[{section}]\n")
        for key, value in values.items():
            out.append(f"{key} = {_toml_value(value, f'{section}.{key}')}\n")
    return "".join(out)


def write_bmc_inventory(lab_dir: Path, plans: list[NodePlan]) -> Path:
    """``DIR/bmc.toml``: each host's power switch as its fence driver (``driver = "lab"``,
    hagent/fencing/lab_bmc.py), the lab's stand-in for a BMC inventory; its path."""
    doc = {f"hosts.{p.name}": {"driver": "lab", "socket": str(p.power_socket)} for p in plans}
    path = Path(lab_dir) / BMC_INVENTORY
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(render_toml(doc))
    os.replace(tmp, path)
    return path


def write_node_files(plans: list[NodePlan], secret: Path,
                     extra: dict[str, dict[str, Any]] | None = None,
                     libvirt: bool = False, nova: bool = False, bmc: bool = False) -> None:
    """Create each node's directories, write its CURVE key pair (a new one each time) and its
    ``hagent.toml``; with ``bmc``, the lab's BMC inventory too, named in every config."""
    from hagent.forward.keys import write_key_pair

    voter_addresses = [p.raft_address for p in plans if p.voter]
    forward_endpoints = [p.forward_address for p in plans if p.voter]
    public_keys = {}
    for plan in plans:
        for d in (plan.dir, plan.state_dir, plan.run_dir, plan.admin_socket.parent):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        public_keys[plan.name] = write_key_pair(plan.key_file, overwrite=True).public
    voter_keys = [public_keys[p.name] for p in plans if p.voter]
    gossip_seeds = [p.gossip_address for p in plans if p.voter]
    inventory = write_bmc_inventory(plans[0].dir.parent, plans) if bmc and plans else None
    for plan in plans:
        text = render_toml(node_config(plan, voter_addresses, secret, extra,
                                       forward_endpoints=forward_endpoints,
                                       public_keys=public_keys, voter_keys=voter_keys,
                                       gossip_seeds=gossip_seeds, libvirt=libvirt, nova=nova,
                                       bmc_inventory=inventory))
        tmp = plan.config.with_suffix(".toml.tmp")
        tmp.write_text(text)
        os.replace(tmp, plan.config)
