"""Render the configuration reference and the example file from the config dataclasses.

``python -m hagent.configdoc > docs/configuration.md`` writes the reference;
``python -m hagent.configdoc --example > systemd/hagent.toml.example`` the commented
example. Tests compare both committed files with these renderings, so neither can drift
from ``hagent/config.py``, where every knob, default and reason is declared once.
"""
from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path

from hagent import config as cfg


def _sections() -> list[tuple[str, type]]:
    types = cfg.section_types(cfg.Config)
    return [(f.name, types[f.name]) for f in fields(cfg.Config)]


def _default_text(f: Field) -> str:
    if f.metadata.get("required"):
        return "required"
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return f"`{cfg.toml_value(default)}`"


def _constraints(f: Field) -> list[str]:
    out = []
    if "choices" in f.metadata:
        out.append("one of " + ", ".join(f"`{c}`" for c in f.metadata["choices"]))
    out += [check.describes for check in f.metadata.get("check", ())]
    out += ["each " + check.describes for check in f.metadata.get("item_check", ())]
    return out


def _type_text(tp: object) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if typing.get_origin(tp) is list:
        return f"array of {names[typing.get_args(tp)[0]]}s"
    return names[tp]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _doc(cls: type) -> str:
    return inspect.cleandoc(cls.__doc__ or "")


def render() -> str:
    """docs/configuration.md: per table, every key with type, default, constraints and why."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from hagent/config.py by `python -m hagent.configdoc > docs/configuration.md`;",
        "     do not edit by hand: tests/unit/test_config_docs.py compares this file with the code. -->",
        "",
        f"One TOML file per node, by default `{cfg.DEFAULT_CONFIG_PATH}`. "
        "`hagent check-config FILE` validates it (and the secret file's mode) without starting "
        "anything; `hagent run` refuses a file with an unknown key, a wrong type or a bad value "
        "and lists every problem with its key path, e.g. "
        '`raft.voters[2]: "10.0.0.3" is not host:port (no :port)`.',
        "",
        "Types follow TOML: an integer is not accepted where true/false is expected, nor "
        "true/false where a number is. Relative paths are taken relative to the directory "
        "of the config file. A commented example with every key is `systemd/hagent.toml.example`.",
        "",
    ]
    for name, section in _sections():
        out += [f"## `[{name}]`", "", _doc(section), ""]
        out += ["| key | type | default | allowed | why |", "| --- | --- | --- | --- | --- |"]
        types = cfg.section_types(section)
        for f in fields(section):
            out.append("| " + " | ".join(_cell(c) for c in (
                f"`{f.name}`",
                _type_text(types[f.name]),
                _default_text(f),
                "; ".join(_constraints(f)) or "",
                f.metadata["doc"],
            )) + " |")
        rules = getattr(section, "rules", ())
        if rules:
            out += ["", "Also checked:", ""]
            out += [f"- {rule.doc}" for rule in rules]
        out.append("")
    if getattr(cfg.Config, "rules", ()):
        out += ["## Checked across tables", ""]
        out += [f"- {rule.doc}" for rule in cfg.Config.rules]
        out.append("")
    return "\n".join(out)


def _comment(text: str, width: int = 88) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent="# ", subsequent_indent="# ")


def render_example() -> str:
    """systemd/hagent.toml.example: every key, commented with its reason; loads cleanly.

    Keys with an ``example`` value (the required ones, and ``raft.bind`` for a voter) are
    set; every other key is shown commented out at its default.
    """
    out = [
        "# hagent agent configuration: copy to /etc/hagent/hagent.toml on every compute node.",
        "# Generated from hagent/config.py by",
        "#   python -m hagent.configdoc --example > systemd/hagent.toml.example",
        "# Reference: docs/configuration.md. Validate with: hagent check-config FILE",
        "# Lines starting with '# key =' show the default; uncomment to change it.",
        "",
    ]
    for name, section in _sections():
        out += _comment(_doc(section), 88)
        out.append(f"[{name}]")
        for f in fields(section):
            out.append("")
            out += _comment(f.metadata["doc"])
            allowed = _constraints(f)
            if allowed:
                out += _comment("Allowed: " + "; ".join(a.replace("`", "") for a in allowed) + ".")
            if "example" in f.metadata:
                if not f.metadata.get("required"):
                    out.append(f"# default: {_default_text(f).strip('`')}")
                out.append(f"{f.name} = {cfg.toml_value(f.metadata['example'])}")
            else:
                out.append(f"# {f.name} = {_default_text(f).strip('`')}")
        out.append("")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hagent.configdoc", description=__doc__.splitlines()[0])
    parser.add_argument("--example", action="store_true", help="print the example TOML file instead")
    args = parser.parse_args(argv)
    sys.stdout.write(render_example() if args.example else render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
