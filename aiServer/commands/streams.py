"""StreamOpen / StreamClose / Tick: character streams (docs/streams.md).

The handlers only decode and answer; the engine (commonlib/streams.py, owned by
the facade) holds the state and steps it on each model's tick, and its outputs
reach the clients through aiServer/stream_replies.py.
"""

from __future__ import annotations

from aiServer.commands.infer import config_from_wire
from aiServer.commands.registry import CommandHandler, commands
from aiServer.session import Session
from commonlib.streams import CLOSE_CLIENT, ConsumedTick
from commonlib.wire import pb
from factory.tick_codec import decode_tick


@commands.register("stream_open")
class StreamOpenHandler(CommandHandler):
    """Opens one character's stream and replies StreamOpened with its widths and tick phase."""

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Open, or raise the typed error."""
        connection = session.connection  # the streams' owner
        request = envelope.stream_open
        config = request.config
        opened = self.facade.open_stream(
            connection,
            request.model,
            request.version,
            request.character_id,
            config_from_wire(config) if config else {},
            request.initial_state,
        )
        spec = opened.spec
        reply = pb.Envelope(
            request_id=envelope.request_id,
            stream_opened=pb.StreamOpened(
                character_id=opened.character_id,
                model=opened.model,
                version=opened.version,
                input_width=spec.input_width,
                output_width=spec.output_width,
                state_width=spec.state_width,
                tick_hz=opened.tick_hz,
                next_tick=opened.next_tick,
                next_tick_time_us=opened.next_tick_time_us,
            ),
        )
        connection.send_envelope(reply)


@commands.register("stream_close")
class StreamCloseHandler(CommandHandler):
    """Closes one stream (its state is freed at once) and replies StreamClosed."""

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Close, or raise UNKNOWN_STREAM."""
        connection = session.connection  # the streams' owner
        character_id = envelope.stream_close.character_id
        self.facade.streams.close(connection, character_id)
        connection.send_envelope(
            pb.Envelope(
                request_id=envelope.request_id,
                stream_closed=pb.StreamClosed(
                    character_id=character_id,
                    reason=CLOSE_CLIENT,  # type: ignore[arg-type]
                ),
            )
        )


@commands.register("tick")
class TickHandler(CommandHandler):
    """Takes one packet of observations; the outputs come later, in the tick's TickResult.

    Nothing is sent back unless some character (or the packet) is refused: then one
    Error per problem, with this packet's request_id and Error.character_ids.
    """

    def handle(self, envelope: pb.Envelope, session: Session) -> None:
        """Decode the packed arrays and hand them to the engine."""
        connection = session.connection  # the streams' owner
        tick = envelope.tick
        request_id = envelope.request_id
        arrays = decode_tick(tick.ids, tick.observations)
        errors = self.facade.streams.observe(
            connection,
            tick.model,
            ConsumedTick(request_id, tick.client_tick, tick.client_time_us),
            arrays.ids,
            arrays.observations,
        )
        for error in errors:
            connection.send_error(request_id, error.code, error.message, error.character_ids)
