"""The HTTP side door's routes: /healthz, /readyz, /metrics, /models, /status, and the
model admin POSTs /admin/load, /admin/unload, /admin/reload."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from aiServer.facade import AIFacade
from aiServer.model_versions import ADMIN_ACTIONS, VersionManager, admin_error, run_admin
from netlib.http_server import HttpRequest, HttpResponse, PostRoute, Route
from util.errors import ErrorCode, ServiceError


def make_routes(
    facade: AIFacade,
    registry: CollectorRegistry,
    not_ready_reason: Callable[[], str | None],
    status: Callable[[], Mapping[str, object]],
) -> dict[str, Route]:
    """The routes, bound to the running daemon."""

    def healthz() -> HttpResponse:
        return HttpResponse.json(200, {"status": "alive"})

    def readyz() -> HttpResponse:
        reason = not_ready_reason()
        if reason is not None:
            return HttpResponse.json(503, {"ready": False, "reason": reason})
        return HttpResponse.json(200, {"ready": True})

    def metrics() -> HttpResponse:
        return HttpResponse(200, CONTENT_TYPE_LATEST, generate_latest(registry))

    def models() -> HttpResponse:
        return HttpResponse.json(
            200,
            {
                "models": [
                    {
                        "name": d.name,
                        "version": d.version,
                        "description": d.description,
                        "loaded": d.loaded,
                        "default": d.default,
                        "traffic": d.traffic,
                        "input_schema": d.input_schema,
                        "output_schema": d.output_schema,
                    }
                    for d in facade.describe_models()
                ]
            },
        )

    def status_route() -> HttpResponse:
        return HttpResponse.json(200, dict(status()))

    return {
        "/healthz": healthz,
        "/readyz": readyz,
        "/metrics": metrics,
        "/models": models,
        "/status": status_route,
    }


_ADMIN_STATUS = {
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.VERSION_REFUSED: 422,
    ErrorCode.PERMISSION_DENIED: 403,
}


def make_admin_routes(
    versions: VersionManager, enabled: bool, allowed_cidrs: Sequence[str]
) -> dict[str, PostRoute]:
    """POST /admin/load, /admin/unload, /admin/reload with a JSON body {model, version}.

    Only clients inside ``allowed_cidrs`` (admin.http_allowed_cidrs) are served.
    """
    networks = [ipaddress.ip_network(cidr) for cidr in allowed_cidrs]

    def allowed(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in networks)

    def route(action: str) -> PostRoute:
        def post(request: HttpRequest) -> HttpResponse | Deferred[HttpResponse]:
            if not enabled:
                return _admin_error(ErrorCode.PERMISSION_DENIED, "model admin is disabled")
            if not allowed(request.client_host):
                return _admin_error(
                    ErrorCode.PERMISSION_DENIED,
                    f"{request.client_host} is not in admin.http_allowed_cidrs",
                )
            try:
                body = json.loads(request.body or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                model, version = body.get("model", ""), body.get("version", "")
                if isinstance(version, int) and not isinstance(version, bool):
                    version = str(version)
                if not isinstance(model, str) or not isinstance(version, str):
                    raise ValueError("'model' and 'version' must be strings")
            except ValueError as exc:
                return _admin_error(ErrorCode.INVALID_INPUT, f"bad request body: {exc}")
            try:
                d = run_admin(versions, action, model, version)
            except ServiceError as exc:
                return _admin_error(exc.code, exc.message)
            answered = d.addCallback(lambda result: HttpResponse.json(200, asdict(result)))
            return answered.addErrback(_admin_failure)

        return post

    return {f"/admin/{action}": route(action) for action in ADMIN_ACTIONS}


def _admin_failure(failure: Failure) -> HttpResponse:
    error = admin_error(failure.value or RuntimeError(failure.getErrorMessage()))
    return _admin_error(error.code, error.message)


def _admin_error(code: ErrorCode, message: str) -> HttpResponse:
    status = _ADMIN_STATUS.get(code, 500)
    return HttpResponse.json(status, {"error": message, "code": code.name})
