"""A small Twisted web front: routes of callables answering (status, content type, body).

Generic plumbing only; the application (aiServer/ops_http.py) supplies the routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


@dataclass(frozen=True)
class HttpResponse:
    """What a route answers."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, status: int, document: Any) -> HttpResponse:
        """A JSON response."""
        return cls(status, "application/json", json.dumps(document, indent=1).encode() + b"\n")


Route = Callable[[], HttpResponse]


class _RouteResource(Resource):
    isLeaf = True

    def __init__(self, route: Route) -> None:
        super().__init__()
        self._route = route

    def render_GET(self, request: Request) -> bytes:
        response = self._route()
        request.setResponseCode(response.status)
        request.setHeader(b"content-type", response.content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return response.body


class _Root(Resource):
    def __init__(self, routes: Mapping[str, Route]) -> None:
        super().__init__()
        self._paths = sorted(routes)
        for path, route in routes.items():
            self.putChild(path.strip("/").encode(), _RouteResource(route))

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"endpoints": self._paths}).encode() + b"\n"


def make_site(routes: Mapping[str, Route]) -> Site:
    """A Site serving each route on GET; access logging off (the hot path is elsewhere)."""
    site = Site(_Root(routes))
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
