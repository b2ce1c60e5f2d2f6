"""The gateway's routes come first in the app's routes (the router tries them in order, and
gateway calls are the most frequent requests): moving them there changes which route answers
a request only if another route also answers a gateway path and method, which this forbids."""

from __future__ import annotations

from starlette.routing import Match, Route
from starlette.testclient import TestClient

from control_plane.gateway import api as gateway_api
from control_plane.gateway import responses as gateway_responses


def test_the_gateway_routes_come_first_and_no_other_route_answers_them(
        client: TestClient) -> None:
    gateway = [*gateway_api.routes, *gateway_responses.routes]
    routes = client.app.routes  # type: ignore[attr-defined]
    assert routes[:len(gateway)] == gateway
    others = routes[len(gateway):]
    checked = 0
    for route in gateway:
        assert isinstance(route, Route)
        for method in sorted(route.methods or ()):
            path = route.path
            scope = {"type": "http", "method": method, "path": path, "root_path": "",
                     "headers": []}
            assert route.matches(scope)[0] == Match.FULL, (method, path)
            answering = [other for other in others if other.matches(scope)[0] == Match.FULL]
            assert answering == [], (method, path, answering)
            checked += 1
    assert checked >= 6
