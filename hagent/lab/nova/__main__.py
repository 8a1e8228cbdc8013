"""``python -m hagent.lab.nova --dir DIR --hosts node1,node2 [--port P]``: run the Nova
simulator until SIGTERM/SIGINT, writing ``DIR/clouds.yaml`` and ``DIR/nova.json``."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from hagent.lab.nova import versions
from hagent.lab.nova.model import HostSpec, Timings
from hagent.lab.nova.server import DEFAULT_CLOUD, STATE_FILE, NovaServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hagent.lab.nova",
                                     description="A simulated Nova (and Keystone) for the lab.")
    parser.add_argument("--dir", required=True, type=Path,
                        help="where clouds.yaml and nova.json are written")
    parser.add_argument("--hosts", required=True,
                        help="comma-separated compute host names (one nova-compute each)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free one)")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--lab-dir", type=Path,
                        help="lab directory whose power.json lists the hosts' power switches "
                             "(default: --dir)")
    parser.add_argument("--cloud", default=DEFAULT_CLOUD, help="cloud name in clouds.yaml")
    parser.add_argument("--timings", help="JSON object overriding Timings fields")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every simulated duration by this")
    parser.add_argument("--host-specs", help="JSON {host: {vcpus, memory_mb, ...}}")
    parser.add_argument("--max-version", default=versions.text(versions.MAX_VERSION),
                        help="highest compute microversion served")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s nova-sim: %(message)s")
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        timings = Timings(**json.loads(args.timings)) if args.timings else Timings()
        specs = {h: HostSpec(**s) for h, s in json.loads(args.host_specs).items()} \
            if args.host_specs else None
        max_version = versions.parse(args.max_version)
    except (ValueError, TypeError, versions.VersionError) as exc:
        parser.error(str(exc))
    if args.scale != 1.0:
        timings = timings.scaled(args.scale)
    server = NovaServer(hosts, bind=args.bind, port=args.port,
                        lab_dir=args.lab_dir or args.dir, timings=timings, host_specs=specs,
                        max_version=max_version)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except OSError as exc:
        print(f"nova-sim: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 1
    server.write_files(args.dir, args.cloud)
    try:
        stop.wait()
    finally:
        server.stop()
        (args.dir / STATE_FILE).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
