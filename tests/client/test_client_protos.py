"""The client's own generated stubs live beside the server's in one process.

admitd_client cannot import the server package (it installs alone), so it has its own copy
of admission_pb2 (scripts/gen_protos.py). Both register "admitd/v1/admission.proto" in
protobuf's default descriptor pool, which accepts the second registration only while the
two are identical: these tests pin that, in both import orders, in fresh interpreters.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, timestamp_pb2

from admitd.v1 import admission_pb2 as server_pb
from admitd_client._proto import admission_pb2 as client_pb

IMPORTS = {
    "server": "from admitd.v1 import admission_pb2 as server_pb",
    "client": "from admitd_client._proto import admission_pb2 as client_pb",
}


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("first", ["server", "client"])
def test_both_stubs_import_in_one_process(first: str) -> None:
    second = "client" if first == "server" else "server"
    out = run_python(f"""
        {IMPORTS[first]}
        {IMPORTS[second]}
        lease = client_pb.Lease(lease_id="ab", reserved_tokens=7)
        again = server_pb.Lease.FromString(lease.SerializeToString())
        print(again.lease_id, again.reserved_tokens, again.DESCRIPTOR.full_name)
    """)
    assert out == "ab 7 admitd.v1.Lease"


def test_the_two_descriptors_are_identical() -> None:
    assert client_pb.DESCRIPTOR.serialized_pb == server_pb.DESCRIPTOR.serialized_pb
    assert client_pb.DESCRIPTOR.name == "admitd/v1/admission.proto"


def test_a_different_copy_would_not_load() -> None:
    """Why gen_protos.py --check covers both targets: one field of drift breaks imports."""
    pool = descriptor_pool.DescriptorPool()
    for module in (duration_pb2, timestamp_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(client_pb.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(server_pb.DESCRIPTOR.serialized_pb)  # identical: accepted
    drifted = descriptor_pb2.FileDescriptorProto.FromString(client_pb.DESCRIPTOR.serialized_pb)
    lease = next(m for m in drifted.message_type if m.name == "Lease")
    lease.field.add(
        name="extra",
        number=99,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    with pytest.raises(TypeError, match=r"duplicate file name admitd/v1/admission\.proto"):
        pool.AddSerializedFile(drifted.SerializeToString())


def test_the_client_imports_neither_the_server_nor_googleapis() -> None:
    out = run_python("""
        import sys
        import admitd_client
        print(sorted(m for m in sys.modules
                     if m == "admitd" or m.startswith(("admitd.", "google.rpc", "grpc_status"))))
    """)
    assert out == "[]"
