"""Istio's name table (NDS) as a protobuf message, built at import time: what the control plane
pushes to each sidecar agent's DNS proxy over ADS, and what the agent reads.

Istio sends ``type.googleapis.com/istio.networking.nds.v1.NameTable`` (``pkg/dns/proto/nds.proto``)
on the agent's xDS stream; weir keeps the type URL and the message, field for field::

    message NameTable {
      message NameInfo {
        repeated string ips = 1;        // the host's addresses
        string registry = 2;            // "Kubernetes" or "External" (a ServiceEntry)
        string shortname = 3;           // Kubernetes only: the Service's name ...
        string namespace = 4;           // ... and namespace, from which the agent makes short names
        repeated string alt_hosts = 5 [deprecated = true];  // further names for the same host
        string cname = 100;             // weir's extension, see below
      }
      map<string, NameInfo> table = 1;  // fully qualified hostname (no trailing dot) -> its info
      NameInfo name_info = 2;           // Istio's, for named NDS resources; weir leaves it unset
    }

``cname`` is weir's: an ``ExternalName`` Service is an alias (a CNAME to ``spec.externalName``),
which Istio's message cannot say. Field 100 is far from Istio's numbers, so an Istio agent
skips it as an unknown field and a weir agent reads Istio's tables unchanged.

The descriptor goes into protobuf's default pool, so ``google.protobuf.Any`` packs and unpacks
the message by its type URL and ``json_format`` parses it, like the ``*_pb2`` modules of
``xds-protos``. Importing this module twice is harmless: an identical file is not added again.
No I/O; both ``weir.control`` and ``weir.agent`` import it.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE: Final = "istio.networking.nds.v1"
TYPE_URL: Final = f"type.googleapis.com/{PACKAGE}.NameTable"
FILE_NAME: Final = "weir/platform/nds.proto"
"""The descriptor's file name in the pool (Istio's is ``pkg/dns/proto/nds.proto``)."""
CNAME_FIELD: Final = 100
"""weir's extension field of ``NameInfo``: the target of an alias."""

REGISTRY_KUBERNETES: Final = "Kubernetes"
"""``NameInfo.registry`` of a Kubernetes Service (Istio's ``provider.Kubernetes``)."""
REGISTRY_EXTERNAL: Final = "External"
"""``NameInfo.registry`` of a ServiceEntry host (Istio's ``provider.External``)."""

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, *, repeated: bool = False, type_name: str = "",
           json_name: str = "") -> descriptor_pb2.FieldDescriptorProto:
    spec = _F(name=name, number=number, type=kind,
              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
              json_name=json_name or name)
    if type_name:
        spec.type_name = type_name
    return spec


def _file() -> descriptor_pb2.FileDescriptorProto:
    """``nds.proto`` as a descriptor: what ``protoc`` would make of it, plus ``cname``."""
    name_info = descriptor_pb2.DescriptorProto(name="NameInfo", field=[
        _field("ips", 1, _F.TYPE_STRING, repeated=True),
        _field("registry", 2, _F.TYPE_STRING),
        _field("shortname", 3, _F.TYPE_STRING),
        _field("namespace", 4, _F.TYPE_STRING),
        _field("alt_hosts", 5, _F.TYPE_STRING, repeated=True, json_name="altHosts"),
        _field("cname", CNAME_FIELD, _F.TYPE_STRING),
    ])
    name_info.field[4].options.deprecated = True
    # A protobuf map is a repeated nested "<Field>Entry" message with key and value, marked map_entry.
    table_entry = descriptor_pb2.DescriptorProto(name="TableEntry", field=[
        _field("key", 1, _F.TYPE_STRING),
        _field("value", 2, _F.TYPE_MESSAGE, type_name=f".{PACKAGE}.NameTable.NameInfo"),
    ])
    table_entry.options.map_entry = True
    name_table = descriptor_pb2.DescriptorProto(name="NameTable", nested_type=[name_info, table_entry], field=[
        _field("table", 1, _F.TYPE_MESSAGE, repeated=True, type_name=f".{PACKAGE}.NameTable.TableEntry"),
        _field("name_info", 2, _F.TYPE_MESSAGE, type_name=f".{PACKAGE}.NameTable.NameInfo", json_name="nameInfo"),
    ])
    return descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3",
                                              message_type=[name_table])


def _register() -> Any:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(FILE_NAME)
    except KeyError:
        pool.Add(_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.NameTable"))


NameTable: Final[Any] = _register()
"""The message class: ``NameTable(table={"a.ns.svc.cluster.local": NameTable.NameInfo(ips=[...])})``."""
NameInfo: Final[Any] = NameTable.NameInfo


AGENT_CLIENT_KEY: Final = "WEIR_XDS_CLIENT"
"""Node metadata key the sidecar agent sets on its own ADS stream (the one for name tables) ..."""
AGENT_CLIENT: Final = "agent"
"""... with this value, so the control plane sends that stream tables only, and compiles no Envoy config."""
