"""InferHandler.batch_done: a batch's replies, settled per version, in order."""

from __future__ import annotations

from typing import Any

import numpy as np
from twisted.python.failure import Failure

from aiServer.commands.infer import InferHandler
from commonlib.batcher import BatchedResult
from commonlib.models.base import ModelOutput
from tests.support import make_app
from util.errors import InvalidInput

MA = "moving_average"


def test_a_reply_batch_of_two_versions_settles_each_version() -> None:
    # batch_done counts a run of one version's outcomes in ints and settles it when
    # the version changes and at the end: every version is settled, none twice.
    app = make_app()
    client = app.connect()
    (session,) = app.dispatcher.sessions
    handler = app.dispatcher.handlers["infer_request"]
    assert isinstance(handler, InferHandler)
    routes = {name: app.facade._routes[name].pick("", None) for name in (MA, "lstm_timeseries")}
    names = [MA, MA, "lstm_timeseries", "lstm_timeseries", MA]
    for name in names:
        routes[name].pending[routes[name].version] += 1
    result = BatchedResult(ModelOutput(np.array([1.5, 2.5], dtype=np.float32)), 0.0, 2, 0.001)
    outcomes: list[tuple[object, Any]] = [
        (((i, name, session, 0.0), routes[name]), result) for i, name in enumerate(names)
    ]
    outcomes[3] = (outcomes[3][0], Failure(InvalidInput("bad")))
    handler.batch_done(outcomes)
    for name, ok in ((MA, 3), ("lstm_timeseries", 1)):
        route = routes[name]
        assert route.pending[route.version] == 0
        assert route.answered[route.version] == ok
    replies = client.replies()
    assert [r.request_id for r in replies] == [0, 1, 2, 3, 4]
    assert [r.WhichOneof("body") for r in replies] == ["infer_response"] * 3 + [
        "error",
        "infer_response",
    ]
    assert list(replies[0].infer_response.predictions) == [1.5, 2.5]
