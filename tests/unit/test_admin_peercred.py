"""Who may use the admin socket: the pure decision and the /proc reading behind it."""
import pytest

from hagent.admin.peercred import is_allowed, parse_groups, supplementary_groups

AGENT_UID = 995
SOCKET_GID = 990


@pytest.mark.parametrize("uid, gids, allowed", [
    (0, {0}, True),                       # root
    (AGENT_UID, {AGENT_UID}, True),       # the agent's own user
    (1000, {SOCKET_GID}, True),           # primary group is the socket's group
    (1000, {1000, 27, SOCKET_GID}, True), # supplementary group is the socket's group
    (1000, {1000, 27}, False),            # a stranger
    (65534, {65534}, False),              # nobody
])
def test_is_allowed(uid, gids, allowed):
    assert is_allowed(uid, gids, AGENT_UID, SOCKET_GID) is allowed


def test_wrong_uid_is_refused_even_with_agents_gid_number_as_uid():
    # uid and gid spaces are separate: uid == socket gid grants nothing
    assert not is_allowed(SOCKET_GID, {1000}, AGENT_UID, SOCKET_GID)


def test_parse_groups():
    text = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 990 \nNgid:\t0\n"
    assert parse_groups(text) == {4, 27, 990}
    assert parse_groups("Name:\tx\nGroups:\t\n") == set()
    assert parse_groups("Name:\tx\n") == set()


def test_supplementary_groups_reads_proc(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text("Name:\tx\nGroups:\t5 990\n")
    assert supplementary_groups(42, proc=tmp_path) == {5, 990}


def test_gone_process_has_no_supplementary_groups(tmp_path):
    assert supplementary_groups(43, proc=tmp_path) == set()
