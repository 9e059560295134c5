"""A small Twisted web front: routes of callables answering (status, content type, body).

A route answers an HttpResponse, or a Deferred firing with one. GET routes take no
argument; POST routes take the :class:`HttpRequest` (client address and body).

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


@dataclass(frozen=True)
class HttpRequest:
    """What a POST route gets: the client's address and the request body."""

    client_host: str
    body: bytes


Route = Callable[[], "HttpResponse | Deferred[HttpResponse]"]
PostRoute = Callable[[HttpRequest], "HttpResponse | Deferred[HttpResponse]"]
MAX_POST_BYTES = 65_536


class _RouteResource(Resource):
    isLeaf = True

    def __init__(self, route: Route | None, post: PostRoute | None = None) -> None:
        super().__init__()
        self._route = route
        self._post = post

    def render_GET(self, request: Request) -> bytes | int:
        if self._route is None:
            return self._not_allowed(request, "POST")
        return self._answer(request, self._route())

    def render_POST(self, request: Request) -> bytes | int:
        if self._post is None:
            return self._not_allowed(request, "GET")
        content = request.content
        body = content.read(MAX_POST_BYTES + 1) if content is not None else b""
        if len(body) > MAX_POST_BYTES:
            too_large = {"error": f"request body larger than {MAX_POST_BYTES} bytes"}
            return self._render(request, HttpResponse.json(413, too_large))
        client = request.getClientAddress()
        return self._answer(request, self._post(HttpRequest(getattr(client, "host", ""), body)))

    def _not_allowed(self, request: Request, allowed: str) -> bytes:
        request.setHeader(b"allow", allowed.encode())
        method = request.method.decode("ascii", "replace")
        answer = HttpResponse.json(405, {"error": f"{method} not allowed; use {allowed}"})
        return self._render(request, answer)

    def _answer(
        self, request: Request, response: HttpResponse | Deferred[HttpResponse]
    ) -> bytes | int:
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
    def __init__(
        self, routes: Mapping[str, Route], post_routes: Mapping[str, PostRoute] | None = None
    ) -> None:
        super().__init__()
        post_routes = post_routes or {}
        self._paths = sorted({*routes, *post_routes})
        for path in self._paths:
            self._put(path, _RouteResource(routes.get(path), post_routes.get(path)))

    def _put(self, path: str, resource: Resource) -> None:
        """Place ``resource`` at ``path`` (``/a/b`` nests under a plain ``a`` node)."""
        parts = path.strip("/").encode().split(b"/")
        node: Resource = self
        for part in parts[:-1]:
            child = node.children.get(part)
            if child is None:
                child = _Branch()
                node.putChild(part, child)
            node = child
        node.putChild(parts[-1], resource)

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"":
            return self  # "/" lists the endpoints
        return _RouteResource(
            lambda: HttpResponse.json(404, {"error": "not found", "endpoints": self._paths})
        )

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"endpoints": self._paths}).encode() + b"\n"


class _Branch(Resource):
    """An inner path segment (``/admin`` of ``/admin/load``): 404 for anything unknown."""

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return _RouteResource(lambda: HttpResponse.json(404, {"error": "not found"}))

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "not found"}\n'


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


def make_site(
    routes: Mapping[str, Route],
    access_log: bool = False,
    post_routes: Mapping[str, PostRoute] | None = None,
) -> Site:
    """A Site serving each route on GET and each post route on POST; access logging only
    when ``access_log`` is set."""
    site = Site(_Root(routes, post_routes))
    site.noisy = False
    site.log = log_access if access_log else lambda request: None  # type: ignore[method-assign]
    return site
