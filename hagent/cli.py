"""`hagent`: the daemon (`run`), config checking (`check-config`) and the local lab (`lab`)."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from hagent.config import DEFAULT_CONFIG_PATH, ConfigError, check_config_main, load_config


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        for error in exc.errors:
            print(f"{args.config}: {error}", file=sys.stderr)
        return 1
    from hagent.daemon import serve  # heavy imports only for the daemon
    from hagent.logs import setup_logging

    setup_logging(config.node.name, config.logging.level)
    try:
        return asyncio.run(serve(config))
    except Exception as exc:  # noqa: BLE001 - report start-up failures in one line, then exit
        import logging

        logging.getLogger("hagent").exception("agent failed: %s", exc)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="TOML config file")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a config file; exit 1 on errors")
    check.add_argument("file")
    check.set_defaults(func=lambda a: check_config_main(a.file))

    from hagent.lab.cli import add_lab_parser

    add_lab_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
