"""Server reflection, v1alpha and v1, asked by grpcio with our own ggap.pb messages.

(grpc_reflection is not imported: its descriptors clash with ggap.pb's in the default pool.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import grpc
import pytest
import trio
from google.protobuf import descriptor_pb2, descriptor_pool

import ggap.pb.kv_pb2  # noqa: F401  (registers ginnungagap.v1 in the default pool)
from ggap.pb import (
    reflection_v1_pb2,
    reflection_v1_pb2_grpc,
    reflection_v1alpha_pb2,
    reflection_v1alpha_pb2_grpc,
)
from ggap.rpc import REFLECTION_V1, REFLECTION_V1ALPHA, reflection_services, serve_grpc

KV = "ginnungagap.v1.KvService"
HEALTH = "grpc.health.v1.Health"
# No proxy, and a connection per channel: closing a channel must really disconnect.
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]

VERSIONS = {
    "v1alpha": (reflection_v1alpha_pb2, reflection_v1alpha_pb2_grpc),
    "v1": (reflection_v1_pb2, reflection_v1_pb2_grpc),
}


@contextmanager
def reflection_stub(port: int, grpc_mod: ModuleType) -> Iterator[Any]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    try:
        yield grpc_mod.ServerReflectionStub(ch)
    finally:
        ch.close()


async def ask(port: int, version: str, requests: list[dict[str, Any]]) -> list[Any]:
    """Send all requests on one bidi stream; one response each, in order."""
    pb, grpc_mod = VERSIONS[version]
    msgs = [pb.ServerReflectionRequest(host="h", **r) for r in requests]

    def run() -> list[Any]:
        with reflection_stub(port, grpc_mod) as stub:
            return list(stub.ServerReflectionInfo(iter(msgs), timeout=5))

    return await trio.to_thread.run_sync(run)


def parse_files(resp: Any) -> list[descriptor_pb2.FileDescriptorProto]:
    assert resp.WhichOneof("message_response") == "file_descriptor_response", resp
    out = []
    for raw in resp.file_descriptor_response.file_descriptor_proto:
        fdp = descriptor_pb2.FileDescriptorProto()
        fdp.ParseFromString(raw)
        out.append(fdp)
    return out


async def start(nursery: trio.Nursery, names: list[str], **kw: Any) -> int:
    services = reflection_services(names, **kw)
    return await nursery.start(
        functools.partial(serve_grpc, services, "127.0.0.1", 0, max_message_bytes=1 << 20)
    )


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
async def test_list_and_describe(nursery: trio.Nursery, version: str) -> None:
    with trio.fail_after(10):
        port = await start(nursery, [KV, HEALTH])
        r_list, r_svc, r_method, r_msg, r_enum, r_value, r_file, r_health = await ask(
            port,
            version,
            [
                {"list_services": ""},
                {"file_containing_symbol": KV},
                {"file_containing_symbol": KV + ".Put"},
                {"file_containing_symbol": "ginnungagap.v1.PutRequest"},
                {"file_containing_symbol": "ginnungagap.v1.ReadMode"},
                {"file_containing_symbol": "ginnungagap.v1.ReadMode.READ_MODE_LINEARIZABLE"},
                {"file_by_filename": "ggap/pb/kv.proto"},
                {"file_containing_symbol": HEALTH},
            ],
        )
        names = [s.name for s in r_list.list_services_response.service]
        assert names == sorted([KV, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA])
        assert r_list.valid_host == "h"
        assert r_list.original_request.WhichOneof("message_request") == "list_services"

        (kv_file,) = parse_files(r_svc)
        assert kv_file.package == "ginnungagap.v1"
        assert "KvService" in [s.name for s in kv_file.service]
        assert [m.name for s in kv_file.service if s.name == "KvService" for m in s.method][:2] == [
            "Put",
            "Get",
        ]
        assert "PutRequest" in [m.name for m in kv_file.message_type]
        for resp in (r_method, r_msg, r_enum, r_value, r_file):
            assert [f.name for f in parse_files(resp)] == [kv_file.name]
        (health_file,) = parse_files(r_health)
        assert health_file.package == "grpc.health.v1"


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
async def test_reflection_services_describe_themselves(nursery: trio.Nursery, version: str) -> None:
    with trio.fail_after(10):
        port = await start(nursery, [KV])
        (resp,) = await ask(
            port, version, [{"file_containing_symbol": f"grpc.reflection.{version}.ServerReflection"}]
        )
        (fdp,) = parse_files(resp)
        assert fdp.package == f"grpc.reflection.{version}"
        assert [s.name for s in fdp.service] == ["ServerReflection"]


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
async def test_unknown_names_get_error_responses(nursery: trio.Nursery, version: str) -> None:
    pb, _ = VERSIONS[version]
    with trio.fail_after(10):
        port = await start(nursery, [KV])
        answers = await ask(
            port,
            version,
            [
                {"file_containing_symbol": "no.such.Symbol"},
                {"file_containing_symbol": KV + ".NoSuchMethod"},
                {"file_by_filename": "no/such.proto"},
                {"file_containing_extension": pb.ExtensionRequest(containing_type=KV, extension_number=5)},
                {
                    "file_containing_extension": pb.ExtensionRequest(
                        containing_type="ginnungagap.v1.PutRequest", extension_number=100
                    )
                },
                {"all_extension_numbers_of_type": "no.such.Type"},
                {},
            ],
        )
        codes = [a.error_response.error_code for a in answers]
        assert codes == [5, 5, 5, 5, 5, 5, 3]
        assert all(a.WhichOneof("message_response") == "error_response" for a in answers)
        assert "no.such.Symbol" in answers[0].error_response.error_message


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
async def test_all_extension_numbers_of_a_message(nursery: trio.Nursery, version: str) -> None:
    with trio.fail_after(10):
        port = await start(nursery, [KV])
        (resp,) = await ask(port, version, [{"all_extension_numbers_of_type": "ginnungagap.v1.PutRequest"}])
        assert resp.WhichOneof("message_response") == "all_extension_numbers_response"
        assert resp.all_extension_numbers_response.base_type_name == "ginnungagap.v1.PutRequest"
        assert list(resp.all_extension_numbers_response.extension_number) == []


def _pool_with_chain() -> descriptor_pool.DescriptorPool:
    """c.proto <- b.proto <- a.proto (a imports b and c, b imports c); a has service A."""
    pool = descriptor_pool.DescriptorPool()
    c = descriptor_pb2.FileDescriptorProto(name="t/c.proto", package="t", syntax="proto3")
    c.message_type.add(name="C")
    b = descriptor_pb2.FileDescriptorProto(
        name="t/b.proto", package="t", syntax="proto3", dependency=["t/c.proto"]
    )
    bm = b.message_type.add(name="B")
    bm.field.add(name="c", number=1, type=11, type_name=".t.C", label=1)
    a = descriptor_pb2.FileDescriptorProto(
        name="t/a.proto", package="t", syntax="proto3", dependency=["t/b.proto", "t/c.proto"]
    )
    a.message_type.add(name="Req")
    svc = a.service.add(name="A")
    svc.method.add(name="Do", input_type=".t.Req", output_type=".t.B")
    for fdp in (c, b, a):
        pool.Add(fdp)
    return pool


async def test_transitive_dependencies_come_once_each(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        port = await start(nursery, ["t.A"], pool=_pool_with_chain())
        (resp, resp_c) = await ask(
            port, "v1", [{"file_containing_symbol": "t.A.Do"}, {"file_containing_symbol": "t.C"}]
        )
        assert [f.name for f in parse_files(resp)] == ["t/a.proto", "t/b.proto", "t/c.proto"]
        assert [f.name for f in parse_files(resp_c)] == ["t/c.proto"]
