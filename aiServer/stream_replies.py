"""Stream outputs to clients: a TickResult per owning connection, snapshots over UDP.

The stream engine (commonlib/streams.py) hands each stepped group's outputs here,
already split by owning connection; this module encodes and sends them.
"""

from __future__ import annotations

from typing import cast

from commonlib.streams import StreamOwner, TickOutput
from commonlib.wire import pb
from factory.packet_protocol import PacketConnection
from factory.tick_codec import pack_ids, pack_rows
from netlib.udp_broadcast import TickSnapshot, UdpBroadcaster
from util.errors import ErrorCode


class StreamReplies:
    """The engine's StreamSink: TCP replies to owners, UDP snapshots to subscribers."""

    def __init__(self, broadcaster: UdpBroadcaster | None) -> None:
        self.broadcaster = broadcaster
        self.results_sent = 0

    def tick_done(self, output: TickOutput) -> None:
        """Send each owner its TickResult (or the step's failure) and publish the snapshot."""
        if output.error is not None:
            for part in output.parts:
                cast(PacketConnection, part.owner).send_error(
                    part.consumed.request_id,
                    ErrorCode.INTERNAL,
                    output.error,
                    part.ids.tolist(),
                )
            return
        for part in output.parts:
            connection = cast(PacketConnection, part.owner)
            if not connection.is_open:
                continue
            consumed = part.consumed
            connection.send_envelope(
                pb.Envelope(
                    request_id=consumed.request_id,
                    tick_result=pb.TickResult(
                        model=output.model,
                        server_tick=output.tick,
                        tick_time_us=output.tick_time_us,
                        client_tick=consumed.client_tick,
                        client_time_us=consumed.client_time_us,
                        ids=pack_ids(part.ids),
                        outputs=pack_rows(part.outputs),
                        output_width=output.output_width,
                        batch_size=output.batch_size,
                        step_ms=output.step_ms,
                        tick_lag_ms=output.tick_lag_ms,
                    ),
                )
            )
            self.results_sent += 1
        broadcaster = self.broadcaster
        if broadcaster is not None and broadcaster.has_targets and len(output.ids):
            broadcaster.publish_snapshot(
                TickSnapshot(
                    output.model,
                    output.tick,
                    output.tick_time_us,
                    output.output_width,
                    output.ids,
                    output.outputs,
                )
            )

    def stream_closed(self, owner: StreamOwner, character_id: int, reason: int) -> None:
        """Push StreamClosed (request_id 0) for a stream the server closed."""
        connection = cast(PacketConnection, owner)
        connection.send_envelope(
            pb.Envelope(
                request_id=0,
                stream_closed=pb.StreamClosed(
                    character_id=character_id,
                    reason=reason,  # type: ignore[arg-type]
                ),
            )
        )
