"""load_config: every error names the key path and the reason; valid files load typed."""
from __future__ import annotations

from pathlib import Path

import pytest

from hagent.config import (
    Config,
    ConfigError,
    check_config_main,
    dump_config,
    load_config,
    loads_config,
    split_host_port,
)

VOTERS = '["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]'
KEYS = '["6Dh>1]T/*wB24WZW*]UGy){}I0ML[F{%IDv)4%1<", "NkIz@ym?%?57[]mjkC-LpcX)Kw.9fk(t-9kn#&mT", "9zIE&8ZG4B.Q41A].]iPLrm5WLAjM}u=GwFLMNai"]'
# A non-voter needs the voters' forward endpoints and keys; these come after [raft] so tests
# may append raft keys to MINIMAL.
FORWARD = (f'[forward]\nendpoints = ["10.0.0.1:7171", "10.0.0.2:7171", "10.0.0.3:7171"]\n'
           f'[security]\nvoter_keys = {KEYS}\n')
MINIMAL = f'{FORWARD}[node]\nname = "compute-01"\n[raft]\nvoters = {VOTERS}\n'


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    return info.value.errors


def with_raft(extra: str) -> str:
    return MINIMAL + extra + "\n"


def test_minimal_file_loads_with_defaults():
    config = loads_config(MINIMAL)
    assert isinstance(config, Config)
    assert config.node.name == "compute-01"
    assert config.node.state_dir == Path("/var/lib/hagent")
    assert config.raft.voters == ["10.0.0.1:7170", "10.0.0.2:7170", "10.0.0.3:7170"]
    assert config.raft.leader_fallback_timeout == 2.5
    assert config.status.bind == "127.0.0.1:7180"
    assert config.logging.level == "INFO"
    assert not config.is_voter


def test_voter_bind_makes_a_voter():
    config = loads_config(with_raft('bind = "10.0.0.2:7170"'))
    assert config.is_voter


def test_int_is_accepted_as_float_and_converted():
    config = loads_config(with_raft("election_timeout_max = 2"))
    assert config.raft.election_timeout_max == 2.0
    assert isinstance(config.raft.election_timeout_max, float)


def test_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "hagent.toml"
    path.write_text('[node]\nname = "a"\nvoters = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.startswith("TOML syntax error:")
    assert "line 3" in error


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "cannot read" in info.value.errors[0]


def test_required_keys_missing_in_an_empty_file():
    assert errors_of("") == ["node.name: required key missing", "raft.voters: required key missing"]


def test_unknown_key_and_table_with_suggestion():
    errors = errors_of(with_raft('bogus = 1\n[statsu]\nbind = "x"'))
    assert "raft.bogus: unknown key" in errors
    assert 'statsu: unknown table (did you mean "status"?)' in errors


def test_section_that_is_not_a_table():
    assert errors_of(f'node = "x"\n[raft]\nvoters = {VOTERS}\n{FORWARD}') == [
        'node: expected a table ([node]), got string "x"']


@pytest.mark.parametrize("line, expected", [
    ('leader_fallback_timeout = "x"',
     'raft.leader_fallback_timeout: expected a number, got string "x"'),
    ("compaction_min_entries = true",
     "raft.compaction_min_entries: expected an integer, got boolean true"),
    ("compaction_min_entries = 10.0",
     "raft.compaction_min_entries: expected an integer, got float 10.0"),
    ("fsync = 1", "raft.fsync: expected true or false, got integer 1"),
    ("election_timeout_min = true", "raft.election_timeout_min: expected a number, got boolean true"),
    ("secret_file = 5", "raft.secret_file: expected a path (string), got integer 5"),
    ('secret_file = ""', "raft.secret_file: must not be empty"),
    ("bind = []", "raft.bind: expected a string, got an array"),
    ("election_timeout_max = inf", "raft.election_timeout_max: must be a finite number, got inf"),
    ("compaction_min_time = 1979-05-27", "raft.compaction_min_time: expected a number, got date 1979-05-27"),
])
def test_type_errors(line, expected):
    assert errors_of(with_raft(line)) == [expected]


def test_list_must_be_a_list_of_strings():
    errors = errors_of('[node]\nname = "a"\n[raft]\nvoters = "10.0.0.1:1"\n')
    assert errors == ['raft.voters: expected an array of strings, got string "10.0.0.1:1"']
    errors = errors_of('[node]\nname = "a"\n[raft]\nvoters = ["a:1", 2, "c:3"]\n')
    assert errors == ["raft.voters[1]: expected a string, got integer 2"]


def test_voter_not_host_port_names_its_index():
    errors = errors_of('[node]\nname = "a"\n[raft]\nvoters = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3"]\n')
    assert errors == ['raft.voters[2]: "10.0.0.3" is not host:port (no :port)']


@pytest.mark.parametrize("count", [1, 2, 4, 6])
def test_voter_count_must_be_3_or_5_and_says_why(count):
    voters = ", ".join(f'"10.0.0.{i}:7170"' for i in range(1, count + 1))
    (error,) = errors_of(f'[node]\nname = "a"\n[raft]\nvoters = [{voters}]\n')
    assert error.startswith(f"raft.voters: {count} voters given; use 3 or 5")
    assert "loses the majority" in error and "even count" in error


def test_five_voters_are_fine():
    voters = ", ".join(f'"h{i}.example.com:7170"' for i in range(5))
    text = f'[node]\nname = "a"\n[raft]\nvoters = [{voters}]\nbind = "h0.example.com:7170"\n'
    assert len(loads_config(text).raft.voters) == 5


def test_duplicate_voters():
    (error,) = errors_of('[node]\nname = "a"\n[raft]\nvoters = ["a:1", "b:1", "A:1"]\n')
    assert error == 'raft.voters: "A:1" is listed twice (entries 0 and 2)'


def test_bind_outside_the_voters_makes_an_eligible_non_voter_that_needs_forward_bind():
    (error,) = errors_of(with_raft('bind = "10.0.0.9:7170"'))
    assert error.startswith('forward: raft.bind "10.0.0.9:7170" is not in raft.voters, so '
                            'this node is an eligible non-voter')
    assert "set forward.bind" in error
    config = loads_config(MINIMAL.replace("[security]", '[security]').replace(
        '[forward]\n', '[forward]\nbind = "10.0.0.9:7171"\n') + 'bind = "10.0.0.9:7170"\n')
    assert config.eligible and not config.is_voter
    assert config.forward_bind == "" and config.own_forward_endpoint == "10.0.0.9:7171"


def test_bind_must_be_host_port_and_is_reported_once():
    assert errors_of(with_raft('bind = "10.0.0.9"')) == ['raft.bind: "10.0.0.9" is not host:port (no :port)']


def test_election_timeouts_ordered():
    errors = errors_of(with_raft("election_timeout_min = 2.0\nelection_timeout_max = 1.0"))
    assert len(errors) == 1
    assert errors[0].startswith("raft.election_timeout_min: 2.0 must be below election_timeout_max (1.0)")


def test_heartbeat_below_election_timeout():
    (error,) = errors_of(with_raft("append_entries_period = 0.5"))
    assert error.startswith("raft.append_entries_period: 0.5 must be below a third of "
                            "election_timeout_min (0.8)")


def test_three_heartbeats_fit_in_the_shortest_election_timeout():
    # 0.3 < 0.8 but 3 x 0.3 is not: pysyncobj would die at start with a bare AssertionError.
    (error,) = errors_of(with_raft("append_entries_period = 0.3"))
    assert "third of election_timeout_min" in error and "pysyncobj refuses" in error


def test_heartbeat_below_leader_fallback():
    errors = errors_of(with_raft("append_entries_period = 0.2\nleader_fallback_timeout = 0.2"))
    assert any(e.startswith("raft.append_entries_period: 0.2 must be below leader_fallback_timeout")
               for e in errors)


def test_connection_timeout_outlives_the_election_timeout():
    (error,) = errors_of(with_raft("connection_timeout = 1.0"))
    assert error.startswith("raft.connection_timeout: 1.0 must be at least election_timeout_max (1.6)")


def test_accepted_timings_are_accepted_by_pysyncobj():
    from pysyncobj import SyncObjConf

    raft = loads_config(with_raft("append_entries_period = 0.13\nelection_timeout_min = 0.4\nelection_timeout_max = 1.4\n"
                          "leader_fallback_timeout = 0.14\nconnection_timeout = 1.4")).raft
    SyncObjConf(appendEntriesPeriod=raft.append_entries_period, raftMinTimeout=raft.election_timeout_min,
                raftMaxTimeout=raft.election_timeout_max, leaderFallbackTimeout=raft.leader_fallback_timeout,
                connectionTimeout=raft.connection_timeout).validate()


@pytest.mark.parametrize("value", ["0", "-1", "3.5", "30"])
def test_leader_fallback_timeout_window(value):
    (error,) = errors_of(with_raft(f"leader_fallback_timeout = {value}"))
    assert error.startswith("raft.leader_fallback_timeout: must be in (0, 3] seconds")
    assert "isolated leader" in error


def test_leader_fallback_timeout_upper_bound_inclusive():
    assert loads_config(with_raft("leader_fallback_timeout = 3")).raft.leader_fallback_timeout == 3.0


@pytest.mark.parametrize("line, key", [
    ("election_timeout_min = 0", "raft.election_timeout_min"),
    ("connection_timeout = -1.0", "raft.connection_timeout"),
    ("compaction_min_entries = 0", "raft.compaction_min_entries"),
    ("compaction_min_time = -1", "raft.compaction_min_time"),
])
def test_positive_numbers(line, key):
    (error,) = errors_of(with_raft(line))
    assert error.startswith(f"{key}: must be")


def test_choices():
    assert errors_of(with_raft('[logging]\nlevel = "TRACE"')) == [
        'logging.level: "TRACE" is not one of DEBUG, INFO, WARNING, ERROR']


@pytest.mark.parametrize("name", ["compute-01", "cmp_7", "node1.example.com", "a"])
def test_good_node_names(name):
    assert loads_config(MINIMAL.replace("compute-01", name)).node.name == name


@pytest.mark.parametrize("name", ["", "bad name", "-lead", "trail-", "a..b", "x" * 64, "é"])
def test_bad_node_names(name):
    (error,) = errors_of(MINIMAL.replace('"compute-01"', f'"{name}"'))
    assert error.startswith("node.name: ") and "is not a valid node name" in error


@pytest.mark.parametrize("value, host, port", [
    ("10.0.0.1:7170", "10.0.0.1", 7170),
    ("[::1]:7180", "::1", 7180),
    ("[fe80::1]:1", "fe80::1", 1),
    ("node-1.example.com:65535", "node-1.example.com", 65535),
    ("localhost:80", "localhost", 80),
])
def test_split_host_port_good(value, host, port):
    assert split_host_port(value) == (host, port)


@pytest.mark.parametrize("value, reason", [
    ("10.0.0.3", "no :port"),
    (":80", "empty host"),
    ("::1:80", "brackets"),
    ("[::1]80", "no :port after"),
    ("[::1:80", "no closing"),
    ("[nothex]:80", "not an IPv6 address"),
    ("300.1.1.1:80", "not an IPv4 address"),
    ("1.2.3:80", "not an IPv4 address"),
    ("host:0", "outside 1-65535"),
    ("host:65536", "outside 1-65535"),
    ("host:http", "is not a number"),
    ("host:+80", "is not a number"),
    ("bad_host:80", "not a valid host name label"),
])
def test_split_host_port_bad(value, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        split_host_port(value)


def test_status_bind_checked():
    assert errors_of(with_raft('[status]\nbind = "0.0.0.0"')) == [
        'status.bind: "0.0.0.0" is not host:port (no :port)']


def test_all_errors_are_collected():
    errors = errors_of(
        '[node]\nname = "bad name"\n[raft]\nvoters = ["a:1", "b:2"]\nfsync = "yes"\n'
        '[logging]\nlevel = "x"\n[admin]\nfoo = 1\n')
    keys = [e.split(":", 1)[0] for e in errors]
    assert keys == ["node.name", "raft.voters", "raft.fsync", "admin.foo", "logging.level"]


def test_relative_paths_resolve_against_the_config_directory(tmp_path):
    path = tmp_path / "n1" / "hagent.toml"
    path.parent.mkdir()
    path.write_text(MINIMAL.replace("[raft]", '[raft]\nsecret_file = "cluster.secret"')
                    + '[admin]\nsocket = "/run/x.sock"\n')
    config = load_config(path)
    assert config.raft.secret_file == tmp_path / "n1" / "cluster.secret"
    assert config.admin.socket == Path("/run/x.sock")


def test_dump_config_round_trips(tmp_path):
    config = loads_config(with_raft('bind = "10.0.0.1:7170"\nfsync = false\n[admin]\ngroup = "hagent"'))
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_check_config_main_ok(tmp_path, capsys):
    from hagent.forward.keys import write_key_pair

    secret = tmp_path / "cluster.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    write_key_pair(tmp_path / "node.key")
    path = tmp_path / "hagent.toml"
    path.write_text(MINIMAL.replace("[raft]", f'[raft]\nsecret_file = "{secret}"\nbind = "10.0.0.1:7170"')
                    .replace("[security]", '[security]\nkey_file = "node.key"'))
    assert check_config_main(str(path)) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_check_config_main_on_a_non_voter_checks_the_key_file_not_the_secret(tmp_path, capsys):
    from hagent.forward.keys import write_key_pair

    write_key_pair(tmp_path / "node.key").public
    path = tmp_path / "hagent.toml"
    path.write_text(MINIMAL.replace("[security]", '[security]\nkey_file = "node.key"'))
    assert check_config_main(str(path)) == 0  # no cluster.secret anywhere: not needed
    (tmp_path / "node.key").chmod(0o640)
    assert check_config_main(str(path)) == 1
    err = capsys.readouterr().err
    assert f"{path}: security.key_file: {tmp_path / 'node.key'}: key file has mode 0640" in err


def test_check_config_main_prints_each_error(tmp_path, capsys):
    path = tmp_path / "hagent.toml"
    path.write_text('[raft]\nvoters = ["a:1", "b:1", "c"]\nbogus = 1\n')
    assert check_config_main(str(path)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}: node.name: required key missing",
        f"{path}: raft.bogus: unknown key",
        f'{path}: raft.voters[2]: "c" is not host:port (no :port)',
    ]


def test_check_config_main_checks_the_secret_mode(tmp_path, capsys):
    secret = tmp_path / "cluster.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    path = tmp_path / "hagent.toml"
    path.write_text(VOTER.replace("[raft]", '[raft]\nsecret_file = "cluster.secret"'))
    assert check_config_main(str(path)) == 1
    err = capsys.readouterr().err
    assert f"{path}: raft.secret_file: {secret}" in err and f"chmod 600 {secret}" in err
    assert check_config_main(str(path), check_secret=False) == 0


def test_bad_entries_and_bad_count_reported_together():
    errors = errors_of('[node]\nname = "a"\n[raft]\nvoters = ["a:1", "b"]\n')
    assert errors[0] == 'raft.voters[1]: "b" is not host:port (no :port)'
    assert errors[1].startswith("raft.voters: 2 voters given")
    assert len(errors) == 2


def test_bind_compared_exactly_so_is_voter_agrees():
    (error,) = errors_of(with_raft('bind = "10.0.0.1:07170"'))
    assert error.startswith('raft.bind: "10.0.0.1:07170" is voters entry "10.0.0.1:7170" '
                            'written differently')


def test_voters_section_defaults_and_checks():
    config = loads_config(MINIMAL)
    assert config.voters.auto_replace is True and config.voters.target == 0
    assert config.voters.max_catchup_lag == 100 and config.voters.catchup_timeout == 60.0
    assert config.voters.failure_domain == ""
    text = MINIMAL + '[voters]\ntarget = 4\nfailure_domain = "rack a"\ncatchup_timeout = 0\n'
    errors = errors_of(text)
    assert errors[0].startswith("voters.target: must be 0, 3 or 5, got 4")
    assert errors[1].startswith('voters.catchup_timeout: must be greater than 0')
    assert errors[2].startswith('voters.failure_domain: "rack a" is not a failure domain label')
    config = loads_config(MINIMAL + '[voters]\ntarget = 5\nfailure_domain = "dc1:rack-a"\n')
    assert config.voters.target == 5 and config.voters.failure_domain == "dc1:rack-a"


def test_a_bootstrap_voters_forward_bind_is_its_endpoints_entry():
    voter = with_raft('bind = "10.0.0.2:7170"')
    config = loads_config(voter.replace('[forward]\n', '[forward]\nbind = "10.0.0.2:7171"\n'))
    assert config.forward_bind == "10.0.0.2:7171"
    (error,) = errors_of(voter.replace('[forward]\n', '[forward]\nbind = "10.0.0.2:7999"\n'))
    assert error.startswith('forward: bind "10.0.0.2:7999" differs from this voter\'s '
                            'endpoints entry "10.0.0.2:7171"')


def test_top_level_key_outside_any_table():
    assert 'name: unknown key' in errors_of('name = "x"\n' + MINIMAL)


# --- forwarding and keys ------------------------------------------------------------------
VOTER = f'[node]\nname = "v1"\n[raft]\nvoters = {VOTERS}\nbind = "10.0.0.1:7170"\n'


def test_a_non_voter_needs_forward_endpoints_and_voter_keys():
    (error,) = errors_of(f'[node]\nname = "a"\n[raft]\nvoters = {VOTERS}\n')
    assert error.startswith("forward: this node is a non-voter")
    assert "set forward.endpoints and security.voter_keys" in error
    config = loads_config(MINIMAL)
    assert not config.is_voter and config.forwarding and config.forward_bind == ""
    assert config.forward.timeout == 3.0


def test_a_voter_binds_its_own_forward_endpoint():
    config = loads_config(FORWARD + VOTER.replace('"10.0.0.1:7170"\n', '"10.0.0.2:7170"\n'))
    assert config.is_voter and config.forward_bind == "10.0.0.2:7171"
    assert loads_config(VOTER).forward_bind == ""  # a voter without forwarding serves none


def test_forward_lists_have_one_entry_per_voter():
    text = (VOTER + '[forward]\nendpoints = ["10.0.0.1:7171", "10.0.0.2:7171"]\n'
            '[security]\nvoter_keys = ["6Dh>1]T/*wB24WZW*]UGy){}I0ML[F{%IDv)4%1<"]\n')
    errors = errors_of(text)
    assert errors == [
        "forward: endpoints has 2 entries but raft.voters has 3: give one forward endpoint "
        "per voter, in the same order",
        "security: voter_keys has 1 entries but raft.voters has 3: give one public key per "
        "voter, in the same order"]


@pytest.mark.parametrize("key, reason", [
    ("short", "5 characters, not 40"),
    ("6Dh>1]T/*wB24WZW*]UGy){}I0ML[F{%IDv)4%1,", '"," is not in the Z85 alphabet'),
])
def test_keys_are_z85(key, reason):
    (error,) = errors_of(VOTER + f'[security]\nallowed_keys = ["{key}"]\n')
    assert error.startswith("security.allowed_keys[0]: ") and reason in error


def test_duplicate_allowed_keys_and_endpoints():
    key = "6Dh>1]T/*wB24WZW*]UGy){}I0ML[F{%IDv)4%1<"
    errors = errors_of(VOTER + f'[security]\nallowed_keys = ["{key}", "{key}"]\n'
                       '[forward]\nendpoints = ["h:1", "h:1", "h:2"]\n')
    assert sorted(e.split(":")[0] for e in errors) == ["forward.endpoints", "security.allowed_keys"]
