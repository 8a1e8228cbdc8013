"""`hagent`: the daemon (`run`), config checking (`check-config`), CURVE keys (`keygen`) and the
local lab (`lab`)."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import NoReturn

from hagent.config import DEFAULT_CONFIG_PATH, ConfigError, check_config_main, load_config


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        for error in exc.errors:
            print(f"{args.config}: {error}", file=sys.stderr)
        return 1
    from hagent.daemon import RoleSwitch, serve  # heavy imports only for the daemon
    from hagent.logs import setup_logging

    setup_logging(config.node.name, config.logging.level)
    try:
        return asyncio.run(serve(config))
    except RoleSwitch as switch:
        _reexec(switch)
    except Exception as exc:  # noqa: BLE001 - report start-up failures, then exit 1
        import logging

        if isinstance(exc, _startup_refusals()):
            # A refusal names the file or key and the fix: one line, no traceback.
            logging.getLogger("hagent").critical("agent refused to start: %s", exc)
        else:
            logging.getLogger("hagent").exception("agent failed: %s", exc)
        return 1


def _reexec(switch: Exception) -> NoReturn:
    """Become a new agent process with the same command line and PID (its role comes from the
    voter set the old one saved): systemd's MAINPID and the lab's records stay valid."""
    import logging
    import os

    logging.getLogger("hagent").warning("%s; re-executing %s", switch, " ".join(sys.orig_argv))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def _startup_refusals() -> tuple[type[Exception], ...]:
    """Errors that mean "this node's set-up is wrong" (a file, a device, an address)."""
    from hagent.fencing.inventory import InventoryError
    from hagent.fencing.watchdog import WatchdogError
    from hagent.membership.shell import GossipBindError
    from hagent.monitors.process_list import ProcessListError
    from hagent.secretfile import SecretFileError
    from consensus.voterfile import VoterFileError
    from recovery.nova import NovaConfigError

    return (InventoryError, WatchdogError, GossipBindError, ProcessListError, SecretFileError,
            NovaConfigError, VoterFileError)


def _keygen(args: argparse.Namespace) -> int:
    """Write a new CURVE key pair to ``--out`` (mode 0600) and print its public key."""
    from hagent.forward.keys import write_key_pair
    from hagent.secretfile import SecretFileError

    try:
        pair = write_key_pair(Path(args.out), overwrite=args.force)
    except SecretFileError as exc:
        print(f"hagent keygen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hagent keygen: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(pair.public)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="TOML config file")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a config file; exit 1 on errors")
    check.add_argument("file")
    check.set_defaults(func=lambda a: check_config_main(a.file))

    keygen = sub.add_parser(
        "keygen", help="write this node's CURVE key pair; print its public key",
        description="Write a new CURVE key pair to FILE (mode 0600; security.key_file) and print "
                    "its Z85 public key, for the voters' security.allowed_keys (a non-voter) or "
                    "every node's security.voter_keys (a voter).")
    keygen.add_argument("--out", required=True, metavar="FILE", help="key pair file to create")
    keygen.add_argument("--force", action="store_true",
                        help="replace an existing file (its old public key stops working)")
    keygen.set_defaults(func=_keygen)

    from hagent.lab.cli import add_lab_parser

    add_lab_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
