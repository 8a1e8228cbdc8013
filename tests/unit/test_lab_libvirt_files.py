"""The lab's libvirt files: each agent's config names its own host's test-driver libvirtd,
``config_extra`` adds to it, and the socket directory always fits an AF_UNIX address.
No processes, no sockets."""
from __future__ import annotations

import os
from pathlib import Path

from hagent.config import loads_config
from hagent.lab import configs, libvirtd


def plans(lab_dir: Path) -> list[configs.NodePlan]:
    return configs.plan_nodes(lab_dir, 4, 3, [21000, 21001, 21002, 21003],
                              [22000, 22001, 22002, 22003],
                              forward_ports=[23000, 23001, 23002, 23003],
                              gossip_ports=[24000, 24001, 24002, 24003])


def test_each_agent_watches_its_own_hosts_libvirtd(tmp_path: Path) -> None:
    ps = plans(tmp_path)
    configs.write_node_files(ps, tmp_path / configs.SECRET_FILE,
                             {"monitors": {"instance_queue_size": 50}}, libvirt=True)
    loaded = [loads_config(p.config.read_text(), base_dir=p.dir) for p in ps]
    uris = [c.monitors.libvirt_uri for c in loaded]
    assert all(c.monitors.instance_enabled and c.monitors.instance_queue_size == 50
               for c in loaded)
    assert uris == [p.libvirt_uri for p in ps] and len(set(uris)) == 4
    assert uris[1] == libvirtd.uri_for(configs.libvirt_socket_dir(tmp_path.resolve(), "node2"))


def test_without_libvirt_no_monitor_is_configured(tmp_path: Path) -> None:
    ps = plans(tmp_path)
    configs.write_node_files(ps, tmp_path / configs.SECRET_FILE)
    config = loads_config(ps[0].config.read_text(), base_dir=ps[0].dir)
    assert not config.monitors.instance_enabled
    assert "[monitors]" not in ps[0].config.read_text()


def test_socket_directory_falls_back_to_a_short_stable_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    short = configs.libvirt_socket_dir(deep, "node1")
    assert short == configs.libvirt_socket_dir(deep, "node1")  # derived from DIR: stable
    assert short != deep / "node1" / "libvirt" and short.name == "node1-libvirt"
    assert short.parent == configs.admin_socket_path(deep, "node1").parent  # purged with it
    assert len(os.fsencode(str(short / "libvirt-admin-sock"))) <= configs.MAX_SOCKET_PATH
    lab = Path("/srv/lab")  # short enough: the sockets stay in the lab directory
    assert configs.libvirt_socket_dir(lab, "node1") == lab / "node1" / "libvirt"
    assert libvirtd.uri_for(lab / "node1" / "libvirt") == \
        "test+unix:///default?socket=/srv/lab/node1/libvirt/libvirt-sock"
