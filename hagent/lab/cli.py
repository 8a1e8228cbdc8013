"""`hagent lab ...`: the local cluster from the command line.

    hagent lab up --nodes 3 [--voters 3] [--netns] --dir DIR
                                                        start, wait ready, register segment "lab"
    hagent lab status --dir DIR [-f json]               one row per agent
    hagent lab crash|start|pause|resume --dir DIR NAME  SIGKILL, restart, SIGSTOP, SIGCONT
    hagent lab partition --dir DIR node1,node2/node3,node4,node5
                                                        drop traffic between the groups (--netns)
    hagent lab loss --dir DIR NAME PERCENT              drop PERCENT % of NAME's packets (--netns)
    hagent lab heal --dir DIR                           remove every partition and loss
    hagent lab down --dir DIR [--purge]                 SIGTERM all (SIGKILL after --timeout),
                                                        remove the lab's namespaces

``--dir`` defaults to ``$HAGENT_LAB_DIR``, else ``./hagent-lab``. Exit status 0 on success,
1 when the lab refused (the reason is printed), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from hagent.lab.cluster import LAB_FILE, READY_TIMEOUT, STOP_TIMEOUT, STOPPED, Lab, LabError
from hagent.lab.netns import parse_groups

DEFAULT_DIR = "hagent-lab"


def add_lab_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lab`` and its commands to the ``hagent`` parser; dispatches to ``lab_main``."""
    lab = subparsers.add_parser("lab", help="local cluster of agents for demos and tests",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    lab.set_defaults(func=lab_main)
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", default=os.environ.get("HAGENT_LAB_DIR", DEFAULT_DIR),
                       help="lab directory (default: $HAGENT_LAB_DIR or ./%(default)s)")
        return p

    up = with_dir(sub.add_parser("up", help="start N agents and wait until all are ready"))
    up.add_argument("--nodes", type=int, default=3, help="number of agents (default 3)")
    up.add_argument("--voters", type=int, default=None,
                    help="Raft voters among them (default: min(nodes, 3)); the rest are replicas")
    up.add_argument("--timeout", type=float, default=READY_TIMEOUT,
                    help="seconds to wait for every agent to be ready (default %(default)g)")
    up.add_argument("--no-register", action="store_true",
                    help="do not create segment 'lab' and its hosts")
    up.add_argument("--netns", action="store_true",
                    help="one network namespace per agent on a bridge (root only), so that "
                         "partition, loss and heal work")
    up.add_argument("--libvirt", action="store_true",
                    help="a test-driver libvirtd per host, watched by its agent's instance monitor")
    up.add_argument("--nova", nargs="?", const="sim", default=False, choices=("sim", "real"),
                    help="a Nova with one compute host per agent, writing DIR/clouds.yaml: the "
                         "simulator (sim, the default) or a real Nova 34 (real, ~35 s to start, "
                         "installs what it needs; docs/nova-real.md)")
    up.add_argument("--bmc", action="store_true",
                    help="a BMC stand-in per host (fence driver 'lab', DIR/bmc.toml): the leader "
                         "powers a dead host off without waiting for its lease")
    up.add_argument("--instances", type=int, default=0, metavar="M",
                    help="with --nova: boot M instances, three in four HA (default 0)")

    status = with_dir(sub.add_parser("status", help="state, role and term of every agent"))
    status.add_argument("-f", "--format", choices=("table", "json"), default="table")

    down = with_dir(sub.add_parser("down", help="stop every agent (SIGTERM, then SIGKILL)"))
    down.add_argument("--purge", action="store_true", help="also delete the lab directory")
    down.add_argument("--timeout", type=float, default=STOP_TIMEOUT,
                      help="seconds between SIGTERM and SIGKILL (default %(default)g)")

    for verb, text in (("crash", "SIGKILL one agent (its host's watchdog then powers it off)"),
                       ("kill-host", "power one simulated host off at once, agent included"),
                       ("start", "start a stopped agent again (powering its host on first)"),
                       ("pause", "SIGSTOP one agent"), ("resume", "SIGCONT a paused agent")):
        p = with_dir(sub.add_parser(verb, help=text))
        p.add_argument("name", help="node name, e.g. node2")

    part = with_dir(sub.add_parser("partition", help="drop traffic between groups of nodes"))
    part.add_argument("groups", help="groups separated by '/', names by ',', e.g. "
                                     "node1,node2/node3,node4,node5 (a node in no group talks "
                                     "to all)")
    loss = with_dir(sub.add_parser("loss", help="drop a share of one node's packets at random"))
    loss.add_argument("name", help="node name, e.g. node2, or 'all' for every link")
    loss.add_argument("percent", type=int, help="0-100 (0 stops the loss)")
    with_dir(sub.add_parser("heal", help="remove every partition and loss"))
    return lab


def lab_main(args: argparse.Namespace) -> int:
    """Run one ``hagent lab`` command; prints the reason and returns 1 if the lab refused."""
    try:
        return _COMMANDS[args.lab_command](args)
    except (LabError, ValueError) as exc:
        print(f"hagent lab {args.lab_command}: {exc}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    lab = Lab.up(args.dir, args.nodes, args.voters, timeout=args.timeout,
                 register=not args.no_register, netns=args.netns,
                 libvirt=args.libvirt, nova=args.nova, instances=args.instances,
                 bmc=args.bmc)
    print(f"lab up in {lab.dir}: {', '.join(lab.names)} ready; leader {lab.leader()}")
    print(f"  hagentctl --socket {lab.nodes[0].admin_socket} status")
    print(f"  curl {lab.nodes[0].status_url}/status")
    return 0


def _down(args: argparse.Namespace) -> int:
    if not (Path(args.dir) / LAB_FILE).exists() and Lab.remove_network(Path(args.dir)):
        # An `up --netns` that died before it recorded its agents: its network was all.
        print(f"lab network in {Path(args.dir).resolve()} removed")
        return 0
    lab = Lab.load(args.dir)
    lab.down(timeout=args.timeout, purge=args.purge)
    print(f"lab in {lab.dir} stopped" + (" and deleted" if args.purge else
                                          f"; logs in {lab.dir}/<node>/agent.log"))
    return 0


def status_rows(lab: Lab) -> list[dict[str, Any]]:
    """One row per node: process state plus the fields of its /status that matter most."""
    rows = []
    for node in lab.nodes:
        state = lab.state(node.name)
        row: dict[str, Any] = {"name": node.name, "state": state, "pid": node.pid,
                               "voter": node.voter, "role": None, "term": None, "leader": None,
                               "commit_index": None, "ready": None, "spool_depth": None,
                               "power": None}
        try:
            row["power"] = "on" if lab.power_state(node.name)["on"] else "off"
        except LabError:
            pass
        if state != STOPPED:
            try:
                st = lab.status(node.name, timeout=0.5 if state == "paused" else 2.0)
                # A running agent says whether it votes now (the voter set changes: lab.json
                # records only the bootstrap voters).
                for key in ("voter", "role", "term", "leader", "commit_index", "ready",
                            "spool_depth"):
                    row[key] = st.get(key)
            except LabError:
                row["role"] = "unreachable"
        rows.append(row)
    return rows


def _status(args: argparse.Namespace) -> int:
    lab = Lab.load(args.dir)
    rows = status_rows(lab)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    cols = list(rows[0]) if rows else []
    cells = [[("-" if r[c] is None else str(r[c]).lower() if isinstance(r[c], bool) else str(r[c]))
              for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _node_verb(args: argparse.Namespace) -> int:
    lab = Lab.load(args.dir)
    getattr(lab, args.lab_command.replace("-", "_"))(args.name)
    node = lab.node(args.name)
    print(f"{args.name}: {lab.state(args.name)}" + (f" (pid {node.pid})" if args.lab_command == "start" else ""))
    return 0


def _partition(args: argparse.Namespace) -> int:
    lab = Lab.load(args.dir)
    groups = parse_groups(args.groups)
    lab.partition(groups)
    print("partitioned: " + " | ".join(", ".join(g) for g in groups if g))
    return 0


def _loss(args: argparse.Namespace) -> int:
    Lab.load(args.dir).loss(args.name, args.percent)
    print(f"{args.name}: {args.percent} % loss")
    return 0


def _heal(args: argparse.Namespace) -> int:
    Lab.load(args.dir).heal()
    print("healed: no partition, no loss")
    return 0


_COMMANDS = {"up": _up, "down": _down, "status": _status, "crash": _node_verb,
             "kill-host": _node_verb, "start": _node_verb, "pause": _node_verb,
             "resume": _node_verb, "partition": _partition, "loss": _loss, "heal": _heal}
