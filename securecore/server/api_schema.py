"""Request bodies as schemas: one declaration validates input and documents the API.

Every endpoint that takes a body declares it here (a JSON Schema subset:
object, string/integer properties, lengths, ranges, required, no other
keys). `read_body` enforces it - size, JSON, every property - and answers
422 with every problem listed; `openapi` turns the same declarations into the
OpenAPI 3.1 document served at /openapi.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from securecore.server.errors import CODES, error_response

MAX_BODY = 4096


def string(max_length: int = 256, min_length: int = 1, description: str = "") -> dict:
    return {"type": "string", "minLength": min_length, "maxLength": max_length,
            "description": description}  # fmt: skip


def integer(minimum: int, maximum: int, description: str = "") -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description}


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
            if not isinstance(value, str):
                found.append(f"{key}: must be a string")
            elif not rule["minLength"] <= len(value) <= rule["maxLength"]:
                found.append(f"{key}: length {rule['minLength']}-{rule['maxLength']}")
        elif rule["type"] == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                found.append(f"{key}: must be an integer")
            elif not rule["minimum"] <= value <= rule["maximum"]:
                found.append(f"{key}: {rule['minimum']}-{rule['maximum']}")
    return found


async def read_body(request: Request, schema: dict) -> tuple[dict | None, JSONResponse | None]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        return None, error_response(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return None, error_response(400, "the body is not JSON")
    found = problems(schema, data)
    if found:
        return None, error_response(422, "; ".join(found))
    return data, None


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    body: dict | None = None
    statuses: tuple[int, ...] = (200,)
    tags: tuple[str, ...] = field(default_factory=tuple)


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
