import purerpc
import ggap.pb.reflection_v1alpha_pb2 as ggap_dot_pb_dot_reflection_v1alpha__pb2


class ServerReflectionServicer(purerpc.Servicer):
    async def ServerReflectionInfo(self, input_messages):
        raise NotImplementedError()

    @property
    def service(self) -> purerpc.Service:
        service_obj = purerpc.Service(
            "grpc.reflection.v1alpha.ServerReflection"
        )
        service_obj.add_method(
            "ServerReflectionInfo",
            self.ServerReflectionInfo,
            purerpc.RPCSignature(
                purerpc.Cardinality.STREAM_STREAM,
                ggap_dot_pb_dot_reflection_v1alpha__pb2.ServerReflectionRequest,
                ggap_dot_pb_dot_reflection_v1alpha__pb2.ServerReflectionResponse,
            )
        )
        return service_obj


class ServerReflectionStub:
    def __init__(self, channel):
        self._client = purerpc.Client(
            "grpc.reflection.v1alpha.ServerReflection",
            channel
        )
        self.ServerReflectionInfo = self._client.get_method_stub(
            "ServerReflectionInfo",
            purerpc.RPCSignature(
                purerpc.Cardinality.STREAM_STREAM,
                ggap_dot_pb_dot_reflection_v1alpha__pb2.ServerReflectionRequest,
                ggap_dot_pb_dot_reflection_v1alpha__pb2.ServerReflectionResponse,
            )
        )