from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_MODE_UNSPECIFIED: _ClassVar[ReadMode]
    READ_MODE_LINEARIZABLE: _ClassVar[ReadMode]
    READ_MODE_SEQUENTIAL: _ClassVar[ReadMode]
    READ_MODE_EVENTUAL: _ClassVar[ReadMode]

class WriteQuorum(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_QUORUM_UNSPECIFIED: _ClassVar[WriteQuorum]
    WRITE_QUORUM_MAJORITY: _ClassVar[WriteQuorum]
    WRITE_QUORUM_ALL: _ClassVar[WriteQuorum]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_PUT: _ClassVar[EventType]
    EVENT_TYPE_DELETE: _ClassVar[EventType]

class CompareTarget(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARE_TARGET_UNSPECIFIED: _ClassVar[CompareTarget]
    COMPARE_TARGET_VALUE: _ClassVar[CompareTarget]
    COMPARE_TARGET_VERSION: _ClassVar[CompareTarget]
    COMPARE_TARGET_CREATE_REVISION: _ClassVar[CompareTarget]
    COMPARE_TARGET_MOD_REVISION: _ClassVar[CompareTarget]
    COMPARE_TARGET_EXISTS: _ClassVar[CompareTarget]

class CompareOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARE_OP_UNSPECIFIED: _ClassVar[CompareOp]
    COMPARE_OP_EQUAL: _ClassVar[CompareOp]
    COMPARE_OP_NOT_EQUAL: _ClassVar[CompareOp]
    COMPARE_OP_GREATER: _ClassVar[CompareOp]
    COMPARE_OP_LESS: _ClassVar[CompareOp]
READ_MODE_UNSPECIFIED: ReadMode
READ_MODE_LINEARIZABLE: ReadMode
READ_MODE_SEQUENTIAL: ReadMode
READ_MODE_EVENTUAL: ReadMode
WRITE_QUORUM_UNSPECIFIED: WriteQuorum
WRITE_QUORUM_MAJORITY: WriteQuorum
WRITE_QUORUM_ALL: WriteQuorum
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_PUT: EventType
EVENT_TYPE_DELETE: EventType
COMPARE_TARGET_UNSPECIFIED: CompareTarget
COMPARE_TARGET_VALUE: CompareTarget
COMPARE_TARGET_VERSION: CompareTarget
COMPARE_TARGET_CREATE_REVISION: CompareTarget
COMPARE_TARGET_MOD_REVISION: CompareTarget
COMPARE_TARGET_EXISTS: CompareTarget
COMPARE_OP_UNSPECIFIED: CompareOp
COMPARE_OP_EQUAL: CompareOp
COMPARE_OP_NOT_EQUAL: CompareOp
COMPARE_OP_GREATER: CompareOp
COMPARE_OP_LESS: CompareOp

class ResponseHeader(_message.Message):
    __slots__ = ("revision", "raft_term", "member_id", "leader_id")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RAFT_TERM_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    revision: int
    raft_term: int
    member_id: int
    leader_id: int
    def __init__(self, revision: _Optional[int] = ..., raft_term: _Optional[int] = ..., member_id: _Optional[int] = ..., leader_id: _Optional[int] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value", "create_revision", "mod_revision", "version", "expires_at_ms", "deleted")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    expires_at_ms: int
    deleted: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., version: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., deleted: _Optional[bool] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "quorum", "ttl_ms", "prev_kv")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    quorum: WriteQuorum
    ttl_ms: int
    prev_kv: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., quorum: _Optional[_Union[WriteQuorum, str]] = ..., ttl_ms: _Optional[int] = ..., prev_kv: _Optional[bool] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("header", "prev_kv")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    prev_kv: KeyValue
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., prev_kv: _Optional[_Union[KeyValue, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "read_mode", "revision", "min_revision")
    KEY_FIELD_NUMBER: _ClassVar[int]
    READ_MODE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    key: str
    read_mode: ReadMode
    revision: int
    min_revision: int
    def __init__(self, key: _Optional[str] = ..., read_mode: _Optional[_Union[ReadMode, str]] = ..., revision: _Optional[int] = ..., min_revision: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("header", "found", "kv")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    found: bool
    kv: KeyValue
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., found: _Optional[bool] = ..., kv: _Optional[_Union[KeyValue, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "quorum", "prev_kv")
    KEY_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    key: str
    quorum: WriteQuorum
    prev_kv: bool
    def __init__(self, key: _Optional[str] = ..., quorum: _Optional[_Union[WriteQuorum, str]] = ..., prev_kv: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("header", "deleted", "prev_kv")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    deleted: bool
    prev_kv: KeyValue
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., deleted: _Optional[bool] = ..., prev_kv: _Optional[_Union[KeyValue, _Mapping]] = ...) -> None: ...

class RangeRequest(_message.Message):
    __slots__ = ("prefix", "start", "end", "limit", "read_mode", "revision", "min_revision", "keys_only")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    READ_MODE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    KEYS_ONLY_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    start: str
    end: str
    limit: int
    read_mode: ReadMode
    revision: int
    min_revision: int
    keys_only: bool
    def __init__(self, prefix: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., limit: _Optional[int] = ..., read_mode: _Optional[_Union[ReadMode, str]] = ..., revision: _Optional[int] = ..., min_revision: _Optional[int] = ..., keys_only: _Optional[bool] = ...) -> None: ...

class RangeResponse(_message.Message):
    __slots__ = ("header", "kvs", "more", "count")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KVS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    kvs: _containers.RepeatedCompositeFieldContainer[KeyValue]
    more: bool
    count: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., kvs: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., more: _Optional[bool] = ..., count: _Optional[int] = ...) -> None: ...

class Compare(_message.Message):
    __slots__ = ("key", "target", "op", "value", "number")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    key: str
    target: CompareTarget
    op: CompareOp
    value: bytes
    number: int
    def __init__(self, key: _Optional[str] = ..., target: _Optional[_Union[CompareTarget, str]] = ..., op: _Optional[_Union[CompareOp, str]] = ..., value: _Optional[bytes] = ..., number: _Optional[int] = ...) -> None: ...

class TxnOp(_message.Message):
    __slots__ = ("put", "delete", "get", "range")
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    put: PutRequest
    delete: DeleteRequest
    get: GetRequest
    range: RangeRequest
    def __init__(self, put: _Optional[_Union[PutRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., get: _Optional[_Union[GetRequest, _Mapping]] = ..., range: _Optional[_Union[RangeRequest, _Mapping]] = ...) -> None: ...

class TxnOpResponse(_message.Message):
    __slots__ = ("put", "delete", "get", "range")
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    put: PutResponse
    delete: DeleteResponse
    get: GetResponse
    range: RangeResponse
    def __init__(self, put: _Optional[_Union[PutResponse, _Mapping]] = ..., delete: _Optional[_Union[DeleteResponse, _Mapping]] = ..., get: _Optional[_Union[GetResponse, _Mapping]] = ..., range: _Optional[_Union[RangeResponse, _Mapping]] = ...) -> None: ...

class TxnRequest(_message.Message):
    __slots__ = ("compare", "success", "failure", "quorum")
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    compare: _containers.RepeatedCompositeFieldContainer[Compare]
    success: _containers.RepeatedCompositeFieldContainer[TxnOp]
    failure: _containers.RepeatedCompositeFieldContainer[TxnOp]
    quorum: WriteQuorum
    def __init__(self, compare: _Optional[_Iterable[_Union[Compare, _Mapping]]] = ..., success: _Optional[_Iterable[_Union[TxnOp, _Mapping]]] = ..., failure: _Optional[_Iterable[_Union[TxnOp, _Mapping]]] = ..., quorum: _Optional[_Union[WriteQuorum, str]] = ...) -> None: ...

class TxnResponse(_message.Message):
    __slots__ = ("header", "succeeded", "responses")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    succeeded: bool
    responses: _containers.RepeatedCompositeFieldContainer[TxnOpResponse]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., succeeded: _Optional[bool] = ..., responses: _Optional[_Iterable[_Union[TxnOpResponse, _Mapping]]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("key", "limit", "read_mode")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    READ_MODE_FIELD_NUMBER: _ClassVar[int]
    key: str
    limit: int
    read_mode: ReadMode
    def __init__(self, key: _Optional[str] = ..., limit: _Optional[int] = ..., read_mode: _Optional[_Union[ReadMode, str]] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("header", "versions")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    versions: _containers.RepeatedCompositeFieldContainer[KeyValue]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("key", "prefix", "start_revision", "prev_kv")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    key: str
    prefix: str
    start_revision: int
    prev_kv: bool
    def __init__(self, key: _Optional[str] = ..., prefix: _Optional[str] = ..., start_revision: _Optional[int] = ..., prev_kv: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("type", "kv", "prev_kv", "expired")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    kv: KeyValue
    prev_kv: KeyValue
    expired: bool
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., kv: _Optional[_Union[KeyValue, _Mapping]] = ..., prev_kv: _Optional[_Union[KeyValue, _Mapping]] = ..., expired: _Optional[bool] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("header", "events")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("header", "session_id", "idle_timeout_ms")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    session_id: int
    idle_timeout_ms: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., session_id: _Optional[int] = ..., idle_timeout_ms: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    def __init__(self, session_id: _Optional[int] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("header", "closed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    closed: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., closed: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("member_id", "leader_id", "raft_term", "role", "commit_index", "applied_index", "revision", "compact_revision", "db_size_bytes", "version", "db_size_in_use_bytes", "progress")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_TERM_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    DB_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DB_SIZE_IN_USE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    leader_id: int
    raft_term: int
    role: str
    commit_index: int
    applied_index: int
    revision: int
    compact_revision: int
    db_size_bytes: int
    version: str
    db_size_in_use_bytes: int
    progress: _containers.RepeatedCompositeFieldContainer[MemberStatus]
    def __init__(self, member_id: _Optional[int] = ..., leader_id: _Optional[int] = ..., raft_term: _Optional[int] = ..., role: _Optional[str] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., revision: _Optional[int] = ..., compact_revision: _Optional[int] = ..., db_size_bytes: _Optional[int] = ..., version: _Optional[str] = ..., db_size_in_use_bytes: _Optional[int] = ..., progress: _Optional[_Iterable[_Union[MemberStatus, _Mapping]]] = ...) -> None: ...

class MemberStatus(_message.Message):
    __slots__ = ("id", "learner", "match_index", "applied_index", "recent_active", "auto_promote")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    RECENT_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    AUTO_PROMOTE_FIELD_NUMBER: _ClassVar[int]
    id: int
    learner: bool
    match_index: int
    applied_index: int
    recent_active: bool
    auto_promote: bool
    def __init__(self, id: _Optional[int] = ..., learner: _Optional[bool] = ..., match_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., recent_active: _Optional[bool] = ..., auto_promote: _Optional[bool] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("id", "client_addr", "cluster_addr", "learner")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    id: int
    client_addr: str
    cluster_addr: str
    learner: bool
    def __init__(self, id: _Optional[int] = ..., client_addr: _Optional[str] = ..., cluster_addr: _Optional[str] = ..., learner: _Optional[bool] = ...) -> None: ...

class MemberListRequest(_message.Message):
    __slots__ = ("read_mode",)
    READ_MODE_FIELD_NUMBER: _ClassVar[int]
    read_mode: ReadMode
    def __init__(self, read_mode: _Optional[_Union[ReadMode, str]] = ...) -> None: ...

class MemberListResponse(_message.Message):
    __slots__ = ("header", "members")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class MemberAddRequest(_message.Message):
    __slots__ = ("id", "client_addr", "cluster_addr", "learner")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    id: int
    client_addr: str
    cluster_addr: str
    learner: bool
    def __init__(self, id: _Optional[int] = ..., client_addr: _Optional[str] = ..., cluster_addr: _Optional[str] = ..., learner: _Optional[bool] = ...) -> None: ...

class MemberAddResponse(_message.Message):
    __slots__ = ("header", "members", "auto_promote")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    AUTO_PROMOTE_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    members: _containers.RepeatedCompositeFieldContainer[Member]
    auto_promote: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., auto_promote: _Optional[bool] = ...) -> None: ...

class MemberPromoteRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class MemberPromoteResponse(_message.Message):
    __slots__ = ("header", "members")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class MemberRemoveRequest(_message.Message):
    __slots__ = ("id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    force: bool
    def __init__(self, id: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class MemberRemoveResponse(_message.Message):
    __slots__ = ("header", "members")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class TransferLeaderRequest(_message.Message):
    __slots__ = ("target_id",)
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    target_id: int
    def __init__(self, target_id: _Optional[int] = ...) -> None: ...

class TransferLeaderResponse(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotInfo(_message.Message):
    __slots__ = ("applied_index", "applied_term", "revision", "compact_revision", "size_bytes", "cluster_id")
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_TERM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    applied_index: int
    applied_term: int
    revision: int
    compact_revision: int
    size_bytes: int
    cluster_id: str
    def __init__(self, applied_index: _Optional[int] = ..., applied_term: _Optional[int] = ..., revision: _Optional[int] = ..., compact_revision: _Optional[int] = ..., size_bytes: _Optional[int] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("header", "info", "remaining_bytes", "blob", "sha256")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    REMAINING_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    info: SnapshotInfo
    remaining_bytes: int
    blob: bytes
    sha256: str
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., info: _Optional[_Union[SnapshotInfo, _Mapping]] = ..., remaining_bytes: _Optional[int] = ..., blob: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...
