"""The Nova simulator's HTTP API without the socket: a request in, a reply out.

Keystone v3 lives under ``/identity`` and the compute API under ``/compute`` (as devstack lays
them out), so keystoneauth's version discovery of each finds its own documents. Every compute
request needs a valid ``X-Auth-Token`` (401 otherwise), negotiates its microversion
(``versions.py``) and gets ``x-openstack-request-id`` / ``x-compute-request-id`` headers; the
request id is the one instance actions record. Errors use Nova's body shape
(``{"badRequest": {"code": 400, "message": ...}}``), which openstacksdk turns into its
exceptions with Nova's message.

``/_sim/...`` is the lab's control API (state, boot, faults, power of hosts without a lab
switch, nova-compute stop/start, the invariant report), guarded by the ``X-Sim-Secret`` header.
"""
from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from hagent.lab.nova import identity as ks
from hagent.lab.nova import versions, views
from hagent.lab.nova.faults import FaultError, Faults, Rule
from hagent.lab.nova.model import Context, NovaError, NovaModel, admin_password, new_request_id
from hagent.lab.nova.versions import Version, VersionError

log = logging.getLogger(__name__)

#: Nova's fault key per status (nova/api/openstack/wsgi.py Fault._fault_names).
FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
               405: "badMethod", 409: "conflictingRequest", 413: "overLimit",
               415: "badMediaType", 429: "overLimit", 501: "notImplemented",
               503: "serviceUnavailable"}
MAX_LIMIT = 1000  # [api] max_limit


@dataclass
class Reply:
    status: int
    body: Any = None                  # JSON-able, or None for an empty body
    headers: dict[str, str] = field(default_factory=dict)
    wait: float = 0.0                 # seconds to hold the reply (nova-api blocked in RPC)
    drop: bool = False                # send nothing; close after ``wait``


@dataclass
class Request:
    method: str
    path: str                          # below /compute/v2.1 (or the full path elsewhere)
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    request_id: str
    now: float
    ctx: Context | None = None
    mv: Version = versions.MIN_VERSION
    match: re.Match[str] | None = None

    def json(self, key: str) -> Any:
        if not isinstance(self.body, dict) or key not in self.body:
            raise NovaError(400, f"Invalid input for field/attribute {key}. Value: None. "
                                 f"'{key}' is a required property")
        return self.body[key]


def compute_error(status: int, message: str) -> Reply:
    return Reply(status, {FAULT_NAMES.get(status, "computeFault"):
                          {"code": status, "message": message}})


class NovaApp:
    """Routes requests to the model. ``base_url`` (``http://host:port``) must be set before
    the first request: the catalog and links name it."""

    def __init__(self, model: NovaModel, identity: ks.Identity, faults: Faults, *,
                 secret: str, region: str = "RegionOne",
                 max_version: Version = versions.MAX_VERSION,
                 control: Callable[[Request], Reply] | None = None) -> None:
        self.model = model
        self.identity = identity
        self.faults = faults
        self.secret = secret
        self.region = region
        self.max_version = max_version
        self.base_url = ""
        self.control = control
        self._routes: list[tuple[str, re.Pattern[str], Callable[[Request], Reply]]] = []
        for method, pattern, handler in self._table():
            self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    @property
    def compute_url(self) -> str:
        return f"{self.base_url}/compute"

    @property
    def identity_url(self) -> str:
        return f"{self.base_url}/identity"

    # --- the entry point ------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], data: bytes) -> Reply:
        """One HTTP request -> its reply (may sleep for an injected delay)."""
        now = time.monotonic()
        self.model.advance(now)
        parsed = urllib.parse.urlsplit(raw_path)
        path = parsed.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query,
                                                            keep_blank_values=True).items()}
        try:
            body = json.loads(data) if data else None
        except ValueError:
            return compute_error(400, "Malformed request body")
        request = Request(method, path, query, headers, body, new_request_id(), now)
        if path.startswith("/_sim"):
            return self._control(request)
        rule = self.faults.take(method, path)
        if rule is not None:
            log.info("fault %s on %s %s", rule.kind, method, path)
            early = self._fault_before(rule)
            if early is not None:
                return early
            request.now = time.monotonic()
            self.model.advance(request.now)
        reply = self._dispatch(request)
        if rule is not None and rule.kind == "timeout":
            return Reply(0, drop=True, wait=rule.delay)
        return reply

    @staticmethod
    def _fault_before(rule: Rule) -> Reply | None:
        if rule.kind == "error":
            if rule.status == 500:
                return compute_error(500, "Unexpected API Error. Please report this at "
                                          "http://bugs.launchpad.net/nova/ and attach the Nova "
                                          "API log if possible.")
            return compute_error(rule.status, f"injected fault {rule.status}")
        if rule.kind == "conflict":
            return compute_error(409, "Conflict updating instance (injected race)")
        if rule.kind == "timeout" and not rule.apply:
            return Reply(0, drop=True, wait=rule.delay)
        if rule.kind == "delay":
            time.sleep(rule.delay)
        return None

    def _dispatch(self, request: Request) -> Reply:
        path = request.path
        if path == "/identity" or path.startswith("/identity/"):
            return self._identity(request)
        if path in ("/", "/compute"):
            return Reply(300 if path == "/compute" else 200,
                         versions.compute_versions(self.compute_url, self.max_version))
        if path == "/compute/v2.1":
            return Reply(200, {"version": versions.compute_version(self.compute_url,
                                                                   self.max_version)})
        if not path.startswith("/compute/v2.1/"):
            return compute_error(404, "The resource could not be found.")
        request.path = path[len("/compute/v2.1"):]
        ctx = self.identity.validate(request.headers.get("x-auth-token"))
        if ctx is None:
            return Reply(401, {"error": {"code": 401, "title": "Unauthorized",
                                         "message": "The request you have made requires "
                                                    "authentication."}},
                         {"WWW-Authenticate": f'Keystone uri="{self.identity_url}"'})
        request.ctx = ctx
        try:
            request.mv = versions.requested(request.headers, self.max_version)
        except VersionError as exc:
            return compute_error(exc.status, exc.message)
        reply = self._route(request)
        reply.headers.update(versions.reply_headers(request.mv))
        reply.headers["x-openstack-request-id"] = request.request_id
        reply.headers["x-compute-request-id"] = request.request_id
        return reply

    def _route(self, request: Request) -> Reply:
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            allowed = True
            if method != request.method:
                continue
            request.match = match
            try:
                with self.model.lock:
                    # now, under the lock: no step the ticker ran can be later than it
                    request.now = time.monotonic()
                    self.model.advance(request.now)
                    return handler(request)
            except NovaError as exc:
                return compute_error(exc.status, exc.message)
        if allowed:
            return compute_error(405, "The method specified is not allowed for this resource.")
        return compute_error(404, "The resource could not be found.")

    # --- Keystone -------------------------------------------------------------------------

    def catalog(self) -> list[dict[str, Any]]:
        def endpoints(url: str) -> list[dict[str, Any]]:
            return [{"id": f"{interface}-{abs(hash(url)) % 10**8}", "interface": interface,
                     "region": self.region, "region_id": self.region, "url": url}
                    for interface in ("public", "internal", "admin")]
        return [{"id": "compute", "type": "compute", "name": "nova",
                 "endpoints": endpoints(f"{self.compute_url}/v2.1")},
                {"id": "identity", "type": "identity", "name": "keystone",
                 "endpoints": endpoints(f"{self.identity_url}/v3")}]

    def _identity(self, request: Request) -> Reply:
        path = request.path
        if path == "/identity" and request.method == "GET":
            return Reply(300, ks.versions(self.identity_url))
        if path == "/identity/v3" and request.method == "GET":
            return Reply(200, ks.version(self.identity_url))
        if path == "/identity/v3/auth/tokens" and request.method == "POST":
            try:
                token, body = self.identity.authenticate(request.body, self.catalog())
            except ks.AuthError as exc:
                return Reply(exc.status, {"error": {"code": exc.status, "message": exc.message,
                                                    "title": "Unauthorized"}})
            return Reply(201, body, {"X-Subject-Token": token})
        return Reply(404, {"error": {"code": 404, "title": "Not Found",
                                     "message": "The resource could not be found."}})

    # --- the control API ------------------------------------------------------------------

    def _control(self, request: Request) -> Reply:
        if request.headers.get("x-sim-secret") != self.secret or self.control is None:
            return Reply(403, {"error": "X-Sim-Secret missing or wrong"})
        try:
            return self.control(request)
        except (NovaError, FaultError, KeyError, TypeError, ValueError) as exc:
            status = exc.status if isinstance(exc, NovaError) else 400
            return Reply(status, {"error": str(exc)})

    # --- the compute routes ---------------------------------------------------------------

    def _table(self) -> list[tuple[str, str, Callable[[Request], Reply]]]:
        sid = r"(?P<id>[^/]+)"
        return [
            ("GET", "/servers", self.list_servers),
            ("GET", "/servers/detail", self.list_servers),
            ("POST", "/servers", self.create_server),
            ("GET", f"/servers/{sid}", self.show_server),
            ("DELETE", f"/servers/{sid}", self.delete_server),
            ("POST", f"/servers/{sid}/action", self.server_action),
            ("GET", f"/servers/{sid}/metadata", self.get_metadata),
            ("POST", f"/servers/{sid}/metadata", self.update_metadata),
            ("PUT", f"/servers/{sid}/metadata", self.replace_metadata),
            ("GET", f"/servers/{sid}/metadata/(?P<key>[^/]+)", self.get_metadata_item),
            ("PUT", f"/servers/{sid}/metadata/(?P<key>[^/]+)", self.set_metadata_item),
            ("DELETE", f"/servers/{sid}/metadata/(?P<key>[^/]+)", self.delete_metadata_item),
            ("GET", f"/servers/{sid}/os-instance-actions", self.list_actions),
            ("GET", f"/servers/{sid}/os-instance-actions/(?P<rid>[^/]+)", self.show_action),
            ("GET", "/os-services", self.list_services),
            ("PUT", "/os-services/(?P<id>[^/]+)", self.update_service),
            ("GET", "/os-hypervisors", self.list_hypervisors),
            ("GET", "/os-hypervisors/detail", self.list_hypervisors),
            ("GET", "/os-hypervisors/(?P<id>[^/]+)", self.show_hypervisor),
            ("GET", "/flavors", self.list_flavors),
            ("GET", "/flavors/detail", self.list_flavors),
            ("GET", "/flavors/(?P<id>[^/]+)", self.show_flavor),
            ("GET", "/os-aggregates", self.list_aggregates),
            ("POST", "/os-aggregates", self.create_aggregate),
            ("GET", "/os-aggregates/(?P<id>[^/]+)", self.show_aggregate),
            ("DELETE", "/os-aggregates/(?P<id>[^/]+)", self.delete_aggregate),
            ("POST", "/os-aggregates/(?P<id>[^/]+)/action", self.aggregate_action),
            ("GET", "/os-migrations", self.list_migrations),
        ]

    # servers

    def list_servers(self, r: Request) -> Reply:
        assert r.ctx is not None
        servers = self.model.list_servers(r.ctx, r.query)
        marker = r.query.get("marker")
        if marker:
            ids = [s.id for s in servers]
            if marker not in ids:
                raise NovaError(400, f"marker [{marker}] not found")
            servers = servers[ids.index(marker) + 1:]
        limit = min(int(r.query.get("limit", MAX_LIMIT)), MAX_LIMIT)
        page = servers[:limit]
        detail = r.path.endswith("/detail")
        items = [views.server(self.model, s, r.ctx, r.mv, self.compute_url, r.now) if detail
                 else views.server_brief(s, self.compute_url) for s in page]
        body: dict[str, Any] = {"servers": items}
        if len(servers) > limit and page:
            params = {k: v for k, v in r.query.items() if k != "marker"}
            params.update(limit=str(limit), marker=page[-1].id)
            body["servers_links"] = [{"rel": "next", "href":
                                      f"{self.compute_url}/v2.1{r.path}?"
                                      f"{urllib.parse.urlencode(params)}"}]
        return Reply(200, body)

    def show_server(self, r: Request) -> Reply:
        assert r.ctx is not None
        server = self.model.server(r.ctx, r.match["id"])
        return Reply(200, {"server": views.server(self.model, server, r.ctx, r.mv,
                                                  self.compute_url, r.now)})

    def create_server(self, r: Request) -> Reply:
        assert r.ctx is not None
        spec = r.json("server")
        if not isinstance(spec, dict):
            raise NovaError(400, "Invalid input for field/attribute server.")
        for key in ("name", "flavorRef"):
            if key not in spec:
                raise NovaError(400, f"Invalid input for field/attribute server. Value: "
                                     f"{spec}. '{key}' is a required property")
        if r.mv >= (2, 37) and "networks" not in spec:
            raise NovaError(400, f"Invalid input for field/attribute server. Value: {spec}. "
                                 f"'networks' is a required property")
        server = self.model.boot(
            r.ctx, r.now, name=str(spec["name"]), flavor_ref=str(spec["flavorRef"]),
            image_ref=str(spec.get("imageRef", "")), request_id=r.request_id,
            availability_zone=spec.get("availability_zone"),
            metadata=spec.get("metadata"), key_name=spec.get("key_name"),
            description=spec.get("description"))
        links = views.server_brief(server, self.compute_url)["links"]
        return Reply(202, {"server": {"id": server.id, "links": links,
                                      "OS-DCF:diskConfig": "MANUAL",
                                      "security_groups": [{"name": "default"}],
                                      "adminPass": admin_password()}},
                     {"Location": links[0]["href"]})

    def delete_server(self, r: Request) -> Reply:
        assert r.ctx is not None
        self.model.delete(r.ctx, r.match["id"], r.now, r.request_id)
        return Reply(204)

    def server_action(self, r: Request) -> Reply:
        assert r.ctx is not None
        if not isinstance(r.body, dict) or len(r.body) != 1:
            raise NovaError(400, "Malformed request body")
        (name, arg), = r.body.items()
        sid = r.match["id"]
        if name == "evacuate":
            return self._evacuate(r, sid, arg if isinstance(arg, dict) else {})
        if name == "os-stop":
            self.model.stop(r.ctx, sid, r.now, r.request_id)
            return Reply(202)
        if name == "os-start":
            self.model.start(r.ctx, sid, r.now, r.request_id)
            return Reply(202)
        if name == "os-resetState":
            state = arg.get("state") if isinstance(arg, dict) else None
            self.model.reset_state(r.ctx, sid, str(state), r.now, r.request_id)
            return Reply(202)
        raise NovaError(400, f"There is no such action: {name}")

    def _evacuate(self, r: Request, sid: str, arg: dict[str, Any]) -> Reply:
        assert r.ctx is not None
        allowed = {"host", "adminPass"}
        if r.mv < (2, 14):
            allowed.add("onSharedStorage")
        if (2, 29) <= r.mv < (2, 68):
            allowed.add("force")
        extra = sorted(set(arg) - allowed)
        if extra:
            raise NovaError(400, f"Invalid input for field/attribute evacuate. Value: {arg}. "
                                 f"Additional properties are not allowed ({extra[0]!r} was "
                                 f"unexpected)")
        if r.mv < (2, 14) and "onSharedStorage" not in arg:
            raise NovaError(400, f"Invalid input for field/attribute evacuate. Value: {arg}. "
                                 f"'onSharedStorage' is a required property")
        host = arg.get("host")
        if host is not None and not isinstance(host, str):
            raise NovaError(400, f"Invalid input for field/attribute host. Value: {host}.")
        force = str(arg.get("force", False)).lower() in ("true", "1", "yes", "on")
        self.model.evacuate(r.ctx, sid, r.now, request_id=r.request_id, microversion=r.mv,
                            host=host, force=force)
        if r.mv < (2, 14):
            return Reply(200, {"adminPass": arg.get("adminPass") or admin_password()})
        return Reply(200)

    # metadata

    def get_metadata(self, r: Request) -> Reply:
        assert r.ctx is not None
        return Reply(200, {"metadata": dict(self.model.server(r.ctx, r.match["id"]).metadata)})

    def update_metadata(self, r: Request) -> Reply:
        assert r.ctx is not None
        merged = self.model.set_metadata(r.ctx, r.match["id"], r.json("metadata"), r.now,
                                         replace_all=False)
        return Reply(200, {"metadata": merged})

    def replace_metadata(self, r: Request) -> Reply:
        assert r.ctx is not None
        meta = self.model.set_metadata(r.ctx, r.match["id"], r.json("metadata"), r.now,
                                       replace_all=True)
        return Reply(200, {"metadata": meta})

    def get_metadata_item(self, r: Request) -> Reply:
        assert r.ctx is not None
        server = self.model.server(r.ctx, r.match["id"])
        key = urllib.parse.unquote(r.match["key"])
        if key not in server.metadata:
            raise NovaError(404, "Metadata item was not found")
        return Reply(200, {"meta": {key: server.metadata[key]}})

    def set_metadata_item(self, r: Request) -> Reply:
        assert r.ctx is not None
        key = urllib.parse.unquote(r.match["key"])
        meta = r.json("meta")
        if not isinstance(meta, dict) or len(meta) != 1:
            raise NovaError(400, "Request body contains too many items")
        if key not in meta:
            raise NovaError(400, "Request body and URI mismatch")
        self.model.set_metadata(r.ctx, r.match["id"], meta, r.now, replace_all=False)
        return Reply(200, {"meta": dict(meta)})

    def delete_metadata_item(self, r: Request) -> Reply:
        assert r.ctx is not None
        self.model.delete_metadata_item(r.ctx, r.match["id"],
                                        urllib.parse.unquote(r.match["key"]), r.now)
        return Reply(204)

    # instance actions

    def list_actions(self, r: Request) -> Reply:
        assert r.ctx is not None
        acts = self.model.server_actions(r.ctx, r.match["id"])
        return Reply(200, {"instanceActions": [views.action(self.model, a, r.ctx, r.mv,
                                                            events=False) for a in acts]})

    def show_action(self, r: Request) -> Reply:
        assert r.ctx is not None
        for act in self.model.server_actions(r.ctx, r.match["id"]):
            if act.request_id == r.match["rid"]:
                return Reply(200, {"instanceAction": views.action(self.model, act, r.ctx, r.mv,
                                                                  events=True)})
        raise NovaError(404, f"Action {r.match['rid']} on instance {r.match['id']} could not "
                             f"be found.")

    # services

    def list_services(self, r: Request) -> Reply:
        assert r.ctx is not None
        NovaModel.require_admin(r.ctx, "os_compute_api:os-services:list")
        out = [views.service(self.model, s, r.mv, r.now) for s in self.model.services()
               if r.query.get("host", s["host"]) == s["host"]
               and r.query.get("binary", s["binary"]) == s["binary"]]
        return Reply(200, {"services": out})

    def update_service(self, r: Request) -> Reply:
        assert r.ctx is not None
        body = r.body if isinstance(r.body, dict) else {}
        if r.mv >= (2, 53):
            return self._update_service_v253(r, body)
        NovaModel.require_admin(r.ctx, "os_compute_api:os-services:update")
        action = r.match["id"]
        actions = {"enable": ("enabled", None), "disable": ("disabled", None),
                   "disable-log-reason": ("disabled", None)}
        if r.mv >= (2, 11):
            actions["force-down"] = (None, None)
        if action not in actions:
            raise NovaError(404, "Unknown action")
        host_name, binary = body.get("host"), body.get("binary")
        if not isinstance(host_name, str) or not isinstance(binary, str):
            raise NovaError(400, "Invalid input: 'host' and 'binary' are required properties")
        status = actions[action][0]
        reason = body.get("disabled_reason")
        if action == "disable-log-reason" and not reason:
            raise NovaError(400, "Missing disabled reason field")
        forced = None
        if action == "force-down":
            if "forced_down" not in body:
                raise NovaError(400, "Missing forced_down field")
            forced = _schema_bool(body["forced_down"], "forced_down")
        _, wait = self.model.update_service_by_host(host_name, binary, r.now, status=status,
                                                    disabled_reason=reason if status else None,
                                                    forced_down=forced)
        service: dict[str, Any] = {"host": host_name, "binary": binary}
        if status:
            service["status"] = status
            if reason and status == "disabled":
                service["disabled_reason"] = reason
        if forced is not None:
            service["forced_down"] = forced
        return Reply(200, {"service": service}, wait=wait)

    def _update_service_v253(self, r: Request, body: dict[str, Any]) -> Reply:
        """Nova's order: the body schema, the uuid in the path, the policy, the lookup."""
        assert r.ctx is not None
        extra = sorted(set(body) - {"status", "disabled_reason", "forced_down"})
        if extra:  # a top-level schema error: jsonschema's message alone
            raise NovaError(400, f"Additional properties are not allowed ({extra[0]!r} was "
                                 f"unexpected)")
        status = body.get("status")
        if status is not None and status not in ("enabled", "disabled"):
            raise NovaError(400, f"Invalid input for field/attribute status. Value: {status}. "
                                 f"'{status}' is not one of ['enabled', 'disabled']")
        reason = body.get("disabled_reason")
        if reason is not None and (not isinstance(reason, str) or not 1 <= len(reason) <= 255):
            raise NovaError(400, "Invalid input for field/attribute disabled_reason.")
        forced = _schema_bool(body["forced_down"], "forced_down") if "forced_down" in body \
            else None
        ident = r.match["id"]
        if not re.fullmatch(r"[0-9a-fA-F-]{32,36}", ident):
            raise NovaError(400, f"Invalid uuid {ident}")
        NovaModel.require_admin(r.ctx, "os_compute_api:os-services:update")
        host, wait = self.model.update_service(ident, r.now, status=status,
                                               disabled_reason=reason, forced_down=forced)
        svc = next(s for s in self.model.services() if s["uuid"] == host.service_uuid)
        return Reply(200, {"service": views.service(self.model, svc, r.mv, r.now)}, wait=wait)

    # hypervisors

    def _hypervisor_list(self, r: Request) -> list[Any]:
        assert r.ctx is not None
        NovaModel.require_admin(r.ctx, "os_compute_api:os-hypervisors:list")
        hosts = list(self.model.hosts.values())
        pattern = r.query.get("hypervisor_hostname_pattern")
        if pattern:
            hosts = [h for h in hosts if pattern in h.name]
            if not hosts:
                raise NovaError(404, f"No hypervisor matching '{pattern}' could be found.")
        return hosts

    def list_hypervisors(self, r: Request) -> Reply:
        detail = r.path.endswith("/detail")
        with_servers = r.mv >= (2, 53) and _strict_bool(r.query.get("with_servers", False))
        return Reply(200, {"hypervisors": [
            views.hypervisor(self.model, h, r.mv, r.now, detail=detail,
                             with_servers=with_servers) for h in self._hypervisor_list(r)]})

    def show_hypervisor(self, r: Request) -> Reply:
        ident = r.match["id"]
        for host in self._hypervisor_list(r):
            if ident in (host.hypervisor_uuid, str(host.hypervisor_id)):
                with_servers = r.mv >= (2, 53) and _strict_bool(r.query.get("with_servers",
                                                                            False))
                return Reply(200, {"hypervisor": views.hypervisor(
                    self.model, host, r.mv, r.now, detail=True, with_servers=with_servers)})
        raise NovaError(404, f"Hypervisor with ID {ident} could not be found.")

    # flavors

    def list_flavors(self, r: Request) -> Reply:
        detail = r.path.endswith("/detail")
        flavors = sorted(self.model.flavors.values(), key=lambda f: (f.ram, f.id))
        if detail:
            items = [views.flavor(f, r.mv, self.compute_url) for f in flavors]
        else:
            items = [{"id": f.id, "name": f.name, "links": views.link(self.compute_url,
                                                                       "flavors", f.id)}
                     | ({"description": f.description} if r.mv >= (2, 55) else {})
                     for f in flavors]
        return Reply(200, {"flavors": items})

    def show_flavor(self, r: Request) -> Reply:
        flavor = self.model.flavors.get(r.match["id"])
        if flavor is None:
            raise NovaError(404, f"Flavor {r.match['id']} could not be found.")
        return Reply(200, {"flavor": views.flavor(flavor, r.mv, self.compute_url)})

    # aggregates

    def list_aggregates(self, r: Request) -> Reply:
        assert r.ctx is not None
        NovaModel.require_admin(r.ctx, "os_compute_api:os-aggregates:index")
        return Reply(200, {"aggregates": [views.aggregate(self.model, a, r.mv) for a in
                                          sorted(self.model.aggregates.values(),
                                                 key=lambda a: a.id)]})

    def create_aggregate(self, r: Request) -> Reply:
        assert r.ctx is not None
        spec = r.json("aggregate")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise NovaError(400, "Invalid input for field/attribute aggregate. 'name' is a "
                                 "required property")
        agg = self.model.create_aggregate(r.ctx, spec["name"].strip(),
                                          spec.get("availability_zone"), r.now)
        body = views.aggregate(self.model, agg, r.mv)
        body.pop("hosts"), body.pop("metadata")  # Nova's create reply has neither
        return Reply(200, {"aggregate": body})

    def show_aggregate(self, r: Request) -> Reply:
        assert r.ctx is not None
        agg = self.model.aggregate(r.ctx, r.match["id"])
        return Reply(200, {"aggregate": views.aggregate(self.model, agg, r.mv)})

    def delete_aggregate(self, r: Request) -> Reply:
        assert r.ctx is not None
        self.model.delete_aggregate(r.ctx, r.match["id"])
        return Reply(200)

    def aggregate_action(self, r: Request) -> Reply:
        assert r.ctx is not None
        if not isinstance(r.body, dict) or len(r.body) != 1:
            raise NovaError(400, "Malformed request body")
        (name, arg), = r.body.items()
        ident = r.match["id"]
        if not isinstance(arg, dict):
            raise NovaError(400, f"Invalid input for field/attribute {name}.")
        if name == "add_host":
            agg = self.model.aggregate_add_host(r.ctx, ident, str(arg.get("host")), r.now)
        elif name == "remove_host":
            agg = self.model.aggregate_remove_host(r.ctx, ident, str(arg.get("host")), r.now)
        elif name == "set_metadata":
            metadata = arg.get("metadata")
            if not isinstance(metadata, dict):
                raise NovaError(400, "Invalid input for field/attribute metadata.")
            agg = self.model.aggregate_set_metadata(r.ctx, ident, metadata, r.now)
        else:
            raise NovaError(400, f"There is no such action: {name}")
        return Reply(200, {"aggregate": views.aggregate(self.model, agg, r.mv)})

    def list_migrations(self, r: Request) -> Reply:
        assert r.ctx is not None
        NovaModel.require_admin(r.ctx, "os_compute_api:os-migrations:index")
        migs = [m for m in self.model.migrations
                if r.query.get("instance_uuid", m.instance) == m.instance
                and r.query.get("source_compute", m.source) == m.source
                and r.query.get("migration_type", m.migration_type) == m.migration_type]
        return Reply(200, {"migrations": [views.migration(self.model, m, r.mv)
                                          for m in reversed(migs)]})


#: Nova's ``parameter_types.boolean``: what its JSON schemas take for a boolean body field.
_SCHEMA_BOOLEAN: list[Any] = [True, "True", "TRUE", "true", "1", "ON", "On", "on", "YES", "Yes",
                              "yes", False, "False", "FALSE", "false", "0", "OFF", "Off", "off",
                              "NO", "No", "no"]


def _schema_bool(value: Any, name: str) -> bool:
    """A body field Nova's schema declares ``parameter_types.boolean`` (a JSON boolean or one
    of its strings, nothing else: not 1, not "t"), refused with its validator's message."""
    if not isinstance(value, (bool, str)):
        raise NovaError(400, f"Invalid input for field/attribute {name}. Value: {value}. "
                             f"{value!r} is not of type 'boolean', 'string'")
    if value not in _SCHEMA_BOOLEAN:
        raise NovaError(400, f"Invalid input for field/attribute {name}. Value: {value}. "
                             f"{value!r} is not one of {_SCHEMA_BOOLEAN!r}")
    return value is True or value in ("True", "TRUE", "true", "1", "ON", "On", "on", "YES",
                                      "Yes", "yes")


def _strict_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "t", "true", "on", "y", "yes"):
        return True
    if text in ("0", "f", "false", "off", "n", "no"):
        return False
    raise NovaError(400, f"Unrecognized value '{value}', acceptable values are: '0', '1', "
                         f"'f', 'false', 'n', 'no', 'off', 'on', 't', 'true', 'y', 'yes'")
