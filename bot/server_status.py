"""The servers' ``/status`` (the daemon's HTTP port) before and after a run.

``--status-url http://HOST:HTTP_PORT/status`` (repeatable; for ``streams`` it defaults
to the ``--metrics-url`` with ``/metrics`` replaced by ``/status``). A URL that cannot
be read does not stop the run: its snapshot is ``{"error": ...}`` and a note says so.
Without a URL the report says that no snapshot was taken.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThreadPool

TIMEOUT_S = 5.0
NO_URL_NOTE = "no --status-url: the servers' /status was not read"


def fetch_text(url: str, timeout: float = TIMEOUT_S) -> str:
    """GET ``url`` (blocking: call it in a thread); the body as text."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text: str = response.read().decode()
    return text


def status_urls(args: argparse.Namespace) -> list[str]:
    """The /status URLs of the run: ``--status-url``, or derived from ``--metrics-url``."""
    urls = list(getattr(args, "status_url", None) or [])
    metrics = getattr(args, "metrics_url", None)
    if not urls and metrics and metrics.rstrip("/").endswith("/metrics"):
        urls.append(metrics.rstrip("/").removesuffix("/metrics") + "/status")
    return urls


def _read(url: str) -> dict[str, Any]:
    try:
        data = json.loads(fetch_text(url))
    except (OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return data if isinstance(data, dict) else {"error": "not a JSON object"}


@inlineCallbacks
def snapshot(reactor: Any, urls: list[str]) -> Any:
    """Fires with {url: the parsed /status, or {"error": reason}}."""
    pool = reactor.getThreadPool()
    out: dict[str, Any] = {}
    for url in urls:
        out[url] = yield deferToThreadPool(reactor, pool, _read, url)
    return out


def status_report(
    urls: list[str], before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, Any]:
    """The report's ``server_status``: the URLs, both snapshots and a note."""
    if not urls:
        return {"urls": [], "before": None, "after": None, "note": NO_URL_NOTE}
    failed = sorted(
        url for snap in (before or {}, after or {}) for url, v in snap.items() if "error" in v
    )
    note = (
        f"could not read {', '.join(dict.fromkeys(failed))}"
        if failed
        else "read before and after the run"
    )
    return {"urls": urls, "before": before, "after": after, "note": note}
