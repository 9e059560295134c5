"""A small Twisted web front: routes of callables answering (status, content type, body).

A route answers an HttpResponse, or a Deferred firing with one.

Generic plumbing only; the application (aiServer/ops_http.py) supplies the routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

log = Logger()


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


Route = Callable[[], "HttpResponse | Deferred[HttpResponse]"]


class _RouteResource(Resource):
    isLeaf = True

    def __init__(self, route: Route) -> None:
        super().__init__()
        self._route = route

    def render_GET(self, request: Request) -> bytes | int:
        response = self._route()
        if isinstance(response, HttpResponse):
            return self._render(request, response)
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def write(answer: HttpResponse) -> None:
            if not finished:  # the client may have gone while the answer was computed
                request.write(self._render(request, answer))
                request.finish()

        def fail(failure: Failure) -> None:
            log.failure("HTTP route {path} failed", failure, path=request.path)
            write(HttpResponse.json(500, {"error": str(failure.value)}))

        response.addCallback(write).addErrback(fail)
        return NOT_DONE_YET

    @staticmethod
    def _render(request: Request, response: HttpResponse) -> bytes:
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

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"":
            return self  # "/" lists the endpoints
        return _RouteResource(
            lambda: HttpResponse.json(404, {"error": "not found", "endpoints": self._paths})
        )

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"endpoints": self._paths}).encode() + b"\n"


_access = Logger(namespace="http.access")


def log_access(request: http.Request) -> None:
    """One structured info event for a finished request (method, path, status, client)."""
    client = request.getClientAddress()
    _access.info(
        "{method} {path} {status} from {client}",
        method=request.method.decode("ascii", "replace"),
        path=request.uri.decode("ascii", "replace"),
        status=request.code,
        client=getattr(client, "host", str(client)),
    )


def make_site(routes: Mapping[str, Route], access_log: bool = False) -> Site:
    """A Site serving each route on GET; access logging only when ``access_log`` is set."""
    site = Site(_Root(routes))
    site.noisy = False
    site.log = log_access if access_log else lambda request: None  # type: ignore[method-assign]
    return site
