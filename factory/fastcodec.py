"""The InferRequest / InferResponse hot path: the C extension when built, else pure Python.

``parse_infer`` (C only; None on the pure-Python path) reads an InferRequest frame in
the canonical layout without protobuf: ``(request_id, model, version, values,
shape, config)``, ``values`` the float32 little-endian bytes of ``values`` or
``raw_values``, ``config`` the config map's entries as wire bytes (a cache key).
It returns None for any other frame, which protobuf then decodes (and whose errors
the handler answers as before); a frame it accepts is one protobuf decodes the same.
``encode_infer_reply``, ``peek_infer_head`` and ``refuse_run`` are factory.codec's, and
``split_frames`` netlib.framing's, in C when built.

``INFERENCE_PURE_PYTHON=1`` in the environment forces the pure-Python path;
``scripts/build_native.py`` (``make native``) builds the extension.
"""

from __future__ import annotations

from collections.abc import Callable

from factory import codec
from netlib import framing
from util.native import native_module

ParsedInfer = tuple[int, str, str, bytes, tuple[int, ...], bytes]

parse_infer: Callable[[bytes], ParsedInfer | None] | None = None
peek_infer_head: Callable[[bytes], tuple[int, bytes] | None] = codec.peek_infer_head
encode_infer_reply: Callable[[int, bytes, bytes, bytes | None, float, bytes, float], bytes] = (
    codec.encode_infer_reply
)
split_frames: framing.Splitter = framing.split_frames
refuse_run: Callable[
    [bytes, int, int, int, bytes | None, dict[bytes, bytes]],
    tuple[bytes, int, int, dict[bytes, int] | None],
] = codec.refuse_run

_fastcodec = native_module("factory._fastcodec")
native = _fastcodec is not None
if _fastcodec is not None:
    parse_infer = _fastcodec.parse_infer
    peek_infer_head = _fastcodec.peek_infer_head
    encode_infer_reply = _fastcodec.encode_infer_reply
    split_frames = _fastcodec.split_frames
    refuse_run = _fastcodec.refuse_run
