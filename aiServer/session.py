"""One client connection's application state and its admission gate.

The transport (factory.packet_protocol) opens a :class:`Session` per connection
through the dispatcher and asks it before every frame what its admission gate
refuses (:meth:`Session.refusal`); the transport answers those frames BUSY before
decoding, and the session hands the decoded packets of the others to the
dispatcher. Command handlers get the
session: its authentication state, the requests in flight on it, and the
connection to answer through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IAddress

from commonlib.wire import pb
from factory.codec import error_frame
from factory.fastcodec import ParsedInfer
from factory.packet_protocol import PacketConnection, Refusal
from util.errors import ErrorCode

Dispatch = Callable[[pb.Envelope, "Session"], None]
DispatchInfer = Callable[[ParsedInfer, bytes, "Session"], None]


class AdmissionGate:
    """The daemon-wide admission limits every session checks before decoding.

    ``refusing`` is commonlib.admission.AdmissionBoard.refusing (shared, updated by
    the batchers): the models over their queue-delay target, each with the
    serialized BUSY body its requests get. It is empty unless a model is over its
    target, so the per-frame check is one truth test.
    """

    def __init__(self, max_inflight: int, refusing: dict[bytes, bytes] | None = None) -> None:
        self.max_inflight = max_inflight
        self.refusing: dict[bytes, bytes] = refusing if refusing is not None else {}
        self.inflight_full_body = pb.Error(
            code=ErrorCode.BUSY.value,  # type: ignore[arg-type]
            message=f"{max_inflight} requests in flight on this connection "
            f"(max_inflight_per_connection={max_inflight}); wait for a reply before sending more",
        ).SerializeToString()


class Session:
    """The application side of one connection (the transport's PacketHandler).

    ``inflight`` holds the ids of the requests accepted and not answered yet;
    ``authenticated`` is True once the client proved a token (or when tokens are off).
    """

    __slots__ = (
        "_dispatch",
        "_dispatch_infer",
        "_gate",
        "_max_inflight",
        "_on_lost",
        "_refuse_all",
        "_refuse_by_model",
        "_refusing",
        "auth_failures",
        "authenticated",
        "close",
        "connection",
        "connection_id",
        "inflight",
        "send_envelope",
        "send_frames",
    )

    def __init__(
        self,
        connection: PacketConnection,
        gate: AdmissionGate,
        dispatch: Dispatch,
        dispatch_infer: DispatchInfer,
        authenticated: bool,
        on_lost: Callable[[Session], None],
    ) -> None:
        self.connection = connection
        self.connection_id = connection.connection_id
        self.authenticated = authenticated
        self.auth_failures = 0
        self.inflight: set[int] = set()
        self._gate = gate
        self._max_inflight = gate.max_inflight
        self._refusing = gate.refusing
        # What refusal() returns, built once: the in-flight limit, or the models' delay.
        self._refuse_all = Refusal(gate.inflight_full_body, gate.refusing)
        self._refuse_by_model = Refusal(None, gate.refusing)
        self._dispatch = dispatch
        self._dispatch_infer = dispatch_infer
        self._on_lost = on_lost
        # The connection's own methods, bound once: replies cost no extra call.
        self.send_envelope: Callable[[pb.Envelope], None] = connection.send_envelope
        self.send_frames: Callable[[bytes], None] = connection.send_frames
        self.close: Callable[[], None] = connection.close

    @property
    def is_open(self) -> bool:
        """False once the peer is gone."""
        return self.connection.is_open

    @property
    def peer(self) -> IAddress | None:
        """The client's address as this server sees it."""
        return self.connection.peer

    def send_error(
        self, request_id: int, code: ErrorCode, message: str, character_ids: Sequence[int] = ()
    ) -> None:
        """Send an Error packet (and count it by code)."""
        self.connection.send_error(request_id, code, message, character_ids)

    def authenticate(self) -> None:
        """The client proved a token: lift the pre-auth limits."""
        self.authenticated = True
        self.connection.trust()

    # -- the transport's PacketHandler -------------------------------------------------
    @property
    def pending(self) -> int:
        """Requests accepted here and not answered yet."""
        return len(self.inflight)

    def refusal(self) -> Refusal | None:
        """The admission gate, before decoding: the in-flight limit, then the model's delay.

        The transport refuses the InferRequest frames in the canonical layout
        (factory.codec.peek_infer_head) this covers; others are decoded and judged
        by the same rule in :meth:`packet_received`. An overloaded model's delay rule
        never refuses a connection with nothing in flight: the clients that pipeline
        into a standing queue are refused, one waiting for its answer is not.
        """
        inflight = len(self.inflight)
        if inflight >= self._max_inflight:
            return self._refuse_all
        return self._refuse_by_model if self._refusing and inflight else None

    def packet_received(self, envelope: pb.Envelope) -> None:
        """Dispatch one decoded packet (an InferRequest the gate could not peek is judged first)."""
        if (
            ((self._refusing and self.inflight) or len(self.inflight) >= self._max_inflight)
            and envelope.WhichOneof("body") == "infer_request"
            and self._refused(
                envelope.request_id,
                envelope.infer_request.model.encode(),
                len(self.inflight) >= self._max_inflight,
            )
        ):
            return
        self._dispatch(envelope, self)

    def infer_received(self, request: ParsedInfer, payload: bytes) -> None:
        """Dispatch an InferRequest the C fast path read (the gate has judged it)."""
        self._dispatch_infer(request, payload, self)

    def connection_lost(self) -> None:
        """Forget the requests in flight; the dispatcher frees what the connection held."""
        self.inflight.clear()
        self._on_lost(self)

    def _refused(self, request_id: int, model: bytes, inflight_full: bool) -> bool:
        """Answer BUSY and return True when the request is refused."""
        if inflight_full:
            self.connection.shed(error_frame(request_id, self._gate.inflight_full_body), None)
            return True
        body = self._refusing.get(model)
        if body is None:
            return False
        self.connection.shed(error_frame(request_id, body), model.decode("utf-8", "replace"))
        return True
