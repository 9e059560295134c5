"""GetStatus → Status: batch queues, model cache and connections.

``build_status`` is the one place the status is assembled: the TCP command sends
it as protobuf and the HTTP ``/status`` route as its JSON mapping.
"""

from __future__ import annotations

from aiServer.commands.registry import CommandHandler, ServerState, commands
from aiServer.facade import AIFacade
from aiServer.session import Session
from commonlib.wire import pb


def build_status(facade: AIFacade, state: ServerState, now: float) -> pb.Status:
    """Queue status per model, the model cache, connections, uptime, readiness."""
    status = pb.Status()
    for queue in facade.get_queue_status():
        status.queues.add(
            model=queue.model,
            depth=queue.depth,
            batches_run=queue.batches_run,
            requests_run=queue.requests_run,
            mean_batch_size=queue.mean_batch_size,
            inflight_batches=queue.inflight_batches,
            batch_size_counts=queue.batch_sizes,
            batches_failed=queue.batches_failed,
            rejected=queue.rejected,
            timed_out=queue.timed_out,
        )
    cache = facade.get_cache_info()
    status.cache.loaded = cache.loaded
    status.cache.capacity = cache.capacity
    status.cache.hits = cache.hits
    status.cache.misses = cache.misses
    status.cache.evictions = cache.evictions
    status.cache.loaded_models.extend(cache.loaded_models)
    status.cache.load_seconds.update(cache.load_seconds)
    status.connections = state.open_connections()
    status.uptime_s = now - state.started_at
    status.ready = state.ready and not state.draining
    return status


@commands.register("get_status")
class StatusHandler(CommandHandler):
    """Reports queue status per model and the model cache."""

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Reply Status."""
        reply = pb.Envelope(request_id=envelope.request_id)
        reply.status.CopyFrom(build_status(self.facade, self.context.state, self.clock.seconds()))
        session.send_envelope(reply)
