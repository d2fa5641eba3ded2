"""The API's declared bodies: validation, and the OpenAPI document built from them."""

from __future__ import annotations

from starlette.routing import Route

from securecore.server import admin_routes, session_routes
from securecore.server.admin_routes import BLOCK, AdminActions
from securecore.server.api_schema import problems
from securecore.server.app import BASE_ENDPOINTS, create_app
from securecore.sessions.manager import SessionManager
from tests.keyrings import software_ring


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
    actions = AdminActions(audit=None, sessions=None, policy_state=None, registry=None,
                           snapshot=None, status=dict)  # fmt: skip
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
