"""masakari-monitors' process_list.yaml: read as it is; every mistake names entry and field."""
from __future__ import annotations

import textwrap

import pytest

from hagent.config import ConfigError, loads_config
from hagent.monitors.process_list import (ProcessListError, load_process_list,
                                          parse_process_list)

# etc/masakarimonitors/process_list.yaml.sample from masakari-monitors, first two entries.
SAMPLE = """\
-
    # libvirtd
    process_name: /usr/sbin/libvirtd
    start_command: systemctl start libvirtd
    pre_start_command:
    post_start_command:
    restart_command: systemctl restart libvirtd
    pre_restart_command:
    post_restart_command:
    run_as_root: True
-
    # nova-compute
    process_name: /usr/local/bin/nova-compute
    start_command: systemctl start nova-compute
    pre_start_command:
    post_start_command:
    restart_command: systemctl restart nova-compute
    pre_restart_command:
    post_restart_command:
    run_as_root: True
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ProcessListError) as info:
        parse_process_list(textwrap.dedent(text), "pl.yaml")
    return info.value.problems


def test_masakari_sample_loads_as_it_is():
    libvirtd, nova = parse_process_list(SAMPLE)
    assert libvirtd.process_name == "/usr/sbin/libvirtd"
    assert libvirtd.start_command == ("systemctl", "start", "libvirtd")
    assert libvirtd.restart_command == ("systemctl", "restart", "libvirtd")
    assert libvirtd.pre_restart_command == () and libvirtd.post_start_command == ()
    assert libvirtd.run_as_root is True
    assert (libvirtd.index, libvirtd.line) == (0, 3)  # the line of its first key
    assert (nova.index, nova.line) == (1, 13)
    assert nova.notified_name == "nova-compute"


def test_notified_name_is_the_last_path_part_as_masakari_sends_it():
    (entry,) = parse_process_list(textwrap.dedent("""\
        - process_name: /usr/bin/python /usr/local/bin/masakari-instancemonitor
          start_command: a
          restart_command: b
          run_as_root: false
        """))
    assert entry.notified_name == "masakari-instancemonitor"


def test_commands_run_pre_main_post_and_skip_missing_ones():
    (entry,) = parse_process_list(textwrap.dedent("""\
        - process_name: x
          pre_start_command: ps1
          start_command: s
          restart_command: r
          post_restart_command: pr2 "two words"
          run_as_root: true
        """))
    assert entry.commands(initial=True) == (("pre_start_command", ("ps1",)),
                                            ("start_command", ("s",)))
    assert entry.commands(initial=False) == (("restart_command", ("r",)),
                                             ("post_restart_command", ("pr2", "two words")))


def test_commands_are_split_like_a_shell_would_quote_but_never_interpreted():
    (entry,) = parse_process_list(textwrap.dedent("""\
        - process_name: x
          start_command: echo "a; b" $(id) '>' out
          restart_command: r
          run_as_root: true
        """))
    assert entry.start_command == ("echo", "a; b", "$(id)", ">", "out")


def test_bad_yaml_names_line_and_column():
    (problem,) = problems("- process_name: x\n  start_command: [a, b\n")
    assert problem.startswith("not valid YAML")
    assert "line 3" in problem or "line 2" in problem


def test_missing_field_names_entry_and_field():
    (problem,) = problems("""\
        - process_name: /usr/sbin/libvirtd
          start_command: a
          run_as_root: true
        """)
    assert problem == ('entry [0] (line 1, process_name "/usr/sbin/libvirtd"): '
                       "restart_command: required field missing")


def test_wrong_types_name_entry_and_field():
    found = problems("""\
        - process_name: ok
          start_command: a
          restart_command: b
          run_as_root: true
        - process_name: second
          start_command: 5
          restart_command: [a, b]
          run_as_root: "yes"
        """)
    assert found == [
        'entry [1] (line 5, process_name "second"): start_command: expected a command line '
        "(a string), got a number (5)",
        'entry [1] (line 5, process_name "second"): restart_command: expected a command line '
        "(a string), got a list",
        'entry [1] (line 5, process_name "second"): run_as_root: expected True or False, '
        'got a string ("yes")',
    ]


def test_unknown_field_suggests_the_right_one():
    (problem,) = problems("""\
        - process_name: x
          start_command: a
          restart_command: b
          post_restart_comand: c
          run_as_root: true
        """)
    assert "post_restart_comand: unknown field (did you mean post_restart_command?)" in problem


def test_empty_required_command_and_unbalanced_quote():
    found = problems("""\
        - process_name: x
          start_command: ""
          restart_command: systemctl "restart
          run_as_root: true
        """)
    assert found[0].endswith("start_command: must not be empty")
    assert "restart_command: cannot split" in found[1] and "No closing quotation" in found[1]


def test_process_name_must_be_a_string_that_fits_a_payload():
    found = problems("""\
        - process_name: 12
          start_command: a
          restart_command: b
          run_as_root: true
        - process_name: /usr/sbin/
          start_command: a
          restart_command: b
          run_as_root: true
        """)
    assert found[0] == ("entry [0] (line 1): process_name: expected a non-empty string, "
                        "got a number (12)")
    assert "process_name: the part after the last '/'" in found[1]


def test_duplicate_process_names():
    entry = "- {process_name: x, start_command: a, restart_command: b, run_as_root: true}\n"
    (problem,) = problems(entry + entry)
    assert problem == ('entry [1] (line 2, process_name "x"): process_name: already watched '
                       "by entry [0]")


@pytest.mark.parametrize("text, expected", [
    ("", "no entries"),
    ("# only comments\n", "no entries"),
    ("[]\n", "no entries"),
    ("process_name: x\n", "expected a list of entries (each starting with '-'), got a mapping"),
    ("- just a string\n", "entry [0] (line 1): expected a mapping"),
])
def test_shape_of_the_document(text, expected):
    (problem,) = problems(text)
    assert expected in problem


def test_every_problem_is_reported_with_the_source(tmp_path):
    path = tmp_path / "process_list.yaml"
    path.write_text("- process_name: x\n- process_name: y\n")
    with pytest.raises(ProcessListError) as info:
        load_process_list(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2 * 3  # start_command, restart_command, run_as_root missing in each
    assert all(line.startswith(f"{path}: entry [") for line in lines)


def test_unreadable_file(tmp_path):
    with pytest.raises(ProcessListError, match="cannot read the process list"):
        load_process_list(tmp_path / "missing.yaml")


CONFIG = """
[node]
name = "compute-01"
[raft]
voters = ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]
bind = "10.0.0.1:7170"
[monitors]
process_enabled = true
process_list_inline = '''
%s'''
"""


def test_inline_list_in_hagent_toml_is_checked_when_the_config_loads():
    config = loads_config(CONFIG % SAMPLE)
    entries = parse_process_list(config.monitors.process_list_inline)
    assert [e.notified_name for e in entries] == ["libvirtd", "nova-compute"]
    bad = SAMPLE.replace("run_as_root: True\n-", "run_as_root: maybe\n-", 1)
    with pytest.raises(ConfigError) as info:
        loads_config(CONFIG % bad)
    (error,) = info.value.errors
    assert error.startswith("monitors.process_list_inline: ")
    assert 'entry [0] (line 3, process_name "/usr/sbin/libvirtd"): run_as_root: expected True ' \
           'or False, got a string ("maybe")' in error
