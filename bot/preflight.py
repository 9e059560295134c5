"""Checks made before any load is sent, so that a run that cannot be right never starts.

Each failure is one line and exit code 2 (bot/main.py): an output file whose
directory is missing or not writable, a server process to sample or kill that does
not exist, a model the server does not serve (asked with ListModels), a server
that cannot be reached.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, inlineCallbacks

from bot.client import Session
from bot.commands import (
    Connect,
    Disconnect,
    ListModels,
    RequestSpec,
    ServerRefusedError,
    run_script,
)
from bot.errors import BotRunError
from bot.stats import RunStats
from commonlib.wire import pb

CONNECT_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 10.0


def writable_file_problem(flag: str, path: Path) -> str | None:
    """Why ``path`` cannot be written as ``flag``'s output (None: it can)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"{flag} {path}: is a directory"
    if not parent.is_dir():
        return f"{flag} {path}: no directory {parent}"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{flag} {path}: not writable"
    return None


def _pid_problem(flag: str, pid: int) -> str | None:
    if not Path(f"/proc/{pid}").is_dir():
        return f"{flag} {pid}: no such process"
    return None


def local_problem(args: argparse.Namespace) -> str | None:
    """The first problem with the run's files and processes (None: none)."""
    for flag, path in (("--report", args.report), ("--plot", args.plot), ("--html", args.html)):
        if path is not None and (problem := writable_file_problem(flag, path)):
            return problem
    if args.compare is not None:
        from bot.compare import load_baseline

        _, problem = load_baseline(args.compare, args.scenario)
        if problem is not None:
            return problem
    if args.scenario == "soak":
        if args.pid is not None:
            return _pid_problem("--pid", args.pid)
        from bot.scenarios.soak import read_pid

        try:
            pid = read_pid(args.pid_file)
        except (OSError, ValueError, KeyError) as exc:
            return f"--pid-file {args.pid_file}: no pid in it ({exc})"
        return _pid_problem(f"--pid-file {args.pid_file}: pid", pid)
    if args.scenario == "failover" and args.kill_pid is not None:
        return _pid_problem("--kill-pid", args.kill_pid)
    return None


@inlineCallbacks
def check_models(
    reactor: Any,
    servers: Sequence[tuple[str, int]],
    models: Sequence[str],
    skip_unreachable: bool = False,
) -> Any:
    """Ask every server for its models; fail with BotRunError on one it does not serve.

    ``skip_unreachable`` (failover: a server may be down on purpose) passes over a
    server that refuses the connection; otherwise that fails the run too.
    """
    stats = RunStats(started=reactor.seconds(), live=False)
    for host, port in servers:
        session = Session(reactor, host, port)
        asked = run_script([Connect(CONNECT_TIMEOUT_S), ListModels()], session, stats)
        timer = reactor.callLater(CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S, asked.cancel)
        try:
            _, served = yield asked
        except CancelledError:
            raise BotRunError(
                f"{host}:{port} did not answer ListModels within "
                f"{CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S:g} s"
            ) from None
        except ServerRefusedError as exc:
            raise BotRunError(f"{host}:{port} refused ListModels: {exc}") from None
        except Exception as exc:
            if skip_unreachable:
                continue
            raise BotRunError(f"cannot connect to {host}:{port}: {exc}") from None
        finally:
            if timer.active():
                timer.cancel()
            yield Disconnect(abort=True).execute(session, stats)
        unknown = [model for model in models if model not in served]
        if unknown:
            raise BotRunError(
                f"{host}:{port} does not serve {', '.join(map(repr, unknown))} "
                f"(it serves: {', '.join(served) or 'nothing'})"
            )


@inlineCallbacks
def probe_payload(reactor: Any, server: tuple[str, int], specs: Sequence[RequestSpec]) -> Any:
    """Send one request of each model once; fail with BotRunError when the server refuses
    the payload (--series-length, --config), so a run never sends thousands of them."""
    host, port = server
    stats = RunStats(started=reactor.seconds(), live=False)
    session = Session(reactor, host, port)
    firsts = {spec.model: spec for spec in reversed(specs)}
    try:
        yield Connect(CONNECT_TIMEOUT_S).execute(session, stats)
        for model, spec in sorted(firsts.items()):
            assert session.protocol is not None
            request_id = session.next_id()
            reply = session.protocol.send_request(request_id, spec.payload(request_id))
            timer = reactor.callLater(ANSWER_TIMEOUT_S, reply.cancel)
            try:
                envelope = yield reply
            except CancelledError:
                raise BotRunError(f"{host}:{port} did not answer a {model} request") from None
            finally:
                if timer.active():
                    timer.cancel()
            if envelope.HasField("error"):
                code = pb.ErrorCode.Name(envelope.error.code).removeprefix("ERROR_CODE_")
                raise BotRunError(
                    f"{host}:{port} refused the {model} payload (--series-length, --config): "
                    f"{code}: {envelope.error.message}"
                )
    except (BotRunError, CancelledError):
        raise
    except Exception as exc:
        raise BotRunError(f"cannot connect to {host}:{port}: {exc}") from None
    finally:
        yield Disconnect(abort=True).execute(session, stats)
