"""The real Nova lab's parts that need no daemon: its configuration files, the stand-ins'
answers, the installer's stamp, removing a lab's data, the power link's edges."""
from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from hagent.lab.realnova import configs, daemons, failure, install, powerlink, standins
from hagent.lab.realnova.layout import API_PORTS, LOCAL_PORTS, Layout
from hagent.lab.realnova.supervisor import remove_data


def layout(tmp_path: Path, bind: str = "127.0.0.1") -> Layout:
    ports = {name: 20000 + i for i, name in enumerate(API_PORTS + LOCAL_PORTS)}
    return Layout(dir=tmp_path, hosts=("cmp1", "cmp2"), bind=bind, ports=ports,
                  admin_password="secret-a", demo_password="secret-d")


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_nova_conf_has_the_lab_settings_and_each_compute_its_own_host_and_state_path(tmp_path):
    lab = layout(tmp_path, bind="198.19.0.1")
    nova = ini(configs.nova_conf(lab))
    assert nova["DEFAULT"]["compute_driver"] == "fake.FakeDriverWithoutFakeNodes"
    assert (nova["DEFAULT"]["service_down_time"], nova["DEFAULT"]["report_interval"]) == \
        ("10", "2")
    assert nova["quota"]["driver"] == "nova.quota.NoopQuotaDriver"
    assert nova["scheduler"]["discover_hosts_in_cells_interval"] == "-1"
    assert nova["conductor"]["workers"] == nova["scheduler"]["workers"] == "1"
    assert nova["placement"]["endpoint_override"] == "http://198.19.0.1:20001"
    # the broker and the database stay on loopback whatever the APIs bind
    assert "@127.0.0.1:" in nova["DEFAULT"]["transport_url"]
    assert nova["database"]["connection"].startswith("mysql+pymysql://root@127.0.0.1:")
    computes = [ini(configs.compute_conf(lab, h))["DEFAULT"] for h in lab.hosts]
    assert [c["host"] for c in computes] == ["cmp1", "cmp2"]
    assert len({c["state_path"] for c in computes}) == 2


def test_gunicorn_config_hides_gunicorns_arguments_from_oslo_config(monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["gunicorn", "-b", "127.0.0.1:1", "app:application"])
    exec(configs.gunicorn_conf(), {})
    assert sys.argv == ["gunicorn"]


def test_image_stand_in_serves_the_lab_image_and_its_schema_only():
    status, image = standins._image(f"/v2/images/{standins.IMAGE_ID}", "http://x")
    assert status == 200 and image["status"] == "active"
    schema = standins._image("/v2/schemas/image", "http://x")[1]
    for key, value in image.items():  # glanceclient checks the image against the schema
        expected = schema["properties"][key]["type"]
        kinds = expected if isinstance(expected, list) else [expected]
        python = {"string": str, "integer": int, "boolean": bool, "array": list,
                  "null": type(None)}
        assert any(isinstance(value, python[k]) for k in kinds), (key, value, expected)
    assert standins._image("/v2/images/other", "http://x")[0] == 404


def test_network_stand_in_answers_empty_lists_and_no_extensions():
    assert standins._network("/v2.0/ports", "http://x") == (200, {"ports": []})
    assert standins._network("/v2.0/extensions", "http://x") == (200, {"extensions": []})
    assert standins._network("/v2.0/ports/abc", "http://x")[0] == 404


def test_installed_only_when_the_stamp_matches_the_pins(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    venv.mkdir()
    monkeypatch.setattr(install, "DEBIAN", {"x": str(tmp_path)})  # "installed"
    assert install.installed(tmp_path) is None
    (venv / "stamp").write_text(install.stamp_text())
    assert install.installed(tmp_path).venv == venv
    assert install._ensure_venv(tmp_path) == 0.0  # nothing to do, nothing run
    (venv / "stamp").write_text(install.stamp_text().replace("nova==34.0.0", "nova==33.0.0"))
    assert install.installed(tmp_path) is None


def test_remove_data_keeps_only_what_is_asked(tmp_path):
    data = tmp_path / "realnova"
    for rel in ("logs/supervisor.log", "logs/nova.log", "mysql/ibdata1", "etc/nova/nova.conf"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text("x")
    remove_data(data, keep={"logs"})  # a kept directory keeps what is in it
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == \
        ["logs", "logs/nova.log", "logs/supervisor.log"]
    remove_data(data, keep={"logs/supervisor.log"})
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == \
        ["logs", "logs/supervisor.log"]
    remove_data(data)
    assert not data.exists()


def test_power_link_acts_on_changes_only(tmp_path, monkeypatch):
    record = tmp_path / "power.json"
    record.write_text('{"cmp1": {"socket": "/s1"}, "other": {"socket": "/s2"}}')
    power = {"/s1": True}
    monkeypatch.setattr(powerlink, "call", lambda path, req, timeout=2.0: {"on": power[str(path)]})
    changes = []
    link = powerlink.PowerLink(["cmp1", "cmp2"], tmp_path, lambda h, on: changes.append((h, on)))
    assert link.sockets() == {"cmp1": Path("/s1")}
    link.poll_once()
    assert changes == []          # on, as assumed: nothing to do
    power["/s1"] = False
    link.poll_once()
    link.poll_once()
    power["/s1"] = True
    link.poll_once()
    assert changes == [("cmp1", False), ("cmp1", True)]
    with pytest.raises(KeyError):
        link.power("cmp2", "off")


class _Proc:
    """What ``failure.report`` reads of a daemon's Popen."""

    def __init__(self, pid: int, returncode: int | None) -> None:
        self.pid, self.returncode = pid, returncode

    def poll(self) -> int | None:
        return self.returncode


def test_failure_report_names_the_step_the_daemon_its_traceback_and_the_dead(tmp_path):
    keystone_log = tmp_path / "keystone.log"
    keystone_log.write_text("\n".join(f"noise {i}" for i in range(100)) +
                            "\nTraceback (most recent call last):\n  File x\nKeyError: 'a'\n")
    rabbit_log = tmp_path / "rabbitmq.log"
    rabbit_log.write_text("".join(f"line {i}\n" for i in range(40)))
    with pytest.raises(failure.StepFailed) as raised:
        with failure.step("outer", "nova_api", tmp_path / "nova_api.log"):
            with failure.step("start keystone", "keystone", keystone_log):
                raise daemons.DaemonError("keystone: not within 90 s")
    text = failure.report(raised.value, {"keystone": _Proc(7, None), "rabbitmq": _Proc(8, 1)},
                          {"keystone": keystone_log, "rabbitmq": rabbit_log})
    lines = text.splitlines()
    assert lines[:3] == ["failed step: start keystone",  # the innermost step
                         "error: DaemonError: keystone: not within 90 s",
                         f"daemon: keystone (pid 7, running); log {keystone_log}, last lines:"]
    assert lines[3:6] == ["  | Traceback (most recent call last):", "  |   File x",
                          "  | KeyError: 'a'"]  # from the traceback, not the last 12 lines
    assert lines[6] == f"died during start-up: rabbitmq (exit 1); log {rabbit_log}, last lines:"
    assert lines[7:] == [f"  | line {i}" for i in range(40 - failure.TAIL_LINES, 40)]


def test_keep_logs_moves_them_out_of_the_data_and_rewrites_the_report(tmp_path):
    logs = tmp_path / "realnova" / "logs"
    logs.mkdir(parents=True)
    (logs / "nova_api.log").write_text("x")
    (logs / failure.FAILURE_FILE).write_text(f"log {logs / 'nova_api.log'}\n")
    kept = failure.keep_logs(tmp_path, 4242)
    assert kept is not None and kept.parent == tmp_path
    assert kept.name.startswith("realnova-failed-") and kept.name.endswith("-4242")
    assert not logs.exists() and (kept / "nova_api.log").read_text() == "x"
    assert (kept / failure.FAILURE_FILE).read_text() == f"log {kept / 'nova_api.log'}\n"
    assert failure.keep_logs(tmp_path, 4242) == kept  # the handle after its supervisor
    assert failure.keep_logs(tmp_path, 99) is None    # nothing left to keep
