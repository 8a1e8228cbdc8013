"""`make demo`: a compute host dies and its instances come back on other hosts, safely.

A 5-node lab (3 voters, 2 non-voters) with the Nova simulator at real Nova's timings and 40
instances (three in four HA). One host's agent is SIGKILLed (`lab crash`): its watchdog then
powers the host off, as a kernel watchdog would. While the cluster notices, fences and
recovers, a line per second shows the host's power, its gossip state, its STOPPED
notification, whether it is fenced, and how many of its instances Nova accepted for
evacuation and runs again elsewhere. Then the timeline, in seconds after the kill, and the
invariant check: no instance ran on two hosts at once, none was lost, each was evacuated
once and only after its host was off, and all run again on other hosts.

Exit status 0 only if the check passes. About a minute; the lab is always brought down.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hagent.lab import timeline
from hagent.lab.cluster import Lab, LabError

#: Seconds the recovery may take before the demo gives up (lease_ttl 15 s, ~4 s per wave of
#: evacuations: a few waves at most for one host of a 40-instance lab).
RECOVERY_TIMEOUT = 90.0
VIEW_PERIOD = 1.0


def pick_victim(lab: Lab) -> str:
    """The last non-voter (no election muddles the story); the last node otherwise."""
    non_voters = [n.name for n in lab.nodes if not n.voter]
    return (non_voters or lab.names)[-1]


def instances_on(lab: Lab, host: str) -> list[str]:
    """The host's instances, HA ones first (the engine's order)."""
    servers = lab.nova.state()["servers"]
    mine = [i for i, s in servers.items() if s["host"] == host]
    return sorted(mine, key=lambda i: ((servers[i]["metadata"] or {}).get("HA_Enabled") != "True",
                                       servers[i]["name"]))


def print_timeline(tl: timeline.Timeline) -> None:
    print(f"\ntimeline (seconds after the kill of {tl.kill.host}):")
    for at, what, detail in tl.events:
        print(f"  {'?' if at is None else f'+{at:6.2f}'} s  {what:<26} {detail}")
    m = tl.marks
    if m["powered_off"] is not None and m["fenced"] is not None:
        print(f"  (the host was off {m['fenced'] - m['powered_off']:.1f} s before the leader "
              f"counted it fenced: nothing was evacuated while it might still run)")
    print("\n  each instance: evacuation accepted -> ACTIVE on its new host")
    for item in sorted(tl.instances, key=lambda i: (i["accepted"] is None, i["accepted"] or 0)):
        acc = "-" if item["accepted"] is None else f"+{item['accepted']:6.2f}"
        act = "-" if item["active"] is None else f"+{item['active']:6.2f}"
        kind = "HA" if item["ha"] else "non-HA"
        print(f"  {acc} s -> {act} s  {item['name']:<10} {kind:<6} {item['status']} "
              f"on {item['host']}")


def run(lab_dir: Path, nodes: int, instances: int) -> int:
    print(f"starting a {nodes}-node lab with the Nova simulator and {instances} instances "
          f"in {lab_dir} ...", flush=True)
    t_up = time.monotonic()
    lab = Lab.up(lab_dir, nodes=nodes, nova=True, instances=instances)
    try:
        victim = pick_victim(lab)
        mine = instances_on(lab, victim)
        servers = lab.nova.state()["servers"]
        ha = sum(1 for i in mine if (servers[i]["metadata"] or {}).get("HA_Enabled") == "True")
        print(f"up in {time.monotonic() - t_up:.1f} s; leader {lab.leader()}; {victim} runs "
              f"{len(mine)} instances ({ha} HA, {len(mine) - ha} non-HA; "
              f"evacuate_all_instances moves all, HA first)", flush=True)
        print(f">>> lab crash {victim}: SIGKILL its agent; its watchdog will power the host off",
              flush=True)
        kill = timeline.kill(lab, victim, "crash")
        watch = timeline.Watch(lab, kill, mine)
        deadline = kill.monotonic + RECOVERY_TIMEOUT
        next_view = kill.monotonic
        while True:
            snap = watch.snapshot()
            print(snap.line(), flush=True)
            if (watch.done() and snap.active == snap.total) or time.monotonic() >= deadline:
                break
            next_view += VIEW_PERIOD
            time.sleep(max(0.0, next_view - time.monotonic()))
        tl = timeline.collect(lab, kill, mine)
        print_timeline(tl)
        problems = tl.violations()
        if not watch.done():
            problems.append(f"the STOPPED notification did not end within "
                            f"{RECOVERY_TIMEOUT:g} s")
        report = tl.report
        print(f"\ninvariant check (Nova simulator, {report['instances']} instances): "
              f"{len(report['double_runs'])} double runs, {len(report['lost'])} lost, "
              f"{sum(i['evacuations'] for i in tl.instances)} accepted evacuations for "
              f"{len(tl.instances)} instances")
        if problems:
            print("FAIL:\n  " + "\n  ".join(problems))
            return 1
        m = tl.marks
        print(f"PASS: all {len(tl.instances)} instances of {victim} run again on other hosts "
              f"{m['all_active']:.1f} s after the kill; none ran twice, none was lost")
        return 0
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hagent.lab.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--dir",
                        help="lab directory (default: a temporary one, removed on success)")
    args = parser.parse_args(argv)
    lab_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="hagent-demo-"))
    try:
        status = run(lab_dir, args.nodes, args.instances)
    except LabError as exc:
        print(f"FAIL: {exc}")
        status = 1
    if status == 0 and not args.dir:
        shutil.rmtree(lab_dir, ignore_errors=True)
    elif status:
        print(f"lab files and agent logs kept in {lab_dir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
