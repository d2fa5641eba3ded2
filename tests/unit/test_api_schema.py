"""The API's declared bodies: validation, and the OpenAPI document built from them."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from securecore.server import admin_routes, session_routes
from securecore.server.admin_routes import BLOCK, AdminActions
from securecore.server.api_schema import BodyRefused, parse_json, problems
from securecore.server.app import BASE_ENDPOINTS, create_app
from securecore.sessions.manager import SessionManager
from tests.support.keyrings import software_ring


def test_every_property_is_checked_and_every_problem_listed() -> None:
    assert problems(BLOCK, {"address": "10.0.0.1", "minutes": 5}) == []
    assert problems(BLOCK, {"address": 7, "minutes": "5", "extra": 1}) == [
        "extra: unknown property",
        "address: must be a string",
        "minutes: must be an integer",
    ]
    assert problems(BLOCK, {"minutes": 0}) == ["address: required", "minutes: 1-525600"]
    assert problems(BLOCK, {"address": "", "minutes": True}) == [
        "address: length 1-45",
        "minutes: must be an integer",
    ]
    assert problems(BLOCK, ["not", "an", "object"]) == ["the body must be a JSON object"]


def test_the_openapi_document_matches_the_routes(tmp_path) -> None:
    actions = AdminActions(
        audit=None, sessions=None, policy_state=None, registry=None, snapshot=None, status=dict
    )
    sessions = SessionManager(software_ring(tmp_path), tmp_path / "sessions.db")
    app = create_app(trust_domain="securecore", sessions=sessions, admin=actions)
    declared = {
        (e.method, e.path)
        for e in [*BASE_ENDPOINTS, *session_routes.ENDPOINTS, *admin_routes.ENDPOINTS]
    }
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path not in ("/openapi.json",)
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert served - declared == set(), "undocumented endpoints"
    assert {path for _, path in declared} >= {"/v1/sessions/refresh", "/v1/admin/acl/block"}
    bodies = {(e.method, e.path) for e in admin_routes.ENDPOINTS if e.body is not None}
    assert ("POST", "/v1/admin/acl/block") in bodies


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b'{"name": "\\ud800"}', 422, "name: a lone UTF-16 surrogate (\\ud800) is not a character"),
        (b'{"a": {"\\udc00": 1}}', 422, "a.\\udc00: a key with a lone UTF-16 surrogate"),
        (b'{"a": 1, "a": 2}', 422, "'a': a key given twice in one object"),
        (b'{"a": NaN}', 400, "NaN is not a JSON number"),
        (b'{"a": -Infinity}', 400, "-Infinity is not a JSON number"),
        (b'{"a": 1e400}', 400, "the number 1e400 is out of range"),
        (b'{"a": 1' + b"0" * 5000 + b"}", 400, "an integer of too many digits"),
        (b"\xef\xbb\xbf{}", 400, "byte order mark"),
        ('{"a": 1}'.encode("utf-16"), 400, "not UTF-8 (byte 0)"),
        (b'{"a": "\xed\xa0\x80"}', 400, "not UTF-8 (byte 7)"),
        (b"[" * 5000, 422, "nested deeper than 32 levels"),
        (b'{"args": ' + b"[" * 40 + b"]" * 40 + b"}", 422, "args[0][0]"),
        (b'{"a": ', 400, "the body is not JSON: Expecting value"),
    ],
)
def test_bodies_are_strict_json(raw: bytes, status: int, message: str) -> None:
    with pytest.raises(BodyRefused) as refused:
        parse_json(raw)
    assert refused.value.status == status
    assert message in str(refused.value)


def test_strict_json_keeps_what_json_allows() -> None:
    assert parse_json(b'{"a": "\\ud83d\\ude00", "b": [1, 2.5, null, true], "c": "\\u00e9"}') == {
        "a": "😀",
        "b": [1, 2.5, None, True],
        "c": "é",
    }


def test_booleans_and_lists_of_strings_are_checked_item_by_item() -> None:
    from securecore.server.api_schema import body, boolean, string, strings

    schema = body({"passed": boolean()}, {"hosts": strings(string(8, pattern=r"^[a-z-]+$"), 2)})
    assert problems(schema, {"passed": True, "hosts": ["core-a"]}) == []
    assert problems(schema, {"passed": 1, "hosts": "core-a"}) == [
        "passed: must be true or false",
        "hosts: must be a list",
    ]
    assert problems(schema, {"passed": False, "hosts": ["a", "b", "c"]}) == [
        "hosts: at most 2 items"
    ]
    assert problems(schema, {"passed": False, "hosts": ["a", "a"]}) == [
        "hosts: an item is given twice"
    ]
    assert problems(schema, {"passed": False, "hosts": ["ok", "No/"]}) == [
        "hosts[1]: must match ^[a-z-]+$"
    ]
    assert problems(schema, {"passed": False, "hosts": [7]}) == ["hosts[0]: must be a string"]
    # "$" ends the string, as in JSON Schema: no newline after it.
    assert problems(schema, {"passed": False, "hosts": ["core\n"]}) == [
        "hosts[0]: must match ^[a-z-]+$"
    ]
