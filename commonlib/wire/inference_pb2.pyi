from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_MODE_USE: _ClassVar[CacheMode]
    CACHE_MODE_BYPASS: _ClassVar[CacheMode]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_COMMAND: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_MODEL: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_INPUT: _ClassVar[ErrorCode]
    ERROR_CODE_FRAME_TOO_LARGE: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_PACKET: _ClassVar[ErrorCode]
    ERROR_CODE_BUSY: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHENTICATED: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_STREAM: _ClassVar[ErrorCode]
    ERROR_CODE_STREAM_EXISTS: _ClassVar[ErrorCode]
    ERROR_CODE_TOO_MANY_STREAMS: _ClassVar[ErrorCode]
    ERROR_CODE_STREAMS_UNSUPPORTED: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
    ERROR_CODE_VERSION_REFUSED: _ClassVar[ErrorCode]

class AdminAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADMIN_ACTION_LOAD: _ClassVar[AdminAction]
    ADMIN_ACTION_UNLOAD: _ClassVar[AdminAction]
    ADMIN_ACTION_RELOAD: _ClassVar[AdminAction]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_PROTOBUF: _ClassVar[Encoding]
    ENCODING_JSON: _ClassVar[Encoding]

class CloseReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLOSE_REASON_CLIENT: _ClassVar[CloseReason]
    CLOSE_REASON_IDLE: _ClassVar[CloseReason]
CACHE_MODE_USE: CacheMode
CACHE_MODE_BYPASS: CacheMode
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_UNKNOWN_COMMAND: ErrorCode
ERROR_CODE_UNKNOWN_MODEL: ErrorCode
ERROR_CODE_INVALID_INPUT: ErrorCode
ERROR_CODE_FRAME_TOO_LARGE: ErrorCode
ERROR_CODE_BAD_PACKET: ErrorCode
ERROR_CODE_BUSY: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_DEADLINE_EXCEEDED: ErrorCode
ERROR_CODE_UNAUTHENTICATED: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_UNKNOWN_STREAM: ErrorCode
ERROR_CODE_STREAM_EXISTS: ErrorCode
ERROR_CODE_TOO_MANY_STREAMS: ErrorCode
ERROR_CODE_STREAMS_UNSUPPORTED: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode
ERROR_CODE_VERSION_REFUSED: ErrorCode
ADMIN_ACTION_LOAD: AdminAction
ADMIN_ACTION_UNLOAD: AdminAction
ADMIN_ACTION_RELOAD: AdminAction
ENCODING_PROTOBUF: Encoding
ENCODING_JSON: Encoding
CLOSE_REASON_CLIENT: CloseReason
CLOSE_REASON_IDLE: CloseReason

class Envelope(_message.Message):
    __slots__ = ("request_id", "infer_request", "ping", "list_models", "subscribe", "unsubscribe", "get_status", "hello", "stream_open", "stream_close", "tick", "model_admin", "infer_response", "error", "pong", "model_list", "subscribe_ack", "status", "hello_ack", "stream_opened", "stream_closed", "tick_result", "model_admin_result")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INFER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    LIST_MODELS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    GET_STATUS_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STREAM_OPEN_FIELD_NUMBER: _ClassVar[int]
    STREAM_CLOSE_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    MODEL_ADMIN_FIELD_NUMBER: _ClassVar[int]
    INFER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    MODEL_LIST_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_ACK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HELLO_ACK_FIELD_NUMBER: _ClassVar[int]
    STREAM_OPENED_FIELD_NUMBER: _ClassVar[int]
    STREAM_CLOSED_FIELD_NUMBER: _ClassVar[int]
    TICK_RESULT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ADMIN_RESULT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    infer_request: InferRequest
    ping: Ping
    list_models: ListModels
    subscribe: Subscribe
    unsubscribe: Unsubscribe
    get_status: GetStatus
    hello: Hello
    stream_open: StreamOpen
    stream_close: StreamClose
    tick: Tick
    model_admin: ModelAdmin
    infer_response: InferResponse
    error: Error
    pong: Pong
    model_list: ModelList
    subscribe_ack: SubscribeAck
    status: Status
    hello_ack: HelloAck
    stream_opened: StreamOpened
    stream_closed: StreamClosed
    tick_result: TickResult
    model_admin_result: ModelAdminResult
    def __init__(self, request_id: _Optional[int] = ..., infer_request: _Optional[_Union[InferRequest, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., list_models: _Optional[_Union[ListModels, _Mapping]] = ..., subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., unsubscribe: _Optional[_Union[Unsubscribe, _Mapping]] = ..., get_status: _Optional[_Union[GetStatus, _Mapping]] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., stream_open: _Optional[_Union[StreamOpen, _Mapping]] = ..., stream_close: _Optional[_Union[StreamClose, _Mapping]] = ..., tick: _Optional[_Union[Tick, _Mapping]] = ..., model_admin: _Optional[_Union[ModelAdmin, _Mapping]] = ..., infer_response: _Optional[_Union[InferResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., model_list: _Optional[_Union[ModelList, _Mapping]] = ..., subscribe_ack: _Optional[_Union[SubscribeAck, _Mapping]] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., hello_ack: _Optional[_Union[HelloAck, _Mapping]] = ..., stream_opened: _Optional[_Union[StreamOpened, _Mapping]] = ..., stream_closed: _Optional[_Union[StreamClosed, _Mapping]] = ..., tick_result: _Optional[_Union[TickResult, _Mapping]] = ..., model_admin_result: _Optional[_Union[ModelAdminResult, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("values", "shape", "raw_values")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw_values: bytes
    def __init__(self, values: _Optional[_Iterable[float]] = ..., shape: _Optional[_Iterable[int]] = ..., raw_values: _Optional[bytes] = ...) -> None: ...

class ConfigValue(_message.Message):
    __slots__ = ("int_value", "float_value", "bool_value", "string_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    float_value: float
    bool_value: bool
    string_value: str
    def __init__(self, int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("model", "version", "input", "config", "cache")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    input: Tensor
    config: _containers.MessageMap[str, ConfigValue]
    cache: CacheMode
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., config: _Optional[_Mapping[str, ConfigValue]] = ..., cache: _Optional[_Union[CacheMode, str]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_wait_ms", "batch_size", "inference_ms", "total_ms", "cache_hit")
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    queue_wait_ms: float
    batch_size: int
    inference_ms: float
    total_ms: float
    cache_hit: bool
    def __init__(self, queue_wait_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("model", "version", "predictions", "confidence", "timings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    predictions: _containers.RepeatedScalarFieldContainer[float]
    confidence: _containers.RepeatedScalarFieldContainer[float]
    timings: Timings
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., predictions: _Optional[_Iterable[float]] = ..., confidence: _Optional[_Iterable[float]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "character_ids")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_IDS_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    character_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., character_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("token", "client_name")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    token: str
    client_name: str
    def __init__(self, token: _Optional[str] = ..., client_name: _Optional[str] = ...) -> None: ...

class HelloAck(_message.Message):
    __slots__ = ("authentication_required",)
    AUTHENTICATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    authentication_required: bool
    def __init__(self, authentication_required: _Optional[bool] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("client_time_ns",)
    CLIENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    client_time_ns: int
    def __init__(self, client_time_ns: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("client_time_ns", "server_time_ns")
    CLIENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    client_time_ns: int
    server_time_ns: int
    def __init__(self, client_time_ns: _Optional[int] = ..., server_time_ns: _Optional[int] = ...) -> None: ...

class ListModels(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "description", "loaded", "input_schema_json", "output_schema_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    description: str
    loaded: bool
    input_schema_json: str
    output_schema_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., loaded: _Optional[bool] = ..., input_schema_json: _Optional[str] = ..., output_schema_json: _Optional[str] = ...) -> None: ...

class ModelList(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelAdmin(_message.Message):
    __slots__ = ("action", "model", "version")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    action: AdminAction
    model: str
    version: str
    def __init__(self, action: _Optional[_Union[AdminAction, str]] = ..., model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ModelAdminResult(_message.Message):
    __slots__ = ("model", "versions", "default_version", "message")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    default_version: str
    message: str
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., default_version: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("host", "port", "encoding", "models", "max_datagram_bytes")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_DATAGRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    encoding: Encoding
    models: _containers.RepeatedScalarFieldContainer[str]
    max_datagram_bytes: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., models: _Optional[_Iterable[str]] = ..., max_datagram_bytes: _Optional[int] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("host", "port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class SubscribeAck(_message.Message):
    __slots__ = ("host", "port", "active", "changed", "lease_s", "max_datagram_bytes")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_DATAGRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    active: bool
    changed: bool
    lease_s: float
    max_datagram_bytes: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., active: _Optional[bool] = ..., changed: _Optional[bool] = ..., lease_s: _Optional[float] = ..., max_datagram_bytes: _Optional[int] = ...) -> None: ...

class GetStatus(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("model", "depth", "batches_run", "requests_run", "mean_batch_size", "inflight_batches", "batch_size_counts", "batches_failed", "rejected", "timed_out")
    class BatchSizeCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_RUN_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_RUN_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FAILED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    model: str
    depth: int
    batches_run: int
    requests_run: int
    mean_batch_size: float
    inflight_batches: int
    batch_size_counts: _containers.ScalarMap[int, int]
    batches_failed: int
    rejected: int
    timed_out: int
    def __init__(self, model: _Optional[str] = ..., depth: _Optional[int] = ..., batches_run: _Optional[int] = ..., requests_run: _Optional[int] = ..., mean_batch_size: _Optional[float] = ..., inflight_batches: _Optional[int] = ..., batch_size_counts: _Optional[_Mapping[int, int]] = ..., batches_failed: _Optional[int] = ..., rejected: _Optional[int] = ..., timed_out: _Optional[int] = ...) -> None: ...

class CacheInfo(_message.Message):
    __slots__ = ("loaded", "capacity", "hits", "misses", "evictions", "loaded_models", "load_seconds")
    class LoadSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LOADED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    loaded: int
    capacity: int
    hits: int
    misses: int
    evictions: int
    loaded_models: _containers.RepeatedScalarFieldContainer[str]
    load_seconds: _containers.ScalarMap[str, float]
    def __init__(self, loaded: _Optional[int] = ..., capacity: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., loaded_models: _Optional[_Iterable[str]] = ..., load_seconds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("queues", "cache", "connections", "uptime_s", "ready")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueStatus]
    cache: CacheInfo
    connections: int
    uptime_s: float
    ready: bool
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueStatus, _Mapping]]] = ..., cache: _Optional[_Union[CacheInfo, _Mapping]] = ..., connections: _Optional[int] = ..., uptime_s: _Optional[float] = ..., ready: _Optional[bool] = ...) -> None: ...

class Datagram(_message.Message):
    __slots__ = ("sequence", "server_time_us", "chunk_index", "chunk_count", "payload", "snapshot")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_US_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    server_time_us: int
    chunk_index: int
    chunk_count: int
    payload: bytes
    snapshot: Snapshot
    def __init__(self, sequence: _Optional[int] = ..., server_time_us: _Optional[int] = ..., chunk_index: _Optional[int] = ..., chunk_count: _Optional[int] = ..., payload: _Optional[bytes] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("model", "character_id", "config", "initial_state", "version")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    character_id: int
    config: _containers.MessageMap[str, ConfigValue]
    initial_state: bytes
    version: str
    def __init__(self, model: _Optional[str] = ..., character_id: _Optional[int] = ..., config: _Optional[_Mapping[str, ConfigValue]] = ..., initial_state: _Optional[bytes] = ..., version: _Optional[str] = ...) -> None: ...

class StreamOpened(_message.Message):
    __slots__ = ("character_id", "model", "version", "input_width", "output_width", "state_width", "tick_hz", "next_tick", "next_tick_time_us")
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    STATE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    TICK_HZ_FIELD_NUMBER: _ClassVar[int]
    NEXT_TICK_FIELD_NUMBER: _ClassVar[int]
    NEXT_TICK_TIME_US_FIELD_NUMBER: _ClassVar[int]
    character_id: int
    model: str
    version: str
    input_width: int
    output_width: int
    state_width: int
    tick_hz: float
    next_tick: int
    next_tick_time_us: int
    def __init__(self, character_id: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., input_width: _Optional[int] = ..., output_width: _Optional[int] = ..., state_width: _Optional[int] = ..., tick_hz: _Optional[float] = ..., next_tick: _Optional[int] = ..., next_tick_time_us: _Optional[int] = ...) -> None: ...

class StreamClose(_message.Message):
    __slots__ = ("character_id",)
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    character_id: int
    def __init__(self, character_id: _Optional[int] = ...) -> None: ...

class StreamClosed(_message.Message):
    __slots__ = ("character_id", "reason")
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    character_id: int
    reason: CloseReason
    def __init__(self, character_id: _Optional[int] = ..., reason: _Optional[_Union[CloseReason, str]] = ...) -> None: ...

class Tick(_message.Message):
    __slots__ = ("model", "client_tick", "client_time_us", "ids", "observations")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TICK_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    client_tick: int
    client_time_us: int
    ids: bytes
    observations: bytes
    def __init__(self, model: _Optional[str] = ..., client_tick: _Optional[int] = ..., client_time_us: _Optional[int] = ..., ids: _Optional[bytes] = ..., observations: _Optional[bytes] = ...) -> None: ...

class TickResult(_message.Message):
    __slots__ = ("model", "server_tick", "tick_time_us", "client_tick", "client_time_us", "ids", "outputs", "output_width", "batch_size", "step_ms", "tick_lag_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVER_TICK_FIELD_NUMBER: _ClassVar[int]
    TICK_TIME_US_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TICK_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    TICK_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    server_tick: int
    tick_time_us: int
    client_tick: int
    client_time_us: int
    ids: bytes
    outputs: bytes
    output_width: int
    batch_size: int
    step_ms: float
    tick_lag_ms: float
    def __init__(self, model: _Optional[str] = ..., server_tick: _Optional[int] = ..., tick_time_us: _Optional[int] = ..., client_tick: _Optional[int] = ..., client_time_us: _Optional[int] = ..., ids: _Optional[bytes] = ..., outputs: _Optional[bytes] = ..., output_width: _Optional[int] = ..., batch_size: _Optional[int] = ..., step_ms: _Optional[float] = ..., tick_lag_ms: _Optional[float] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("model", "server_tick", "tick_time_us", "output_width", "ids", "outputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVER_TICK_FIELD_NUMBER: _ClassVar[int]
    TICK_TIME_US_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    server_tick: int
    tick_time_us: int
    output_width: int
    ids: bytes
    outputs: bytes
    def __init__(self, model: _Optional[str] = ..., server_tick: _Optional[int] = ..., tick_time_us: _Optional[int] = ..., output_width: _Optional[int] = ..., ids: _Optional[bytes] = ..., outputs: _Optional[bytes] = ...) -> None: ...

class BroadcastResult(_message.Message):
    __slots__ = ("request_id", "result")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    result: InferResponse
    def __init__(self, request_id: _Optional[int] = ..., result: _Optional[_Union[InferResponse, _Mapping]] = ...) -> None: ...
