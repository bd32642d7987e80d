"""SmartREST 2.0 custom template collections, as the sandbox keeps and applies them (pure).

A collection is created once with `s/ut/<X-ID>` (one message holding every `10,...` request and
`11,...` response template) and can no longer be changed over MQTT; an empty publish on the same
topic asks whether it exists (`20,<X-ID>,<id>` or `41,<X-ID>` on `s/dt`). Response templates are
applied to every operation: `<msgId>,<device external id>,<values at the patterns>` on
`s/dc/<X-ID>` when the operation holds the template's condition path. Sources: Cumulocity's
`smartrest-two.md` (formats, examples) and `built-in-messages.md` (the `41` texts); docs/sandbox.md
lists what is verified and what is not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dashkanban.c8y.smartrest import SmartRestLine, encode_line

# How Cumulocity keeps a collection: a managed object of this type, with the templates in this
# fragment and the X-ID as an external id of this type (go-c8y's smartresttemplates service,
# the UI's c8ySmartRestTemplates).
COLLECTION_TYPE = "c8y_SmartRest2Template"
COLLECTION_FRAGMENT = "com_cumulocity_model_smartrest_csv_CsvSmartRestTemplate"
COLLECTION_ID_TYPE = "c8y_SmartRest2DeviceIdentifier"

REQUEST = "10"
RESPONSE = "11"

# Error texts of template creation (built-in-messages.md, all with code 41).
ALREADY_EXISTS = "Cannot create templates for already existing template object"
DUPLICATE_ID = "Duplicate message identifiers are not allowed"
BAD_REQUEST = "Bad request template definition"
BAD_RESPONSE = "Bad response template definition"
NOT_A_TEMPLATE = "Not a valid message identifier for template creation"
INVALID_PATH = "Invalid JsonPath"
NO_FILTERS = "Using Filters (?) in JsonPath is not allowed for SmartRest"

# Which method each API accepts (smartrest-two.md, "Supported templates").
_METHODS = {
    "INVENTORY": ("GET", "POST", "PUT"),
    "ALARM": ("POST", "PUT"),
    "EVENT": ("POST",),
    "MEASUREMENT": ("POST",),
    "OPERATION": ("PUT",),
}

# A JsonPath subset: `$`, `.key`, `[*]`, `[n]`, `['key']`; keys as fragment names are written.
_TOKEN = re.compile(r"\.?([A-Za-z0-9_@#:-]+)|\[\*\]|\[(\d+)\]|\['([^']*)'\]")
_WILDCARD = object()


class TemplateDefinitionError(Exception):
    """A template line the platform refuses: `41,<id>,<message>` on `s/e`."""

    def __init__(self, template: str, message: str) -> None:
        super().__init__(message)
        self.template = template
        self.message = message

    @property
    def line(self) -> str:
        return f"41,{self.template},{self.message}"


@dataclass(frozen=True, slots=True)
class ResponseTemplate:
    """`11,<msgId>,<base>,<condition>,<pattern>...`."""

    msg_id: str
    base: str
    condition: str
    patterns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """`10,<msgId>,<method>,<api>,<response>,...`: kept, not executed (no `s/uc` here)."""

    msg_id: str
    method: str
    api: str
    response: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Collection:
    xid: str
    requests: tuple[RequestTemplate, ...]
    responses: tuple[ResponseTemplate, ...]

    def fragment(self) -> dict[str, Any]:
        """The stored form ([UNVERIFIED] field names beyond msgId, base, condition, pattern)."""
        return {
            "requestTemplates": [
                {"msgId": r.msg_id, "method": r.method, "api": r.api, "response": r.response,
                 "values": list(r.values)} for r in self.requests
            ],
            "responseTemplates": [
                {"msgId": r.msg_id, "base": r.base, "condition": r.condition,
                 "pattern": list(r.patterns)} for r in self.responses
            ],
        }

    @classmethod
    def from_fragment(cls, xid: str, fragment: dict[str, Any]) -> Collection:
        requests = tuple(
            RequestTemplate(str(r["msgId"]), str(r["method"]), str(r["api"]),
                            str(r.get("response", "")), tuple(r.get("values", ())))
            for r in fragment.get("requestTemplates", ())
        )
        responses = tuple(
            ResponseTemplate(str(r["msgId"]), str(r.get("base", "")),
                             str(r.get("condition", "")), tuple(r.get("pattern", ())))
            for r in fragment.get("responseTemplates", ())
        )
        return cls(xid, requests, responses)


def parse_collection(xid: str, lines: Sequence[SmartRestLine]) -> tuple[
    Collection | None, list[TemplateDefinitionError]
]:
    """Template lines -> the collection, or None and every error (nothing is created then:
    a collection comes in one message, smartrest-two.md)."""
    errors: list[TemplateDefinitionError] = []
    requests: list[RequestTemplate] = []
    responses: list[ResponseTemplate] = []
    for line in lines:
        try:
            if line.template == REQUEST:
                requests.append(_request(line))
            elif line.template == RESPONSE:
                responses.append(_response(line))
            else:
                raise TemplateDefinitionError(line.template, NOT_A_TEMPLATE)
        except TemplateDefinitionError as exc:
            errors.append(exc)
    for kind, ids in ((REQUEST, [r.msg_id for r in requests]),
                      (RESPONSE, [r.msg_id for r in responses])):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        errors.extend(TemplateDefinitionError(kind, DUPLICATE_ID) for _ in duplicates)
    if errors or not (requests or responses):
        return None, errors
    return Collection(xid, tuple(requests), tuple(responses)), []


def _request(line: SmartRestLine) -> RequestTemplate:
    fields = list(line.fields)
    if len(fields) < 3:
        raise TemplateDefinitionError(REQUEST, BAD_REQUEST)
    msg_id, method, api = (f.strip() for f in fields[:3])
    response = fields[3].strip().lower() if len(fields) > 3 else ""
    if (not msg_id or api not in _METHODS or method not in _METHODS[api]
            or response not in ("", "true", "false")):
        raise TemplateDefinitionError(REQUEST, BAD_REQUEST)
    return RequestTemplate(msg_id, method, api, response, tuple(fields[4:]))


def _response(line: SmartRestLine) -> ResponseTemplate:
    fields = list(line.fields)
    while fields and fields[-1] == "":  # trailing commas, as in `11,1003,...,connectionKey,`
        fields.pop()
    if len(fields) < 4 or not fields[0].strip():
        raise TemplateDefinitionError(RESPONSE, BAD_RESPONSE)
    msg_id, base, condition, *patterns = (f.strip() for f in fields)
    if not all(patterns):
        raise TemplateDefinitionError(RESPONSE, BAD_RESPONSE)
    for path in (base, condition, *patterns):
        if path:
            _tokens(path)
    return ResponseTemplate(msg_id, base, condition, tuple(patterns))


def _tokens(path: str) -> list[object]:
    """`$.a.b[*]` -> ["a", "b", _WILDCARD]; raises the 41 error of a path it cannot take."""
    if "?" in path:
        raise TemplateDefinitionError(RESPONSE, NO_FILTERS)
    text = path[1:] if path.startswith("$") else path
    tokens: list[object] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or (match.group(0).startswith(".") and position == 0 and path[0] != "$"):
            raise TemplateDefinitionError(RESPONSE, INVALID_PATH)
        if match.group(1) is not None:
            tokens.append(match.group(1))
        elif match.group(2) is not None:
            tokens.append(int(match.group(2)))
        elif match.group(3) is not None:
            tokens.append(match.group(3))
        else:
            tokens.append(_WILDCARD)
        position = match.end()
    return tokens


def resolve(doc: Any, path: str) -> list[Any]:
    """The values at a path; `[*]` gives one value per list item; [] when nothing is there."""
    current = [doc]
    for token in _tokens(path):
        following: list[Any] = []
        for value in current:
            if token is _WILDCARD:
                if isinstance(value, list):
                    following.extend(value)
            elif isinstance(token, int):
                if isinstance(value, list) and token < len(value):
                    following.append(value[token])
            elif isinstance(value, dict) and token in value:
                following.append(value[token])
        current = following
    return current


def _join(base: str, pattern: str) -> str:
    """The base is a JsonPath prefix of every pattern (smartrest-two.md)."""
    if not base:
        return pattern
    tail = pattern[1:] if pattern.startswith("$") else pattern
    return base + (tail if tail.startswith(("[", ".")) or not tail else "." + tail)


def _text(value: Any) -> str:
    # [UNVERIFIED] how the platform prints non-string values; JSON is the natural reading.
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def response_lines(collection: Collection, op: dict[str, Any], device_xid: str) -> list[str]:
    """Every response template whose condition exists in the operation, in template order.

    `<msgId>,<device external id>,<values>`; a pattern that does not resolve gives an empty
    field and a `[*]` pattern one field per list item (smartrest-two.md, "Parsing custom
    operations": `111,myMqttTestDevice,1,2,a,b,c` and `333,myMqttTestDevice,,,`). The condition
    is read from the whole operation, not under the base (template 111 of that example has the
    base `c8y_CustomConfiguration` and the condition `deviceId`).
    """
    lines = []
    for template in collection.responses:
        if template.condition and not resolve(op, template.condition):
            continue
        values: list[str] = []
        for pattern in template.patterns:
            found = resolve(op, _join(template.base, pattern))
            if found:
                values.extend(_text(v) for v in found)
            else:
                values.append("")
        lines.append(encode_line(template.msg_id, device_xid, *values))
    return lines
