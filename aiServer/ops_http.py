"""The HTTP side door's routes: /healthz, /readyz, /metrics, /models, /status."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from aiServer.facade import AIFacade
from netlib.http_server import HttpResponse, Route


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
