"""The committed reference and example are exactly what the code renders, and the example loads."""
from __future__ import annotations

from pathlib import Path

from hagent import configdoc
from hagent.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_md_is_current():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configdoc.render(), (
        "docs/configuration.md is stale; regenerate it with "
        "`.venv/bin/python -m hagent.configdoc > docs/configuration.md`")


def test_example_is_current():
    committed = (ROOT / "systemd" / "hagent.toml.example").read_text()
    assert committed == configdoc.render_example(), (
        "systemd/hagent.toml.example is stale; regenerate it with "
        "`.venv/bin/python -m hagent.configdoc --example > systemd/hagent.toml.example`")


def test_example_loads_cleanly():
    config = load_config(ROOT / "systemd" / "hagent.toml.example")
    assert config.is_voter
    assert len(config.raft.voters) == 3


def test_every_knob_is_documented_with_a_reason():
    rendered = configdoc.render()
    from dataclasses import fields

    from hagent.config import Config, section_types

    types = section_types(Config)
    for section in fields(Config):
        assert f"## `[{section.name}]`" in rendered
        for knob in fields(types[section.name]):
            assert knob.metadata.get("doc"), f"{section.name}.{knob.name} has no reason"
            assert f"| `{knob.name}` |" in rendered
            assert f"{knob.name} = " in configdoc.render_example()


def test_main_writes_the_reference(capsys):
    assert configdoc.main([]) == 0
    assert capsys.readouterr().out == configdoc.render()
    assert configdoc.main(["--example"]) == 0
    assert capsys.readouterr().out == configdoc.render_example()
