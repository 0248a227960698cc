import purerpc
import ggap.pb.kv_pb2 as ggap_dot_pb_dot_kv__pb2


class KvServiceServicer(purerpc.Servicer):
    async def Put(self, input_message):
        raise NotImplementedError()

    async def Get(self, input_message):
        raise NotImplementedError()

    async def Delete(self, input_message):
        raise NotImplementedError()

    async def Range(self, input_message):
        raise NotImplementedError()

    async def Txn(self, input_message):
        raise NotImplementedError()

    async def History(self, input_message):
        raise NotImplementedError()

    async def Watch(self, input_message):
        raise NotImplementedError()

    async def Compact(self, input_message):
        raise NotImplementedError()

    async def OpenSession(self, input_message):
        raise NotImplementedError()

    async def CloseSession(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "ginnungagap.v1.KvService"
        )
        service_obj.add_method(
            "Put",
            self.Put,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.PutRequest,
                ggap_dot_pb_dot_kv__pb2.PutResponse,
            )
        )
        service_obj.add_method(
            "Get",
            self.Get,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.GetRequest,
                ggap_dot_pb_dot_kv__pb2.GetResponse,
            )
        )
        service_obj.add_method(
            "Delete",
            self.Delete,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.DeleteRequest,
                ggap_dot_pb_dot_kv__pb2.DeleteResponse,
            )
        )
        service_obj.add_method(
            "Range",
            self.Range,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.RangeRequest,
                ggap_dot_pb_dot_kv__pb2.RangeResponse,
            )
        )
        service_obj.add_method(
            "Txn",
            self.Txn,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.TxnRequest,
                ggap_dot_pb_dot_kv__pb2.TxnResponse,
            )
        )
        service_obj.add_method(
            "History",
            self.History,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.HistoryRequest,
                ggap_dot_pb_dot_kv__pb2.HistoryResponse,
            )
        )
        service_obj.add_method(
            "Watch",
            self.Watch,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                ggap_dot_pb_dot_kv__pb2.WatchRequest,
                ggap_dot_pb_dot_kv__pb2.WatchResponse,
            )
        )
        service_obj.add_method(
            "Compact",
            self.Compact,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.CompactRequest,
                ggap_dot_pb_dot_kv__pb2.CompactResponse,
            )
        )
        service_obj.add_method(
            "OpenSession",
            self.OpenSession,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.OpenSessionRequest,
                ggap_dot_pb_dot_kv__pb2.OpenSessionResponse,
            )
        )
        service_obj.add_method(
            "CloseSession",
            self.CloseSession,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.CloseSessionRequest,
                ggap_dot_pb_dot_kv__pb2.CloseSessionResponse,
            )
        )
        return service_obj


class KvServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "ginnungagap.v1.KvService",
            channel
        )
        self.Put = self._client.get_method_stub(
            "Put",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.PutRequest,
                ggap_dot_pb_dot_kv__pb2.PutResponse,
            )
        )
        self.Get = self._client.get_method_stub(
            "Get",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.GetRequest,
                ggap_dot_pb_dot_kv__pb2.GetResponse,
            )
        )
        self.Delete = self._client.get_method_stub(
            "Delete",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.DeleteRequest,
                ggap_dot_pb_dot_kv__pb2.DeleteResponse,
            )
        )
        self.Range = self._client.get_method_stub(
            "Range",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.RangeRequest,
                ggap_dot_pb_dot_kv__pb2.RangeResponse,
            )
        )
        self.Txn = self._client.get_method_stub(
            "Txn",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.TxnRequest,
                ggap_dot_pb_dot_kv__pb2.TxnResponse,
            )
        )
        self.History = self._client.get_method_stub(
            "History",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.HistoryRequest,
                ggap_dot_pb_dot_kv__pb2.HistoryResponse,
            )
        )
        self.Watch = self._client.get_method_stub(
            "Watch",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                ggap_dot_pb_dot_kv__pb2.WatchRequest,
                ggap_dot_pb_dot_kv__pb2.WatchResponse,
            )
        )
        self.Compact = self._client.get_method_stub(
            "Compact",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.CompactRequest,
                ggap_dot_pb_dot_kv__pb2.CompactResponse,
            )
        )
        self.OpenSession = self._client.get_method_stub(
            "OpenSession",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.OpenSessionRequest,
                ggap_dot_pb_dot_kv__pb2.OpenSessionResponse,
            )
        )
        self.CloseSession = self._client.get_method_stub(
            "CloseSession",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.CloseSessionRequest,
                ggap_dot_pb_dot_kv__pb2.CloseSessionResponse,
            )
        )


class ClusterServiceServicer(purerpc.Servicer):
    async def Status(self, input_message):
        raise NotImplementedError()

    async def MemberList(self, input_message):
        raise NotImplementedError()

    async def MemberAdd(self, input_message):
        raise NotImplementedError()

    async def MemberPromote(self, input_message):
        raise NotImplementedError()

    async def MemberRemove(self, input_message):
        raise NotImplementedError()

    async def TransferLeader(self, input_message):
        raise NotImplementedError()

    async def Snapshot(self, input_message):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "ginnungagap.v1.ClusterService"
        )
        service_obj.add_method(
            "Status",
            self.Status,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.StatusRequest,
                ggap_dot_pb_dot_kv__pb2.StatusResponse,
            )
        )
        service_obj.add_method(
            "MemberList",
            self.MemberList,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.MemberListRequest,
                ggap_dot_pb_dot_kv__pb2.MemberListResponse,
            )
        )
        service_obj.add_method(
            "MemberAdd",
            self.MemberAdd,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.MemberAddRequest,
                ggap_dot_pb_dot_kv__pb2.MemberAddResponse,
            )
        )
        service_obj.add_method(
            "MemberPromote",
            self.MemberPromote,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.MemberPromoteRequest,
                ggap_dot_pb_dot_kv__pb2.MemberPromoteResponse,
            )
        )
        service_obj.add_method(
            "MemberRemove",
            self.MemberRemove,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.MemberRemoveRequest,
                ggap_dot_pb_dot_kv__pb2.MemberRemoveResponse,
            )
        )
        service_obj.add_method(
            "TransferLeader",
            self.TransferLeader,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.TransferLeaderRequest,
                ggap_dot_pb_dot_kv__pb2.TransferLeaderResponse,
            )
        )
        service_obj.add_method(
            "Snapshot",
            self.Snapshot,
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                ggap_dot_pb_dot_kv__pb2.SnapshotRequest,
                ggap_dot_pb_dot_kv__pb2.SnapshotResponse,
            )
        )
        return service_obj


class ClusterServiceStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "ginnungagap.v1.ClusterService",
            channel
        )
        self.Status = self._client.get_method_stub(
            "Status",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.StatusRequest,
                ggap_dot_pb_dot_kv__pb2.StatusResponse,
            )
        )
        self.MemberList = self._client.get_method_stub(
            "MemberList",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.MemberListRequest,
                ggap_dot_pb_dot_kv__pb2.MemberListResponse,
            )
        )
        self.MemberAdd = self._client.get_method_stub(
            "MemberAdd",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.MemberAddRequest,
                ggap_dot_pb_dot_kv__pb2.MemberAddResponse,
            )
        )
        self.MemberPromote = self._client.get_method_stub(
            "MemberPromote",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.MemberPromoteRequest,
                ggap_dot_pb_dot_kv__pb2.MemberPromoteResponse,
            )
        )
        self.MemberRemove = self._client.get_method_stub(
            "MemberRemove",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.MemberRemoveRequest,
                ggap_dot_pb_dot_kv__pb2.MemberRemoveResponse,
            )
        )
        self.TransferLeader = self._client.get_method_stub(
            "TransferLeader",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_UNARY,
                ggap_dot_pb_dot_kv__pb2.TransferLeaderRequest,
                ggap_dot_pb_dot_kv__pb2.TransferLeaderResponse,
            )
        )
        self.Snapshot = self._client.get_method_stub(
            "Snapshot",
            purerpc.RPCSignature(
                purerpc.Cardinality.UNARY_STREAM,
                ggap_dot_pb_dot_kv__pb2.SnapshotRequest,
                ggap_dot_pb_dot_kv__pb2.SnapshotResponse,
            )
        )