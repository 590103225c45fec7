"""Istio's CA protocol (``istio.v1.auth.IstioCertificateService``) as protobuf message classes.

The control plane's CA service (``weir.control.casvc``) and the sidecar's client
(``weir.agent.caclient``) may not import each other, so the wire format sits here, below both.
The messages are Istio's ``security/v1alpha1/ca.proto``, field for field::

    message IstioCertificateRequest {
      string csr = 1;
      int64 validity_duration = 3;        // seconds
      google.protobuf.Struct metadata = 4;
    }
    message IstioCertificateResponse {
      repeated string cert_chain = 1;     // leaf, intermediates ..., root (PEM each)
    }
    service IstioCertificateService {
      rpc CreateCertificate(IstioCertificateRequest) returns (IstioCertificateResponse);
    }

They are built once, at import time, from a ``FileDescriptorProto`` in a private descriptor
pool (no ``protoc``, no generated files, nothing added to protobuf's default pool), so any
Istio client or server interoperates with the same bytes. No I/O.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE: Final = "istio.v1.auth"
SERVICE: Final = f"{PACKAGE}.IstioCertificateService"
METHOD: Final = "CreateCertificate"
METHOD_PATH: Final = f"/{SERVICE}/{METHOD}"
"""The gRPC path a client calls."""
PROTO_FILE: Final = "security/v1alpha1/ca.proto"
"""Istio's file name for these definitions (``istio.io/api``)."""


def _file() -> descriptor_pb2.FileDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name=PROTO_FILE, package=PACKAGE, syntax="proto3",
                                               dependency=[struct_pb2.DESCRIPTOR.name])
    request = proto.message_type.add(name="IstioCertificateRequest")
    request.field.add(name="csr", json_name="csr", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    request.field.add(name="validity_duration", json_name="validityDuration", number=3, type=field.TYPE_INT64,
                      label=field.LABEL_OPTIONAL)
    request.field.add(name="metadata", json_name="metadata", number=4, type=field.TYPE_MESSAGE,
                      type_name=".google.protobuf.Struct", label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="IstioCertificateResponse")
    response.field.add(name="cert_chain", json_name="certChain", number=1, type=field.TYPE_STRING,
                       label=field.LABEL_REPEATED)
    service = proto.service.add(name="IstioCertificateService")
    service.method.add(name=METHOD, input_type=f".{PACKAGE}.IstioCertificateRequest",
                       output_type=f".{PACKAGE}.IstioCertificateResponse")
    return proto


def _build() -> tuple[Any, Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    struct_file = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(struct_file)
    pool.Add(struct_file)
    pool.Add(_file())
    file = pool.FindFileByName(PROTO_FILE)
    return (message_factory.GetMessageClass(file.message_types_by_name["IstioCertificateRequest"]),
            message_factory.GetMessageClass(file.message_types_by_name["IstioCertificateResponse"]),
            file.services_by_name["IstioCertificateService"])


IstioCertificateRequest, IstioCertificateResponse, SERVICE_DESCRIPTOR = _build()
"""The message classes (use them as generated ``*_pb2`` classes) and the service's descriptor."""
