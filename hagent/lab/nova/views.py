"""JSON bodies of the compute API, shaped by microversion as Nova's view builders shape them
(``nova/api/openstack/compute/views/*.py``): the fields openstacksdk and the recovery engine
read, with the versions that add or drop them. Call under ``model.lock``."""
from __future__ import annotations

import hashlib
from typing import Any

from hagent.lab.nova.model import Action, Aggregate, Context, Flavor, Host, NovaModel, Server
from hagent.lab.nova.versions import Version

_PROGRESS_STATUSES = {"ACTIVE", "BUILD", "REBUILD", "RESIZE", "VERIFY_RESIZE", "MIGRATING"}


def link(base: str, collection: str, ident: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": f"{base}/v2.1/{collection}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{collection}/{ident}"}]


def server_brief(server: Server, base: str) -> dict[str, Any]:
    return {"id": server.id, "name": server.name, "links": link(base, "servers", server.id)}


def server(model: NovaModel, srv: Server, ctx: Context, mv: Version, base: str,
           now: float) -> dict[str, Any]:
    """One server as GET /servers/{id} and /servers/detail show it."""
    host_id = hashlib.sha224((srv.project_id + (srv.host or "")).encode()).hexdigest() \
        if srv.host else ""
    body: dict[str, Any] = {
        "id": srv.id, "name": srv.name, "status": srv.status,
        "tenant_id": srv.project_id, "user_id": srv.user_id,
        "metadata": dict(srv.metadata), "hostId": host_id,
        "image": {"id": srv.image_id, "links": link(base, "images", srv.image_id)},
        "created": model.iso(srv.created), "updated": model.iso(srv.updated),
        "addresses": {}, "accessIPv4": "", "accessIPv6": "",
        "links": link(base, "servers", srv.id), "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": (model.host_az(srv.host) if srv.host
                                        else srv.availability_zone or ""),
        "config_drive": "", "key_name": srv.key_name,
        "OS-SRV-USG:launched_at": model.iso(srv.launched_at, micro=True),
        "OS-SRV-USG:terminated_at": None,
        "OS-EXT-STS:task_state": srv.task_state, "OS-EXT-STS:vm_state": srv.vm_state,
        "OS-EXT-STS:power_state": srv.power_state,
        "os-extended-volumes:volumes_attached": [],
        "security_groups": [{"name": "default"}],
    }
    if mv >= (2, 47):
        f = srv.flavor
        body["flavor"] = {"vcpus": f.vcpus, "ram": f.ram, "disk": f.disk,
                          "ephemeral": f.ephemeral, "swap": f.swap,
                          "original_name": f.name, "extra_specs": dict(f.extra_specs)}
    else:
        body["flavor"] = {"id": srv.flavor.id, "links": link(base, "flavors", srv.flavor.id)}
    if srv.status in _PROGRESS_STATUSES:
        body["progress"] = 0
    if srv.status == "ERROR" and srv.fault:
        body["fault"] = dict(srv.fault)
    if ctx.is_admin:
        body["OS-EXT-SRV-ATTR:host"] = srv.host
        body["OS-EXT-SRV-ATTR:hypervisor_hostname"] = srv.host
        body["OS-EXT-SRV-ATTR:instance_name"] = f"instance-{int(srv.id[:8], 16) % 10**8:08x}"
        if mv >= (2, 3):
            body.update({"OS-EXT-SRV-ATTR:reservation_id": f"r-{srv.id[:8]}",
                         "OS-EXT-SRV-ATTR:launch_index": 0,
                         "OS-EXT-SRV-ATTR:kernel_id": "", "OS-EXT-SRV-ATTR:ramdisk_id": "",
                         "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                         "OS-EXT-SRV-ATTR:user_data": None})
        if mv >= (2, 16):
            body["host_status"] = model.host_status(srv.host, now)
    if mv >= (2, 3):
        body["OS-EXT-SRV-ATTR:hostname"] = srv.name
    if mv >= (2, 9):
        body["locked"] = False
    if mv >= (2, 19):
        body["description"] = srv.description
    if mv >= (2, 26):
        body["tags"] = []
    if mv >= (2, 63):
        body["trusted_image_certificates"] = None
    if mv >= (2, 71):
        body["server_groups"] = []
    if mv >= (2, 73):
        body["locked_reason"] = None
    if mv >= (2, 96):
        body["pinned_availability_zone"] = srv.availability_zone
    if mv >= (2, 100):
        body["scheduler_hints"] = {}
    return body


def service(model: NovaModel, svc: dict[str, Any], mv: Version, now: float) -> dict[str, Any]:
    """One os-services entry (``svc`` from ``model.services()``)."""
    ident = svc["uuid"] if mv >= (2, 53) else svc["id"]
    if svc["kind"] == "compute":
        host = model.hosts[svc["host"]]
        status = "disabled" if host.disabled else "enabled"
        state = "up" if model.service_is_up(host, now) else "down"
        updated = model.iso(model.heartbeat(host, now), micro=True)
        reason, forced = host.disabled_reason, host.forced_down
    else:
        status, state, updated, reason, forced = "enabled", "up", model.iso(now, micro=True), \
            None, False
    body = {"binary": svc["binary"], "host": svc["host"], "id": ident, "zone": svc["zone"],
            "status": status, "state": state, "updated_at": updated,
            "disabled_reason": reason}
    if mv >= (2, 11):
        body["forced_down"] = forced
    return body


def hypervisor(model: NovaModel, host: Host, mv: Version, now: float, *, detail: bool,
               with_servers: bool = False) -> dict[str, Any]:
    """One os-hypervisors entry; capacity fields until 2.88 (Nova dropped them there)."""
    ident: Any = host.hypervisor_uuid if mv >= (2, 53) else host.hypervisor_id
    body: dict[str, Any] = {
        "id": ident, "hypervisor_hostname": host.name,
        "state": "up" if model.service_is_up(host, now) else "down",
        "status": "disabled" if host.disabled else "enabled"}
    if detail:
        body.update({"host_ip": "127.0.0.1", "hypervisor_type": "fake",
                     "hypervisor_version": 1000,
                     "service": {"host": host.name,
                                 "id": host.service_uuid if mv >= (2, 53) else host.service_id,
                                 "disabled_reason": host.disabled_reason}})
        if mv < (2, 88):
            used, spec = model.usage(host.name), host.spec
            body.update({
                "vcpus": spec.vcpus, "memory_mb": spec.memory_mb, "local_gb": spec.disk_gb,
                "vcpus_used": used["vcpus"], "memory_mb_used": used["memory_mb"],
                "local_gb_used": used["disk_gb"],
                "free_ram_mb": spec.memory_mb - used["memory_mb"],
                "free_disk_gb": spec.disk_gb - used["disk_gb"], "current_workload": 0,
                "running_vms": used["instances"], "disk_available_least": spec.disk_gb,
                "cpu_info": {"arch": "x86_64"} if mv >= (2, 28) else '{"arch": "x86_64"}'})
        else:
            body["uptime"] = None
    if with_servers:
        body["servers"] = [{"uuid": s.id, "name": s.name}
                           for s in model.servers.values() if s.host == host.name]
    return body


def flavor(f: Flavor, mv: Version, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f.id, "name": f.name, "ram": f.ram, "disk": f.disk, "vcpus": f.vcpus,
        "OS-FLV-EXT-DATA:ephemeral": f.ephemeral,
        "swap": f.swap if (f.swap or mv >= (2, 75)) else "",
        "rxtx_factor": 1.0, "os-flavor-access:is_public": f.is_public,
        "OS-FLV-DISABLED:disabled": False, "links": link(base, "flavors", f.id)}
    if mv >= (2, 55):
        body["description"] = f.description
    if mv >= (2, 61):
        body["extra_specs"] = dict(f.extra_specs)
    return body


def aggregate(model: NovaModel, agg: Aggregate, mv: Version) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": agg.id, "name": agg.name, "availability_zone": agg.availability_zone,
        "hosts": list(agg.hosts), "metadata": dict(agg.metadata),
        "created_at": model.iso(agg.created, micro=True),
        "updated_at": model.iso(agg.updated, micro=True), "deleted": False,
        "deleted_at": None}
    if mv >= (2, 41):
        body["uuid"] = agg.uuid
    return body


def action(model: NovaModel, act: Action, ctx: Context, mv: Version, *,
           events: bool) -> dict[str, Any]:
    """One os-instance-actions entry; with ``events`` as GET .../{request_id} shows it."""
    body: dict[str, Any] = {
        "action": act.action, "instance_uuid": act.instance, "message": act.message,
        "project_id": act.project_id, "request_id": act.request_id,
        "start_time": model.iso(act.start, micro=True), "user_id": act.user_id}
    if mv >= (2, 58):
        body["updated_at"] = model.iso(act.updated, micro=True)
    if events and (ctx.is_admin or mv >= (2, 51)):
        out = []
        # newest first: created_at, then id, descending (InstanceActionEvent.get_by_action)
        order = sorted(range(len(act.events)), key=lambda i: (act.events[i].start, i),
                       reverse=True)
        for ev in (act.events[i] for i in order):
            item: dict[str, Any] = {"event": ev.event,
                                    "start_time": model.iso(ev.start, micro=True),
                                    "finish_time": model.iso(ev.finish, micro=True),
                                    "result": ev.result}
            if ctx.is_admin:
                item["traceback"] = None
            if mv >= (2, 62):
                item["hostId"] = hashlib.sha224((act.project_id + (ev.host or "")).encode()
                                                ).hexdigest() if ev.host else ""
                if ctx.is_admin:
                    item["host"] = ev.host or ""
            if mv >= (2, 84):
                item["details"] = ev.details
            out.append(item)
        body["events"] = out
    return body


def migration(model: NovaModel, mig: Any, mv: Version) -> dict[str, Any]:
    server = model.servers.get(mig.instance)
    body: dict[str, Any] = {
        "id": mig.id, "uuid": mig.uuid, "instance_uuid": mig.instance,
        "source_compute": mig.source, "source_node": mig.source,
        "dest_compute": mig.dest, "dest_node": mig.dest, "dest_host": "127.0.0.1",
        "status": mig.status, "migration_type": mig.migration_type,
        "created_at": model.iso(mig.created, micro=True), "updated_at": None,
        "old_instance_type_id": None, "new_instance_type_id": None}
    if mv >= (2, 80) and server is not None:
        body["project_id"], body["user_id"] = server.project_id, server.user_id
    return body
