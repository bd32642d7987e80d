"""The REST side of the sandbox: the subset of Cumulocity's API the project uses (notes 3).

Shapes, media types, status codes and error bodies follow the protocol notes; each collection
pages like the platform (`pageSize` default 5, at most 2000). Basic auth `tenant/user:password`
guards the API; the status page (`/`, `/sandbox/state.json`) and `/openapi.json` are open, as the
sandbox binds to loopback (docs/sandbox.md says why).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from dashkanban.sandbox import page
from dashkanban.sandbox.http import Request, Response
from dashkanban.sandbox.store import (
    SEVERITIES,
    ConflictError,
    Doc,
    NotFoundError,
    Store,
    parse_time,
)

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


class RestApi:
    """Request in, response out, on the shared store. `operation_created` tells the broker."""

    def __init__(self, store: Store, username: str, password: str,
                 operation_created: Callable[[Doc], object] | None = None) -> None:
        self.store = store
        self._username = username
        self._password = password
        self.operation_created = operation_created
        # `POST /sandbox/misbehave` (set by the Sandbox): make the broker misbehave on purpose.
        self.misbehave: Callable[[Doc], Doc] | None = None
        self._routes: list[tuple[str, re.Pattern[str], Route, bool]] = [
            (m, re.compile(p), f, auth) for m, p, f, auth in _ROUTES
        ]

    def set_password(self, password: str) -> None:
        """The sandbox's credentials were reloaded (`Sandbox.set_password`)."""
        self._password = password

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
                    self._authenticate(request)
                response = await function(self, request, match)
            except ApiError as exc:
                response = exc.response()
            log.info("%s %s -> %d", request.method, request.path, response.status)
            return response
        if allowed:
            return ApiError(405, "general/methodNotAllowed",
                            f"Method {request.method} is not supported").response()
        return ApiError(404, "general/notFound", f"No resource at {request.path}").response()

    def _authenticate(self, request: Request) -> None:
        header = request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            raise ApiError(401, "security/Unauthorized",
                           "Full authentication is required to access this resource", SECURITY_INFO)
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        ok_user = hmac.compare_digest(user.encode(), self._username.encode())
        ok_password = hmac.compare_digest(password.encode(), self._password.encode())
        if not (ok_user and ok_password):
            # [UNVERIFIED] the exact message for wrong credentials.
            raise ApiError(401, "security/Unauthorized", "Invalid credentials! : Bad credentials",
                           SECURITY_INFO)

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
        # the new object; if not, the body is empty" (http-usage.md, notes 3.1).
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

    # -- page -------------------------------------------------------------------------------
    async def status_page(self, request: Request, match: re.Match[str]) -> Response:
        return Response(200, page.render_html(page.state(self.store)).encode("utf-8"),
                        "text/html; charset=utf-8", (("Cache-Control", "no-store"),))

    async def status_json(self, request: Request, match: re.Match[str]) -> Response:
        return Response(200, _dump(page.state(self.store)), "application/json",
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
    # Larger page sizes are trimmed to 2000 (notes 3.4).
    return min(size, MAX_PAGE_SIZE), current


def _query_time(q: dict[str, str], name: str) -> datetime | None:
    if name not in q:
        return None
    moment = parse_time(q[name], zone_required=False)
    if moment is None:
        # A raw `+` arrives as a space: the caller forgot %2B (notes 3.1).
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


def _validation(missing: list[str]) -> ApiError:
    # The platform's wording for missing mandatory fields (json-via-mqtt.md, notes 2.8).
    return ApiError(422, "undefined/validationError",
                    "Following mandatory fields should be included: " + ",".join(missing))


_ID = r"(?P<id>[^/]+)"
_ROUTES: list[tuple[str, str, Route, bool]] = [
    ("GET", r"/", RestApi.status_page, False),
    ("GET", r"/sandbox/state\.json", RestApi.status_json, False),
    ("GET", r"/openapi\.json", RestApi.openapi, False),
    ("POST", r"/sandbox/misbehave", RestApi.post_misbehave, True),
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
]
