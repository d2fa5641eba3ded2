"""Request bodies as schemas: one declaration validates input and documents the API.

Every endpoint that takes a body declares it here (a JSON Schema subset:
object, string/integer/boolean properties and lists of strings, lengths,
ranges, patterns, required, no other keys). `read_body` enforces it - JSON,
every property - and answers 422 with every problem listed; `openapi` turns
the same declarations into the OpenAPI 3.1 document served at /openapi.json.
(The size of a body is limited while it is read, before this:
securecore.server.body_limit.)

A body is JSON as RFC 8259 and I-JSON (RFC 7493) have it, or it is refused
before anything acts on it: UTF-8 without a byte order mark (400), no NaN or
Infinity and no number beyond a double (400), no duplicate keys, no lone
UTF-16 surrogate in any string (no character, it cannot be stored or
recorded), at most MAX_DEPTH levels of nesting (422, naming where).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from securecore.errors import SecureCoreError
from securecore.server.errors import CODES, error_response

MAX_DEPTH = 32
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins the pairs
BOM = b"\xef\xbb\xbf"


class BodyRefused(SecureCoreError, ValueError):  # noqa: N818 - a refusal, answered 400 or 422
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyRefused(422, f"{key!r}: a key given twice in one object")
            seen.add(key)
    return data


def _no_constant(name: str) -> Any:
    raise BodyRefused(400, f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise BodyRefused(400, f"the number {text[:40]} is out of range (not a double)")
    return number


def _where(path: str) -> str:
    """PATH (a.b[0]) for a message; a long one by its start (the property it is in)."""
    return (path if len(path) <= 80 else path[:77] + "...") or "the body"


def _check_strings_and_depth(data: Any) -> None:
    """Every key and string a character string, no deeper than MAX_DEPTH (no recursion)."""
    pending: list[tuple[Any, str, int]] = [(data, "", 0)]
    while pending:
        value, path, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise BodyRefused(422, f"{_where(path)}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            found = LONE_SURROGATE.search(value)
            if found:
                code = f"\\u{ord(found[0]):04x}"
                raise BodyRefused(
                    422, f"{_where(path)}: a lone UTF-16 surrogate ({code}) is not a character"
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if LONE_SURROGATE.search(key):
                    shown = where.encode("utf-8", "backslashreplace").decode()
                    raise BodyRefused(422, f"{_where(shown)}: a key with a lone UTF-16 surrogate")
                pending.append((item, where, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))


def parse_json(raw: bytes) -> Any:
    """RAW as strict JSON (see the module's doc); raises BodyRefused naming the problem."""
    if raw.startswith(BOM):
        raise BodyRefused(400, "the body starts with a byte order mark: JSON is UTF-8 without one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyRefused(400, f"the body is not UTF-8 (byte {error.start})") from None
    try:
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite,
        )
    except BodyRefused:
        raise
    except RecursionError:
        raise BodyRefused(422, f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as error:
        raise BodyRefused(400, f"the body is not JSON: {error}") from None
    except ValueError:  # what int() refuses: more digits than sys.get_int_max_str_digits()
        raise BodyRefused(400, "the body has an integer of too many digits") from None
    _check_strings_and_depth(data)
    return data


def string(
    max_length: int = 256, min_length: int = 1, description: str = "", pattern: str = ""
) -> dict:
    """A string property; PATTERN (a regular expression, searched) if given."""
    rule = {
        "type": "string",
        "minLength": min_length,
        "maxLength": max_length,
        "description": description,
    }
    return {**rule, "pattern": pattern} if pattern else rule


def integer(minimum: int, maximum: int, description: str = "") -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description}


def boolean(description: str = "") -> dict:
    return {"type": "boolean", "description": description}


def strings(item: dict, max_items: int, description: str = "") -> dict:
    """A list of up to MAX_ITEMS strings, each as ITEM (a `string` rule), none twice."""
    return {
        "type": "array",
        "items": item,
        "maxItems": max_items,
        "uniqueItems": True,
        "description": description,
    }


def _ecma_end(pattern: str) -> str:
    """PATTERN with a final `$` as JSON Schema means it (ECMA-262: the end of the string),
    not as Python's re does (the end, or before a final newline, which would let "high\n"
    through as a severity)."""
    return (
        pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
    )


def _string_problem(key: str, rule: dict, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{key}: must be a string"
    if not rule["minLength"] <= len(value) <= rule["maxLength"]:
        return f"{key}: length {rule['minLength']}-{rule['maxLength']}"
    if "pattern" in rule and not re.search(_ecma_end(rule["pattern"]), value):
        return f"{key}: must match {rule['pattern']}"
    return None


def body(required: dict[str, dict] | None = None, optional: dict[str, dict] | None = None) -> dict:
    required, optional = required or {}, optional or {}
    return {
        "type": "object",
        "properties": {**required, **optional},
        "required": sorted(required),
        "additionalProperties": False,
    }


def problems(schema: dict, data: Any) -> list[str]:
    if not isinstance(data, dict):
        return ["the body must be a JSON object"]
    found = []
    for key in sorted(set(data) - set(schema["properties"])):
        found.append(f"{key}: unknown property")
    for key in schema["required"]:
        if key not in data:
            found.append(f"{key}: required")
    for key, rule in schema["properties"].items():
        if key not in data:
            continue
        value = data[key]
        if rule["type"] == "string":
            problem = _string_problem(key, rule, value)
            if problem:
                found.append(problem)
        elif rule["type"] == "boolean":
            if not isinstance(value, bool):
                found.append(f"{key}: must be true or false")
        elif rule["type"] == "array":
            if not isinstance(value, list):
                found.append(f"{key}: must be a list")
            elif len(value) > rule["maxItems"]:
                found.append(f"{key}: at most {rule['maxItems']} items")
            elif len(set(map(repr, value))) != len(value):
                found.append(f"{key}: an item is given twice")
            else:
                found += filter(
                    None,
                    (_string_problem(f"{key}[{i}]", rule["items"], v) for i, v in enumerate(value)),
                )
        elif rule["type"] == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                found.append(f"{key}: must be an integer")
            elif not rule["minimum"] <= value <= rule["maximum"]:
                found.append(f"{key}: {rule['minimum']}-{rule['maximum']}")
    return found


async def read_body(request: Request, schema: dict) -> tuple[dict[str, Any], JSONResponse | None]:
    """The body's JSON object and None, or an empty one and the refusal to answer."""
    raw = await request.body()  # no longer than the route's limit (BodyLimitMiddleware)
    try:
        data = parse_json(raw or b"{}")
    except BodyRefused as refused:
        return {}, error_response(refused.status, str(refused))
    found = problems(schema, data)
    if found:
        return {}, error_response(422, "; ".join(found))
    return data, None


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    body: dict | None = None
    statuses: tuple[int, ...] = (200,)
    tags: tuple[str, ...] = field(default_factory=tuple)
    query: dict[str, dict] = field(default_factory=dict)  # optional query parameters
    # Path parameters' schemas where more than "a string" is known (a pattern).
    path_parameters: dict[str, dict] = field(default_factory=dict)


ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def openapi(endpoints: list[Endpoint], version: str) -> dict:
    paths: dict[str, dict] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "tags": list(endpoint.tags),
            "responses": {
                str(status): {"description": "success" if status < 400 else CODES.get(status, "")}
                for status in endpoint.statuses
            },
        }
        error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for status, code in CODES.items():
            if status >= 400:
                operation["responses"].setdefault(
                    str(status), {"description": code, "content": error_content}
                )
        # Every {name} of the path is a string parameter; the query's are optional.
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": endpoint.path_parameters.get(name, {"type": "string"}),
            }
            for name in re.findall(r"\{([^/{}]+)\}", endpoint.path)
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in endpoint.query.items()
        ]
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": endpoint.body}},
            }
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "SecureCore core service", "version": version},
        "security": [{"mutualTLS": []}],
        "components": {
            "securitySchemes": {"mutualTLS": {"type": "mutualTLS"}},
            "schemas": {"Error": ERROR},
        },
        "paths": paths,
    }
