"""Istio ``networking.istio.io`` ServiceEntry, DestinationRule and VirtualService: one import for callers.

The model lives in ``networking_model``, the parsers in ``networking_parse`` (ServiceEntry,
DestinationRule) and ``virtual_service_parse``, against the tables of ``istio_schema``. Every
served apiVersion (``v1``, ``v1beta1``, ``v1alpha3``) is accepted; they share one schema.
"""

from __future__ import annotations

from weir.api.errors import ManifestError
from weir.api.networking_model import (
    ClientTLSSettings,
    Destination,
    DestinationRule,
    DestinationRuleSpec,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    L4MatchAttributes,
    LoadBalancerSettings,
    PortTrafficPolicy,
    RouteDestination,
    ServiceEntry,
    ServiceEntryPort,
    ServiceEntrySpec,
    StringMatch,
    Subset,
    TCPRoute,
    TLSRoute,
    TrafficPolicy,
    VirtualService,
    VirtualServiceSpec,
    WorkloadEntry,
)
from weir.api.networking_parse import parse_destination_rule, parse_service_entry
from weir.api.virtual_service_parse import parse_virtual_service

__all__ = [
    "ClientTLSSettings",
    "Destination",
    "DestinationRule",
    "DestinationRuleSpec",
    "HTTPMatchRequest",
    "HTTPMirrorPolicy",
    "HTTPRetry",
    "HTTPRewrite",
    "HTTPRoute",
    "HTTPRouteDestination",
    "L4MatchAttributes",
    "LoadBalancerSettings",
    "ManifestError",
    "PortTrafficPolicy",
    "RouteDestination",
    "ServiceEntry",
    "ServiceEntryPort",
    "ServiceEntrySpec",
    "StringMatch",
    "Subset",
    "TCPRoute",
    "TLSRoute",
    "TrafficPolicy",
    "VirtualService",
    "VirtualServiceSpec",
    "WorkloadEntry",
    "parse_destination_rule",
    "parse_service_entry",
    "parse_virtual_service",
]
