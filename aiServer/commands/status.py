"""GetStatus → Status: batch queues, model cache and connections."""

from __future__ import annotations

from aiServer.commands.registry import CommandHandler, commands
from commonlib.wire import pb
from factory.packet_protocol import PacketConnection


@commands.register("get_status")
class StatusHandler(CommandHandler):
    """Reports queue status per model and the model cache."""

    def handle(self, envelope: pb.Envelope, connection: PacketConnection) -> None:
        """Reply Status."""
        reply = pb.Envelope(request_id=envelope.request_id)
        status = reply.status
        for queue in self.facade.get_queue_status():
            status.queues.add(
                model=queue.model,
                depth=queue.depth,
                batches_run=queue.batches_run,
                requests_run=queue.requests_run,
                mean_batch_size=queue.mean_batch_size,
                inflight_batches=queue.inflight_batches,
                batch_size_counts=queue.batch_sizes,
            )
        cache = self.facade.get_cache_info()
        status.cache.loaded = cache.loaded
        status.cache.capacity = cache.capacity
        status.cache.hits = cache.hits
        status.cache.misses = cache.misses
        status.cache.evictions = cache.evictions
        status.cache.loaded_models.extend(cache.loaded_models)
        state = self.context.state
        status.connections = len(state.connections)
        status.uptime_s = self.clock.seconds() - state.started_at
        connection.send_envelope(reply)
