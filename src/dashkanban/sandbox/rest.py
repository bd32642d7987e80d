"""The REST side of the sandbox: the subset of Cumulocity's API the project uses (docs/protocol.md
3).

Shapes, media types, status codes and error bodies follow docs/protocol.md; each collection
pages like the platform (`pageSize` default 5, at most 2000). Basic auth `tenant/user:password`
guards the API; the status page (`/`, `/sandbox/state.json`) and `/openapi.json` are open, as the
sandbox binds to loopback (docs/sandbox.md says why).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode

from dashkanban.sandbox import page
from dashkanban.sandbox.http import Request, Response
from dashkanban.sandbox.registration import (
    DEVICE_USER_PREFIX,
    Accounts,
    DeviceCredentials,
    RegistrationError,
    Registrations,
    Role,
)
from dashkanban.sandbox.smartrules import RuleError, SmartRules
from dashkanban.sandbox.store import (
    SEVERITIES,
    ConflictError,
    Doc,
    NotFoundError,
    Store,
    parse_time,
)
from dashkanban.sandbox.tokens import TokenIssuer, TokenUser

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 5
MAX_PAGE_SIZE = 2000
INFO = "https://www.cumulocity.com/guides/reference/#error_reporting"
SECURITY_INFO = "https://www.cumulocity.com/guides/reference-guide/#error_reporting"
ERROR_TYPE = "error"


def media_type(name: str) -> str:
    return f"application/vnd.com.nsn.cumulocity.{name}+json;charset=UTF-8;ver=0.9"


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, info: str = INFO) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.info = info

    def response(self) -> Response:
        body = {"error": self.error, "message": self.message, "info": self.info}
        headers: tuple[tuple[str, str], ...] = ()
        if self.status == 401:
            headers = (("WWW-Authenticate", 'Basic realm="Cumulocity"'),)
        return Response(self.status, _dump(body), media_type(ERROR_TYPE), headers)


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


Route = Callable[["RestApi", Request, "re.Match[str]"], Awaitable[Response]]
# Who may call a route: False open; True the tenant user and device users; "tenant" only the
# tenant user (device users have device rights only); "bootstrap" only the bootstrap user.
Auth = bool | Literal["tenant", "bootstrap"]


class RestApi:
    """Request in, response out, on the shared store. `operation_created` tells the broker."""

    def __init__(self, store: Store, username: str, password: str,
                 operation_created: Callable[[Doc], object] | None = None, *,
                 accounts: Accounts | None = None,
                 registrations: Registrations | None = None,
                 tokens: TokenIssuer | None = None, devices_read_own_only: bool = False) -> None:
        self.store = store
        self._username = username
        self._password = password
        self.operation_created = operation_created
        self.smart_rules = SmartRules(store)
        self.accounts = accounts or Accounts(username, password, None)
        self.registrations = registrations
        # Device tokens from `s/uat` (sandbox/tokens.py), accepted as `Bearer`.
        self.tokens = tokens
        # A device user reads only the managed objects it owns: 403 on the others (docs/protocol.md
        # 3.1
        # correction: "a 403 on someone else's managed object is normal"). Off by default.
        self.devices_read_own_only = devices_read_own_only
        # `POST /sandbox/misbehave` (set by the Sandbox): make the broker misbehave on purpose.
        self.misbehave: Callable[[Doc], Doc] | None = None
        self._routes: list[tuple[str, re.Pattern[str], Route, Auth]] = [
            (m, re.compile(p), f, auth) for m, p, f, auth in _ROUTES
        ]

    async def __call__(self, request: Request) -> Response:
        allowed = []
        for method, pattern, function, auth in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method and not (method == "GET" and request.method == "HEAD"):
                allowed.append(method)
                continue
            try:
                if auth:
                    role, who = self._authenticate(request)
                    self._permit(role, auth)
                    if who is not None:
                        self._device_may(who, function, match)
                response = await function(self, request, match)
            except ApiError as exc:
                response = exc.response()
            log.info("%s %s -> %d", request.method, request.path, response.status)
            return response
        if allowed:
            return ApiError(405, "general/methodNotAllowed",
                            f"Method {request.method} is not supported").response()
        return ApiError(404, "general/notFound", f"No resource at {request.path}").response()

    @staticmethod
    def _permit(role: Role, auth: Auth) -> None:
        allowed = {"tenant": role == "tenant", "bootstrap": role == "bootstrap"}.get(
            str(auth), role in ("tenant", "device"))
        if not allowed:
            # [UNVERIFIED] the platform's exact body for a permission it does not grant.
            raise ApiError(403, "security/Forbidden", "Access is denied", SECURITY_INFO)

    def _authenticate(self, request: Request) -> tuple[Role, TokenUser | None]:
        """Basic `tenant/user:password` (the account's role), or `Bearer <device token>` (a
        device: the one it was issued to). Anything else is 401."""
        header = request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token:
            who = self.tokens.verify(token.strip()) if self.tokens is not None else None
            if who is None:
                # [UNVERIFIED] the exact message for an expired or forged token.
                raise ApiError(401, "security/Unauthorized", "Invalid or expired token",
                               SECURITY_INFO)
            return "device", who
        if scheme.lower() != "basic" or not token:
            raise ApiError(401, "security/Unauthorized",
                           "Full authentication is required to access this resource", SECURITY_INFO)
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        role = self.accounts.role(user, password.encode())
        if role is None:
            # [UNVERIFIED] the exact message for wrong credentials.
            raise ApiError(401, "security/Unauthorized", "Invalid credentials! : Bad credentials",
                           SECURITY_INFO)
        return role, None

    def _device_may(self, who: TokenUser, function: Route, match: re.Match[str]) -> None:
        if not self.devices_read_own_only or function is not RestApi.get_managed_object:
            return
        try:
            owner = self.store.get_managed_object(match["id"]).get("owner")
        except NotFoundError:
            return
        if owner != who.user:
            # [UNVERIFIED] the exact error body; the status is Cumulocity's for a missing role.
            raise ApiError(403, "security/Forbidden", "Access is denied", SECURITY_INFO)

    # -- rendering --------------------------------------------------------------------------
    @staticmethod
    def base(request: Request) -> str:
        return f"http://{request.header('host') or '127.0.0.1'}"

    def render_mo(self, doc: Doc, base: str) -> Doc:
        mo_id = doc["id"]
        url = f"{base}/inventory/managedObjects/{mo_id}"
        out = {k: v for k, v in doc.items() if not k.startswith("_")}
        out["self"] = url
        out["childDevices"] = self._references(url + "/childDevices", doc["_children"], base)
        out["deviceParents"] = self._references(url + "/deviceParents", doc["_parents"], base)
        for name in ("childAssets", "assetParents", "childAdditions", "additionParents"):
            out[name] = {"self": f"{url}/{name}", "references": []}
        return out

    def _references(self, url: str, ids: list[str], base: str) -> Doc:
        refs = []
        for other in ids:
            try:
                name = self.store.get_managed_object(other).get("name")
            except NotFoundError:
                continue
            mo: Doc = {"id": other, "self": f"{base}/inventory/managedObjects/{other}"}
            if name is not None:
                mo["name"] = name
            refs.append({"self": f"{url}/{other}", "managedObject": mo})
        return {"self": url, "references": refs}

    @staticmethod
    def render_sourced(doc: Doc, base: str, collection: str) -> Doc:
        out = dict(doc)
        out["self"] = f"{base}/{collection}/{doc['id']}"
        source = doc["source"]
        out["source"] = {"id": source, "self": f"{base}/inventory/managedObjects/{source}"}
        return out

    def _mo(self, mo_id: str) -> Doc:
        try:
            return self.store.get_managed_object(mo_id)
        except NotFoundError:
            raise ApiError(404, "inventory/Not Found",
                           f"Finding device data from database failed : No managedObject for id "
                           f"'{mo_id}'!") from None

    def _collection(self, request: Request, key: str, items: list[Doc], kind: str) -> Response:
        size, current = _paging(request)
        start = (current - 1) * size
        chunk = items[start : start + size]
        base = self.base(request)
        query = {k: v for k, v in request.query.items() if k not in ("pageSize", "currentPage")}

        def link(page_number: int) -> str:
            params = urlencode({**query, "pageSize": size, "currentPage": page_number})
            return f"{base}{request.path}?{params}"

        statistics: Doc = {"currentPage": current, "pageSize": size}
        if request.query.get("withTotalPages") == "true":
            statistics["totalPages"] = max(1, -(-len(items) // size))
        if request.query.get("withTotalElements") == "true":
            statistics["totalElements"] = len(items)
        body: Doc = {"self": link(current)}
        if len(chunk) == size:
            body["next"] = link(current + 1)
        if current > 1:
            body["prev"] = link(current - 1)
        body[key] = chunk
        body["statistics"] = statistics
        return Response(200, _dump(body), media_type(kind))

    def _created(self, request: Request, doc: Doc, kind: str) -> Response:
        # "If you specify an Accept header in a POST or PUT request, the response will contain
        # the new object; if not, the body is empty" (http-usage.md, docs/protocol.md 3.1).
        body = _dump(doc) if request.header("accept") else b""
        return Response(201, body, media_type(kind) if body else None,
                        (("Location", str(doc["self"])),))

    def _updated(self, request: Request, doc: Doc, kind: str) -> Response:
        body = _dump(doc) if request.header("accept") else b""
        return Response(200, body, media_type(kind) if body else None)

    # -- identity ---------------------------------------------------------------------------
    async def get_external_id(self, request: Request, match: re.Match[str]) -> Response:
        id_type, external_id = match["type"], match["xid"]
        mo_id = self.store.find_external(id_type, external_id)
        if mo_id is None:
            raise ApiError(404, "identity/Not Found",
                           f"External id not found; external id = ID [type={id_type}, "
                           f"value={external_id}]")
        return Response(200, _dump(self._external(request, id_type, external_id, mo_id)),
                        media_type("externalid"))

    def _external(self, request: Request, id_type: str, external_id: str, mo_id: str) -> Doc:
        base = self.base(request)
        return {
            "externalId": external_id,
            "managedObject": {"id": mo_id, "self": f"{base}/inventory/managedObjects/{mo_id}"},
            "self": f"{base}/identity/externalIds/{id_type}/{external_id}",
            "type": id_type,
        }

    async def delete_external_id(self, request: Request, match: re.Match[str]) -> Response:
        try:
            self.store.remove_external(match["type"], match["xid"])
        except NotFoundError:
            raise ApiError(404, "identity/Not Found",
                           f"External id not found; external id = ID [type={match['type']}, "
                           f"value={match['xid']}]") from None
        return Response(204)

    async def list_external_ids(self, request: Request, match: re.Match[str]) -> Response:
        mo_id = self._mo(match["id"])["id"]
        rows = [self._external(request, t, x, mo_id) for t, x in self.store.external_ids_of(mo_id)]
        body = {"externalIds": rows, "self": f"{self.base(request)}{request.path}"}
        return Response(200, _dump(body), media_type("externalidcollection"))

    async def post_external_id(self, request: Request, match: re.Match[str]) -> Response:
        mo_id = self._mo(match["id"])["id"]
        data = _json_object(request)
        id_type, external_id = data.get("type"), data.get("externalId")
        if not isinstance(id_type, str) or not isinstance(external_id, str) or not id_type \
                or not external_id:
            raise _validation(["type", "externalId"])
        try:
            self.store.add_external(mo_id, id_type, external_id)
        except ConflictError:
            raise ApiError(409, "identity/Conflict",
                           "Duplicate - Identity already bound to a different Global ID") from None
        doc = self._external(request, id_type, external_id, mo_id)
        return self._created(request, doc, "externalid")

    # -- inventory --------------------------------------------------------------------------
    async def list_managed_objects(self, request: Request, match: re.Match[str]) -> Response:
        q = request.query
        items = self.store.list_managed_objects()
        if "type" in q:
            items = [d for d in items if d.get("type") == q["type"]]
        if "fragmentType" in q:
            items = [d for d in items if q["fragmentType"] in d]
        if "ids" in q:
            wanted = q["ids"].split(",")
            items = [d for d in items if d["id"] in wanted]
        if "owner" in q:
            items = [d for d in items if d.get("owner") == q["owner"]]
        base = self.base(request)
        rendered = [self.render_mo(d, base) for d in items]
        return self._collection(request, "managedObjects", rendered, "managedobjectcollection")

    async def post_managed_object(self, request: Request, match: re.Match[str]) -> Response:
        data = _json_object(request)
        doc = self.store.create_managed_object(data, owner=self._username.partition("/")[2])
        return self._created(request, self.render_mo(doc, self.base(request)), "managedobject")

    async def get_managed_object(self, request: Request, match: re.Match[str]) -> Response:
        doc = self._mo(match["id"])
        return Response(200, _dump(self.render_mo(doc, self.base(request))),
                        media_type("managedobject"))

    async def put_managed_object(self, request: Request, match: re.Match[str]) -> Response:
        self._mo(match["id"])
        doc = self.store.update_managed_object(match["id"], _json_object(request))
        return self._updated(request, self.render_mo(doc, self.base(request)), "managedobject")

    async def list_child_devices(self, request: Request, match: re.Match[str]) -> Response:
        doc = self._mo(match["id"])
        base = self.base(request)
        url = f"{base}/inventory/managedObjects/{doc['id']}/childDevices"
        refs = self._references(url, doc["_children"], base)["references"]
        return self._collection(request, "references", refs, "managedobjectreferencecollection")

    async def post_child_device(self, request: Request, match: re.Match[str]) -> Response:
        parent = self._mo(match["id"])
        data = _json_object(request)
        child = data.get("managedObject")
        if not isinstance(child, dict) or not isinstance(child.get("id"), str):
            raise _validation(["managedObject.id"])
        self._mo(child["id"])
        self.store.link_child(parent["id"], child["id"])
        base = self.base(request)
        url = f"{base}/inventory/managedObjects/{parent['id']}/childDevices"
        ref = self._references(url, [child["id"]], base)["references"][0]
        return self._created(request, ref, "managedobjectreference")

    # -- events -----------------------------------------------------------------------------
    async def post_event(self, request: Request, match: re.Match[str]) -> Response:
        data = _json_object(request)
        source = data.get("source")
        source_id = source.get("id") if isinstance(source, dict) else None
        missing = [
            name for name, value in (
                ("source", source_id), ("type", data.get("type")),
                ("text", data.get("text")), ("time", data.get("time")),
            ) if not isinstance(value, str) or not value
        ]
        if missing:
            raise _validation(missing)
        time = parse_time(str(data["time"]))
        if time is None:
            raise ApiError(422, "undefined/validationError",
                           f"Unable to parse time {data['time']!r}: ISO 8601 with an offset needed")
        self._source(str(source_id))
        extra = {k: v for k, v in data.items() if k not in ("source", "type", "text", "time")}
        doc = self.store.create_event(str(source_id), str(data["type"]), str(data["text"]), time,
                                      extra)
        return self._created(request, self.render_sourced(doc, self.base(request), "event/events"),
                             "event")

    def _source(self, source_id: str) -> None:
        try:
            self.store.get_managed_object(source_id)
        except NotFoundError:
            # [UNVERIFIED] the platform's exact answer for an unknown source.
            raise ApiError(422, "undefined/validationError",
                           f"Cannot find managed object with id {source_id}") from None

    def _with_source_devices(self, q: dict[str, str]) -> dict[str, str]:
        """`withSourceDevices=true`: the source and its child devices (events-bundle)."""
        if "source" not in q or q.get("withSourceDevices") != "true":
            return q
        return {**q, "source": ",".join(self.store.tree_ids(q["source"])) or q["source"]}

    async def list_events(self, request: Request, match: re.Match[str]) -> Response:
        with self.store.lock:
            events = [dict(e) for e in self.store.events]
        items = _filter_timed(events, self._with_source_devices(request.query),
                              newest_first=True)
        base = self.base(request)
        rendered = [self.render_sourced(e, base, "event/events") for e in items]
        return self._collection(request, "events", rendered, "eventcollection")

    async def get_event(self, request: Request, match: re.Match[str]) -> Response:
        with self.store.lock:
            found = [dict(e) for e in self.store.events if e["id"] == match["id"]]
        if not found:
            raise ApiError(404, "event/Not Found",
                           f"Finding event from database failed : No event for gid "
                           f"'{match['id']}'!")
        return Response(200, _dump(self.render_sourced(found[0], self.base(request),
                                                       "event/events")), media_type("event"))

    # -- alarms -----------------------------------------------------------------------------
    async def list_alarms(self, request: Request, match: re.Match[str]) -> Response:
        with self.store.lock:
            alarms = [dict(a) for a in self.store.alarms]
        q = request.query
        if "status" in q:
            wanted = set(q["status"].split(","))
            alarms = [a for a in alarms if a["status"] in wanted]
        if "severity" in q:
            alarms = [a for a in alarms if a["severity"] == q["severity"]]
        items = _filter_timed(alarms, self._with_source_devices(q), newest_first=True)
        base = self.base(request)
        rendered = [self.render_sourced(a, base, "alarm/alarms") for a in items]
        return self._collection(request, "alarms", rendered, "alarmcollection")

    async def post_alarm(self, request: Request, match: re.Match[str]) -> Response:
        data = _json_object(request)
        source = data.get("source")
        source_id = source.get("id") if isinstance(source, dict) else None
        missing = [
            name for name, value in (
                ("source", source_id), ("type", data.get("type")), ("text", data.get("text")),
                ("time", data.get("time")), ("severity", data.get("severity")),
            ) if not isinstance(value, str) or not value
        ]
        if missing:
            raise _validation(missing)
        time = parse_time(str(data["time"]))
        if time is None or data["severity"] not in SEVERITIES:
            raise ApiError(422, "undefined/validationError", "Invalid time or severity")
        self._source(str(source_id))
        doc = self.store.raise_alarm(str(source_id), str(data["type"]), str(data["text"]), time,
                                     str(data["severity"]))
        return self._created(request, self.render_sourced(doc, self.base(request), "alarm/alarms"),
                             "alarm")

    async def put_alarm(self, request: Request, match: re.Match[str]) -> Response:
        data = _json_object(request)
        changes = {k: str(data[k]) for k in ("status", "severity", "text") if k in data}
        if changes.get("status", "ACTIVE") not in ("ACTIVE", "ACKNOWLEDGED", "CLEARED") or \
                changes.get("severity", "MAJOR") not in SEVERITIES:
            raise ApiError(422, "undefined/validationError", "Invalid status or severity")
        try:
            doc = self.store.update_alarm(match["id"], changes)
        except NotFoundError:
            raise ApiError(404, "alarm/Not Found", f"No alarm for gid '{match['id']}'!") from None
        return self._updated(request, self.render_sourced(doc, self.base(request), "alarm/alarms"),
                             "alarm")

    # -- measurements -----------------------------------------------------------------------
    async def list_measurements(self, request: Request, match: re.Match[str]) -> Response:
        with self.store.lock:
            items = [dict(m) for m in self.store.measurements]
        q = request.query
        if "valueFragmentType" in q:
            items = [m for m in items if q["valueFragmentType"] in m]
        # Measurements come oldest first unless revert=true (unlike events).
        items = _filter_timed(items, q, newest_first=False)
        base = self.base(request)
        rendered = [self.render_sourced(m, base, "measurement/measurements") for m in items]
        return self._collection(request, "measurements", rendered, "measurementcollection")

    # -- operations -------------------------------------------------------------------------
    async def post_operation(self, request: Request, match: re.Match[str]) -> Response:
        data = _json_object(request)
        device_id = data.get("deviceId")
        if not isinstance(device_id, str) or not device_id:
            raise _validation(["deviceId"])
        self._mo(device_id)
        doc = self.store.create_operation(device_id, data)
        if self.operation_created is not None:
            self.operation_created(doc)
        return self._created(request, self._render_op(doc, request), "operation")

    def _render_op(self, doc: Doc, request: Request) -> Doc:
        out = dict(doc)
        out["self"] = f"{self.base(request)}/devicecontrol/operations/{doc['id']}"
        return out

    async def list_operations(self, request: Request, match: re.Match[str]) -> Response:
        with self.store.lock:
            items = [dict(o) for o in self.store.operations]
        q = request.query
        if "deviceId" in q:
            items = [o for o in items if o["deviceId"] == q["deviceId"]]
        if "status" in q:
            items = [o for o in items if o["status"] == q["status"]]
        if "fragmentType" in q:
            items = [o for o in items if q["fragmentType"] in o]
        if q.get("revert") != "true":
            items.reverse()
        rendered = [self._render_op(o, request) for o in items]
        return self._collection(request, "operations", rendered, "operationcollection")

    async def get_operation(self, request: Request, match: re.Match[str]) -> Response:
        with self.store.lock:
            found = [dict(o) for o in self.store.operations if o["id"] == match["id"]]
        if not found:
            raise ApiError(404, "devicecontrol/Not Found", f"No operation for gid '{match['id']}'!")
        return Response(200, _dump(self._render_op(found[0], request)), media_type("operation"))

    # -- device registration ----------------------------------------------------------------
    def _registrations(self) -> Registrations:
        if self.registrations is None:
            raise ApiError(404, "general/notFound", "device registration is off")
        return self.registrations

    async def device_credentials(self, request: Request, match: re.Match[str]) -> Response:
        # The REST form of the bootstrap: 404 until accepted, then the device user
        # (device-integration-rest-bundle/integration-life-cycle.md, step 0).
        data = _json_object(request)
        device_id = data.get("id")
        if not isinstance(device_id, str) or not device_id:
            raise _validation(["id"])
        issued = self._registrations().request(device_id)
        if issued is None:
            # [UNVERIFIED] the body of the 404; the status code is documented.
            raise ApiError(404, "devicecontrol/Not Found",
                           f"There is no newDeviceRequest for id = {device_id}")
        return Response(200, _dump(_credentials_doc(issued, device_id, self.base(request))),
                        media_type("devicecredentials"))

    async def est_simpleenroll(self, request: Request, match: re.Match[str]) -> Response:
        # Basic auth <device ID>:<one-time password> (device-enroll-and-re-enroll.md; as
        # thin-edge's `tedge cert download c8y` sends it); the CSR as base64 DER or PEM.
        user, password = _basic(request)
        try:
            csr = _csr_der(request.body)
            chain = self._registrations().enrol(user, password, csr)
        except RegistrationError as exc:
            error = "security/Unauthorized" if exc.status == 401 else "sandbox/enrol"
            raise ApiError(exc.status, error, exc.message) from None
        # [UNVERIFIED] 200 with PEM (what tedge expects) under the docs' pkcs7-mime type.
        return Response(200, b"".join(chain), "application/pkcs7-mime; smime-type=certs-only")

    async def est_simplereenroll(self, request: Request, match: re.Match[str]) -> Response:
        # "The device has to authenticate itself using its password or a JWT token"
        # (device-enroll-and-re-enroll.md): `Bearer <JWT from s/uat>` or Basic with the device
        # user of a registration. The new certificate keeps the caller's device ID as CN.
        role, who = self._authenticate(request)
        if who is not None:
            device_id = who.device
        elif role == "device":
            user = _basic(request)[0].partition("/")[2]
            device_id = user.removeprefix(DEVICE_USER_PREFIX)
        else:
            # [UNVERIFIED] that a user who is no device is refused, and the body.
            raise ApiError(403, "security/Forbidden", "Only a device may re-enroll its "
                           "certificate", SECURITY_INFO)
        try:
            csr = _csr_der(request.body)
            chain = self._registrations().reenrol(device_id, csr)
        except RegistrationError as exc:
            error = "security/Forbidden" if exc.status == 403 else "sandbox/enrol"
            raise ApiError(exc.status, error, exc.message) from None
        # [UNVERIFIED] 200 with PEM, as for simpleenroll.
        return Response(200, b"".join(chain), "application/pkcs7-mime; smime-type=certs-only")

    async def list_registrations(self, request: Request, match: re.Match[str]) -> Response:
        items = [_registration_doc(r) for r in self._registrations().entries()]
        return Response(200, _dump({"registrations": items}), "application/json")

    async def post_registration(self, request: Request, match: re.Match[str]) -> Response:
        form = _is_form(request)
        data: Doc = {"id": _form_field(request, "id")} if form else _json_object(request)
        device_id, one_time = data.get("id"), data.get("oneTimePassword")
        if not isinstance(device_id, str):
            raise _validation(["id"])
        if one_time is not None and not isinstance(one_time, str):
            raise _validation(["oneTimePassword"])
        try:
            item = self._registrations().register(device_id, one_time)
        except RegistrationError as exc:
            raise ApiError(exc.status, "sandbox/registration", exc.message) from None
        if form:
            return _back_to_page()
        return Response(201, _dump(_registration_doc(item)), "application/json")

    async def accept_registration(self, request: Request, match: re.Match[str]) -> Response:
        try:
            item = self._registrations().accept(match["id"])
        except RegistrationError as exc:
            raise ApiError(exc.status, "sandbox/registration", exc.message) from None
        if _is_form(request):
            return _back_to_page()
        return Response(200, _dump(_registration_doc(item)), "application/json")

    # -- page -------------------------------------------------------------------------------
    def _page_state(self) -> dict[str, Any]:
        data = page.state(self.store)
        entries = self.registrations.entries() if self.registrations is not None else []
        data["registrations"] = [_registration_doc(r) for r in entries]
        data["emails"] = self.smart_rules.recorded()[-page.RECENT_EVENTS:][::-1]
        if self.registrations is not None:
            # Both counters only grow: their sum changes whenever either does.
            data["version"] = int(data["version"]) + self.registrations.version
        return data

    async def status_page(self, request: Request, match: re.Match[str]) -> Response:
        return Response(200, page.render_html(self._page_state()).encode("utf-8"),
                        "text/html; charset=utf-8", (("Cache-Control", "no-store"),))

    async def status_json(self, request: Request, match: re.Match[str]) -> Response:
        return Response(200, _dump(self._page_state()), "application/json",
                        (("Cache-Control", "no-store"),))


    # -- Smart Rules (sandbox/smartrules.py) -------------------------------------------------
    async def list_smart_rules(self, request: Request, match: re.Match[str]) -> Response:
        context = match.groupdict().get("mo")
        private = request.query.get("withPrivateRules", "false") == "true"
        rules = self.smart_rules.find(context, private)
        return Response(200, _dump({"rules": rules}), "application/json")

    async def post_smart_rule(self, request: Request, match: re.Match[str]) -> Response:
        context = match.groupdict().get("mo")
        if context is not None:
            self._source(context)
        try:
            rule = self.smart_rules.create(_json_object(request), context)
        except RuleError as exc:
            raise ApiError(422, "undefined/validationError", str(exc)) from None
        return Response(201, _dump(rule), "application/json")

    async def get_smart_rule(self, request: Request, match: re.Match[str]) -> Response:
        rule = self.smart_rules.get(match["id"])
        if rule is None:
            raise _no_rule(match["id"])
        return Response(200, _dump(rule), "application/json")

    async def put_smart_rule(self, request: Request, match: re.Match[str]) -> Response:
        try:
            rule = self.smart_rules.update(match["id"], _json_object(request))
        except RuleError as exc:
            raise ApiError(422, "undefined/validationError", str(exc)) from None
        if rule is None:
            raise _no_rule(match["id"])
        return Response(200, _dump(rule), "application/json")

    async def delete_smart_rule(self, request: Request, match: re.Match[str]) -> Response:
        if not self.smart_rules.delete(match["id"]):
            raise _no_rule(match["id"])
        return Response(204)

    async def list_emails(self, request: Request, match: re.Match[str]) -> Response:
        """The sandbox's own: the e-mails Smart Rules would have sent, oldest first."""
        return Response(200, _dump({"emails": self.smart_rules.recorded()}), "application/json",
                        (("Cache-Control", "no-store"),))

    async def post_misbehave(self, request: Request, match: re.Match[str]) -> Response:
        if self.misbehave is None:
            raise ApiError(404, "general/notFound", f"No resource at {request.path}")
        data = _json_object(request)
        try:
            result = self.misbehave(data)
        except (ValueError, TypeError) as exc:
            raise ApiError(422, "undefined/validationError", str(exc)) from None
        return Response(200, _dump(result), "application/json")

    async def openapi(self, request: Request, match: re.Match[str]) -> Response:
        text = resources.files("dashkanban.sandbox").joinpath("static/openapi.json").read_bytes()
        return Response(200, text, "application/json")


def _paging(request: Request) -> tuple[int, int]:
    try:
        size = int(request.query.get("pageSize", DEFAULT_PAGE_SIZE))
        current = int(request.query.get("currentPage", 1))
    except ValueError:
        raise ApiError(422, "undefined/validationError",
                       "pageSize and currentPage must be whole numbers") from None
    if size < 1 or current < 1:
        raise ApiError(422, "undefined/validationError",
                       "pageSize and currentPage must be at least 1")
    # Larger page sizes are trimmed to 2000 (docs/protocol.md 3.4).
    return min(size, MAX_PAGE_SIZE), current


def _query_time(q: dict[str, str], name: str) -> datetime | None:
    if name not in q:
        return None
    moment = parse_time(q[name], zone_required=False)
    if moment is None:
        # A raw `+` arrives as a space: the caller forgot %2B (docs/protocol.md 3.1).
        raise ApiError(422, "undefined/validationError",
                       f"Unable to parse {name} {q[name]!r} (encode + as %2B)")
    return moment


def _filter_timed(items: list[Doc], q: dict[str, str], *, newest_first: bool) -> list[Doc]:
    """source, type, dateFrom/dateTo (inclusive, on `time`), newest first unless revert=true."""
    if "source" in q:
        sources = set(q["source"].split(","))
        items = [i for i in items if i["source"] in sources]
    if "type" in q:
        items = [i for i in items if i["type"] == q["type"]]
    if "fragmentType" in q:
        items = [i for i in items if q["fragmentType"] in i]
    date_from, date_to = _query_time(q, "dateFrom"), _query_time(q, "dateTo")
    keyed = []
    for index, item in enumerate(items):
        moment = parse_time(item["time"])
        assert moment is not None  # the store writes only valid times
        if date_from is not None and moment < date_from:
            continue
        if date_to is not None and moment > date_to:
            continue
        keyed.append((moment, index, item))
    reverse = newest_first != (q.get("revert") == "true")
    keyed.sort(key=lambda row: (row[0], row[1]), reverse=reverse)
    return [item for _, _, item in keyed]


def _json_object(request: Request) -> Doc:
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "general/badRequest", "The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "general/badRequest", "The request body must be a JSON object")
    return data


def _no_rule(rule_id: str) -> ApiError:
    # [UNVERIFIED] the Smart Rules service's wording for an unknown id.
    return ApiError(404, "smartrule/Not Found", f"No smart rule for id '{rule_id}'!")


def _registration_doc(item: Any) -> Doc:
    doc: Doc = {"id": item.id, "status": item.status, "creationTime": item.created}
    if item.username is not None:
        doc["username"] = item.username
    return doc


def _credentials_doc(issued: DeviceCredentials, device_id: str, base: str) -> Doc:
    return {"id": device_id, "self": f"{base}/devicecontrol/deviceCredentials/{device_id}",
            "tenantId": issued.tenant, "username": issued.username, "password": issued.password}


def _basic(request: Request) -> tuple[str, str]:
    scheme, _, token = (request.header("authorization") or "").partition(" ")
    try:
        decoded = base64.b64decode(token, validate=True).decode() if scheme.lower() == "basic" \
            else ""
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    user, _, password = decoded.partition(":")
    return user, password


def _csr_der(body: bytes) -> bytes:
    text = body.strip()
    if text.startswith(b"-----BEGIN"):
        lines = [line for line in text.splitlines() if not line.startswith(b"-----")]
        text = b"".join(lines)
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except binascii.Error:
        raise RegistrationError(400, "the body is no base64 PKCS#10 certificate request") from None


def _is_form(request: Request) -> bool:
    kind = (request.header("content-type") or "").split(";")[0].strip().lower()
    return kind == "application/x-www-form-urlencoded"


def _form_field(request: Request, name: str) -> str | None:
    try:
        fields = parse_qs(request.body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "general/badRequest", "The request body is not a form") from None
    values = fields.get(name)
    return values[0] if values else None


def _back_to_page() -> Response:
    # A button on the status page posts a form; the browser goes back to the page.
    return Response(303, b"", None, (("Location", "/"),))


def _validation(missing: list[str]) -> ApiError:
    # The platform's wording for missing mandatory fields (json-via-mqtt.md, docs/protocol.md 2.8).
    return ApiError(422, "undefined/validationError",
                    "Following mandatory fields should be included: " + ",".join(missing))


_ID = r"(?P<id>[^/]+)"
_ROUTES: list[tuple[str, str, Route, Auth]] = [
    ("GET", r"/", RestApi.status_page, False),
    ("GET", r"/sandbox/state\.json", RestApi.status_json, False),
    ("GET", r"/sandbox/registrations", RestApi.list_registrations, "tenant"),
    ("POST", r"/sandbox/registrations", RestApi.post_registration, "tenant"),
    ("POST", rf"/sandbox/registrations/{_ID}/accept", RestApi.accept_registration, "tenant"),
    ("POST", r"/devicecontrol/deviceCredentials", RestApi.device_credentials, "bootstrap"),
    ("POST", r"/\.well-known/est/simpleenroll", RestApi.est_simpleenroll, False),
    ("POST", r"/\.well-known/est/simplereenroll", RestApi.est_simplereenroll, False),
    ("GET", r"/openapi\.json", RestApi.openapi, False),
    ("POST", r"/sandbox/misbehave", RestApi.post_misbehave, "tenant"),
    ("GET", r"/identity/externalIds/(?P<type>[^/]+)/(?P<xid>[^/]+)", RestApi.get_external_id, True),
    ("DELETE", r"/identity/externalIds/(?P<type>[^/]+)/(?P<xid>[^/]+)",
     RestApi.delete_external_id, True),
    ("GET", rf"/identity/globalIds/{_ID}/externalIds", RestApi.list_external_ids, True),
    ("POST", rf"/identity/globalIds/{_ID}/externalIds", RestApi.post_external_id, True),
    ("GET", r"/inventory/managedObjects", RestApi.list_managed_objects, True),
    ("POST", r"/inventory/managedObjects", RestApi.post_managed_object, True),
    ("GET", rf"/inventory/managedObjects/{_ID}", RestApi.get_managed_object, True),
    ("PUT", rf"/inventory/managedObjects/{_ID}", RestApi.put_managed_object, True),
    ("GET", rf"/inventory/managedObjects/{_ID}/childDevices", RestApi.list_child_devices, True),
    ("POST", rf"/inventory/managedObjects/{_ID}/childDevices", RestApi.post_child_device, True),
    ("GET", r"/event/events", RestApi.list_events, True),
    ("POST", r"/event/events", RestApi.post_event, True),
    ("GET", rf"/event/events/{_ID}", RestApi.get_event, True),
    ("GET", r"/alarm/alarms", RestApi.list_alarms, True),
    ("POST", r"/alarm/alarms", RestApi.post_alarm, True),
    ("PUT", rf"/alarm/alarms/{_ID}", RestApi.put_alarm, True),
    ("GET", r"/measurement/measurements", RestApi.list_measurements, True),
    ("GET", r"/devicecontrol/operations", RestApi.list_operations, True),
    ("POST", r"/devicecontrol/operations", RestApi.post_operation, True),
    ("GET", rf"/devicecontrol/operations/{_ID}", RestApi.get_operation, True),
    ("GET", r"/sandbox/emails", RestApi.list_emails, False),
    ("GET", r"/service/smartrule/smartrules", RestApi.list_smart_rules, True),
    ("POST", r"/service/smartrule/smartrules", RestApi.post_smart_rule, True),
    ("GET", rf"/service/smartrule/smartrules/{_ID}", RestApi.get_smart_rule, True),
    ("PUT", rf"/service/smartrule/smartrules/{_ID}", RestApi.put_smart_rule, True),
    ("DELETE", rf"/service/smartrule/smartrules/{_ID}", RestApi.delete_smart_rule, True),
    ("GET", r"/service/smartrule/managedObjects/(?P<mo>[^/]+)/smartrules",
     RestApi.list_smart_rules, True),
    ("POST", r"/service/smartrule/managedObjects/(?P<mo>[^/]+)/smartrules",
     RestApi.post_smart_rule, True),
]
