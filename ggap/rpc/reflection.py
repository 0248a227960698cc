"""gRPC server reflection (v1alpha and v1) answered from the protobuf descriptor pool.

Both versions share one wire format; grpcurl asks v1 first and falls back to v1alpha,
older tools only know v1alpha, so both are served by the same logic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import ModuleType
from typing import Any

import purerpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from ggap.pb import reflection_v1_grpc, reflection_v1_pb2, reflection_v1alpha_grpc, reflection_v1alpha_pb2
from ggap.rpc.server import RpcPolicy, guarded_service
from ggap.types.errors import StatusCode

__all__ = ["REFLECTION_V1", "REFLECTION_V1ALPHA", "reflection_services"]

REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class _NotFound(LookupError):
    pass


def _file_containing_symbol(pool: descriptor_pool.DescriptorPool, symbol: str) -> FileDescriptor:
    try:
        return pool.FindFileContainingSymbol(symbol)
    except KeyError:
        pass
    # The pool does not index methods or enum values scoped under their enum by full
    # name; look them up through their parent.
    parent, _, member = symbol.rpartition(".")
    if parent and member:
        try:
            service = pool.FindServiceByName(parent)
        except KeyError:
            pass
        else:
            if member in service.methods_by_name:
                return service.file
        try:
            enum = pool.FindEnumTypeByName(parent)
        except KeyError:
            pass
        else:
            if member in enum.values_by_name:
                return enum.file
    raise _NotFound(f"symbol not found: {symbol}")


def _with_dependencies(root: FileDescriptor) -> list[bytes]:
    """The file first, then everything it imports transitively, each once."""
    seen = {root.name}
    order = [root]
    i = 0
    while i < len(order):
        for dep in order[i].dependencies:
            if dep.name not in seen:
                seen.add(dep.name)
                order.append(dep)
        i += 1
    return [f.serialized_pb for f in order]


class _Reflection:
    """The protocol logic, parametrised by the generated module of one version."""

    def __init__(self, pb: ModuleType, service_names: Sequence[str], pool: descriptor_pool.DescriptorPool):
        self._pb = pb
        self._names = list(service_names)
        self._pool = pool

    def answer(self, req: Any) -> Any:
        pb = self._pb
        resp = pb.ServerReflectionResponse(valid_host=req.host)
        resp.original_request.CopyFrom(req)
        kind = req.WhichOneof("message_request")
        try:
            if kind == "list_services":
                for name in self._names:
                    resp.list_services_response.service.add(name=name)
            elif kind == "file_by_filename":
                fd = self._find(self._pool.FindFileByName, req.file_by_filename, "file")
                resp.file_descriptor_response.file_descriptor_proto.extend(_with_dependencies(fd))
            elif kind == "file_containing_symbol":
                fd = _file_containing_symbol(self._pool, req.file_containing_symbol)
                resp.file_descriptor_response.file_descriptor_proto.extend(_with_dependencies(fd))
            elif kind == "file_containing_extension":
                ext_req = req.file_containing_extension
                message = self._find(self._pool.FindMessageTypeByName, ext_req.containing_type, "type")
                try:
                    ext = self._pool.FindExtensionByNumber(message, ext_req.extension_number)
                except KeyError:
                    raise _NotFound(
                        f"extension {ext_req.extension_number} of {ext_req.containing_type} not found"
                    ) from None
                resp.file_descriptor_response.file_descriptor_proto.extend(_with_dependencies(ext.file))
            elif kind == "all_extension_numbers_of_type":
                message = self._find(
                    self._pool.FindMessageTypeByName, req.all_extension_numbers_of_type, "type"
                )
                numbers = sorted(ext.number for ext in self._pool.FindAllExtensions(message))
                resp.all_extension_numbers_response.base_type_name = message.full_name
                resp.all_extension_numbers_response.extension_number.extend(numbers)
            else:
                resp.error_response.error_code = StatusCode.INVALID_ARGUMENT
                resp.error_response.error_message = "empty reflection request"
        except _NotFound as exc:
            resp.ClearField("message_response")
            resp.error_response.error_code = StatusCode.NOT_FOUND
            resp.error_response.error_message = str(exc)
        return resp

    @staticmethod
    def _find(lookup: Any, name: str, what: str) -> Any:
        try:
            return lookup(name)
        except KeyError:
            raise _NotFound(f"{what} not found: {name}") from None

    async def stream(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for req in requests:
            yield self.answer(req)


class _V1AlphaServicer(reflection_v1alpha_grpc.ServerReflectionServicer):
    def __init__(self, logic: _Reflection) -> None:
        self._logic = logic

    def ServerReflectionInfo(self, input_messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return self._logic.stream(input_messages)


class _V1Servicer(reflection_v1_grpc.ServerReflectionServicer):
    def __init__(self, logic: _Reflection) -> None:
        self._logic = logic

    def ServerReflectionInfo(self, input_messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return self._logic.stream(input_messages)


def reflection_services(
    service_names: Sequence[str],
    *,
    pool: descriptor_pool.DescriptorPool | None = None,
    max_in_flight: int = 256,
) -> list[purerpc.Service]:
    """Both reflection services, listing `service_names` plus themselves.

    Every name listed must have its generated `_pb2` module imported (that registers it
    in the default pool), or `describe` of it answers NOT_FOUND.
    """
    names = sorted({*service_names, REFLECTION_V1ALPHA, REFLECTION_V1})
    pool = pool if pool is not None else descriptor_pool.Default()
    # Its own small limit, apart from the KV requests.
    policy = RpcPolicy(default_timeout_s=30.0, max_in_flight=max_in_flight)
    return [
        guarded_service(_V1AlphaServicer(_Reflection(reflection_v1alpha_pb2, names, pool)), policy),
        guarded_service(_V1Servicer(_Reflection(reflection_v1_pb2, names, pool)), policy),
    ]
