"""Tables of Istio's ``networking.istio.io`` and ``security.istio.io`` fields, as its CRDs take them.

Field names are the JSON (camelCase) names of Istio's protos; every nested message is tabled,
so a misspelt field anywhere is an error with a suggestion. Durations, ports and percentages
carry their value checks (:class:`~weir.api.kube_schema.Checked`), so subtrees that weir
accepts without modelling (connection pools, outlier detection, fault injection) are checked
too. Maps keyed by port number (``portLevelMtls``) are checked by their parser.
"""

from __future__ import annotations

from collections.abc import Mapping

from weir.api import istio_values as iv
from weir.api import kube_schema as ks
from weir.api.kube_schema import (
    BOOLEAN,
    INTEGER,
    NUMBER,
    OPAQUE,
    STRING,
    STRING_MAP,
    STRINGS,
    Checked,
    Enum,
    Kind,
    ListOf,
    MapOf,
    Obj,
)

NETWORKING_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")
SECURITY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")


def obj(name: str, fields: Mapping[str, Kind]) -> Obj:
    return Obj(name, fields, api="an Istio")


def resource(name: str, spec: Obj) -> Obj:
    return obj(name, {"apiVersion": STRING, "kind": STRING, "metadata": ks.OBJECT_META, "spec": spec,
                      "status": OPAQUE})


DURATION = Checked(STRING, iv.duration_problem)
DURATION_OR_ZERO = Checked(STRING, lambda value: iv.duration_problem(value, allow_zero=True))
PORT = Checked(INTEGER, iv.port_number)
NON_NEGATIVE = Checked(INTEGER, iv.non_negative)
PERCENT_INT = Checked(INTEGER, iv.percentage)
PERCENT = obj("Percent", {"value": Checked(NUMBER, iv.percentage)})

# --- shared --------------------------------------------------------------------------------

STRING_MATCH = obj("StringMatch", {"exact": STRING, "prefix": STRING, "regex": STRING})
PORT_SELECTOR = obj("PortSelector", {"number": PORT})
DESTINATION = obj("Destination", {"host": STRING, "subset": STRING, "port": PORT_SELECTOR})
WORKLOAD_SELECTOR = obj("WorkloadSelector", {"matchLabels": STRING_MAP})
_HEADER_OPERATIONS = obj("HeaderOperations", {"set": STRING_MAP, "add": STRING_MAP, "remove": STRINGS})
HEADERS = obj("Headers", {"request": _HEADER_OPERATIONS, "response": _HEADER_OPERATIONS})

# --- ServiceEntry --------------------------------------------------------------------------

SERVICE_ENTRY_PORT = obj("ServicePort", {"number": PORT, "protocol": STRING, "name": STRING,
                                         "targetPort": INTEGER})
WORKLOAD_ENTRY = obj("WorkloadEntry", {
    "address": STRING, "ports": MapOf(PORT), "labels": STRING_MAP, "network": STRING, "locality": STRING,
    "weight": NON_NEGATIVE, "serviceAccount": STRING,
})
SERVICE_ENTRY_SPEC = obj("ServiceEntry spec", {
    "hosts": STRINGS, "addresses": STRINGS, "ports": ListOf(SERVICE_ENTRY_PORT),
    "location": Enum(("MESH_EXTERNAL", "MESH_INTERNAL")),
    "resolution": Enum(("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")),
    "endpoints": ListOf(WORKLOAD_ENTRY), "workloadSelector": obj("WorkloadSelector", {"labels": STRING_MAP}),
    "exportTo": STRINGS, "subjectAltNames": STRINGS,
})
SERVICE_ENTRY = resource("ServiceEntry", SERVICE_ENTRY_SPEC)

# --- DestinationRule -----------------------------------------------------------------------

CLIENT_TLS = obj("ClientTLSSettings", {
    "mode": Enum(("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")), "clientCertificate": STRING,
    "privateKey": STRING, "caCertificates": STRING, "credentialName": STRING, "subjectAltNames": STRINGS,
    "sni": STRING, "insecureSkipVerify": BOOLEAN, "caCrl": STRING,
})
LOAD_BALANCER = obj("LoadBalancerSettings", {
    "simple": Enum(("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST")),
    "consistentHash": obj("ConsistentHashLB", {
        "httpHeaderName": STRING,
        "httpCookie": obj("HTTPCookie", {"name": STRING, "path": STRING, "ttl": DURATION_OR_ZERO,
                                         "attributes": ListOf(obj("Attribute", {"name": STRING, "value": STRING}))}),
        "useSourceIp": BOOLEAN, "httpQueryParameterName": STRING,
        "ringHash": obj("RingHash", {"minimumRingSize": INTEGER}),
        "maglev": obj("MagLev", {"tableSize": INTEGER}),
        "minimumRingSize": INTEGER,
    }),
    "localityLbSetting": obj("LocalityLoadBalancerSetting", {
        "distribute": ListOf(obj("Distribute", {"from": STRING, "to": MapOf(INTEGER)})),
        "failover": ListOf(obj("Failover", {"from": STRING, "to": STRING})),
        "failoverPriority": STRINGS, "enabled": BOOLEAN,
    }),
    "warmupDurationSecs": DURATION,
    "warmup": obj("WarmupConfiguration", {"duration": DURATION, "minimumPercent": NUMBER, "aggression": NUMBER}),
})
CONNECTION_POOL = obj("ConnectionPoolSettings", {
    "tcp": obj("TCPSettings", {
        "maxConnections": NON_NEGATIVE, "connectTimeout": DURATION,
        "tcpKeepalive": obj("TcpKeepalive", {"probes": INTEGER, "time": DURATION, "interval": DURATION}),
        "maxConnectionDuration": DURATION, "idleTimeout": DURATION_OR_ZERO,
    }),
    "http": obj("HTTPSettings", {
        "http1MaxPendingRequests": NON_NEGATIVE, "http2MaxRequests": NON_NEGATIVE,
        "maxRequestsPerConnection": NON_NEGATIVE, "maxRetries": NON_NEGATIVE, "idleTimeout": DURATION,
        "h2UpgradePolicy": Enum(("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")), "useClientProtocol": BOOLEAN,
        "maxConcurrentStreams": NON_NEGATIVE,
    }),
})
OUTLIER_DETECTION = obj("OutlierDetection", {
    "splitExternalLocalOriginErrors": BOOLEAN, "consecutiveLocalOriginFailures": NON_NEGATIVE,
    "consecutiveGatewayErrors": NON_NEGATIVE, "consecutive5xxErrors": NON_NEGATIVE, "interval": DURATION,
    "baseEjectionTime": DURATION, "maxEjectionPercent": PERCENT_INT, "minHealthPercent": PERCENT_INT,
    "consecutiveErrors": INTEGER,
})
PORT_TRAFFIC_POLICY = obj("PortTrafficPolicy", {
    "port": PORT_SELECTOR, "loadBalancer": LOAD_BALANCER, "connectionPool": CONNECTION_POOL,
    "outlierDetection": OUTLIER_DETECTION, "tls": CLIENT_TLS,
})
TRAFFIC_POLICY = obj("TrafficPolicy", {
    "loadBalancer": LOAD_BALANCER, "connectionPool": CONNECTION_POOL, "outlierDetection": OUTLIER_DETECTION,
    "tls": CLIENT_TLS, "portLevelSettings": ListOf(PORT_TRAFFIC_POLICY),
    "tunnel": obj("TunnelSettings", {"protocol": Enum(("CONNECT", "POST")), "targetHost": STRING,
                                     "targetPort": PORT}),
    "proxyProtocol": obj("ProxyProtocol", {"version": Enum(("V1", "V2"))}),
    "retryBudget": obj("RetryBudget", {"percent": PERCENT, "minRetryConcurrency": INTEGER}),
})
SUBSET = obj("Subset", {"name": STRING, "labels": STRING_MAP, "trafficPolicy": TRAFFIC_POLICY})
DESTINATION_RULE_SPEC = obj("DestinationRule spec", {
    "host": STRING, "trafficPolicy": TRAFFIC_POLICY, "subsets": ListOf(SUBSET), "exportTo": STRINGS,
    "workloadSelector": WORKLOAD_SELECTOR,
})
DESTINATION_RULE = resource("DestinationRule", DESTINATION_RULE_SPEC)

# --- VirtualService ------------------------------------------------------------------------

HTTP_MATCH_REQUEST = obj("HTTPMatchRequest", {
    "name": STRING, "uri": STRING_MATCH, "scheme": STRING_MATCH, "method": STRING_MATCH,
    "authority": STRING_MATCH, "headers": MapOf(STRING_MATCH), "port": PORT, "sourceLabels": STRING_MAP,
    "gateways": STRINGS, "queryParams": MapOf(STRING_MATCH), "ignoreUriCase": BOOLEAN,
    "withoutHeaders": MapOf(STRING_MATCH), "sourceNamespace": STRING, "statPrefix": STRING,
})
HTTP_ROUTE_DESTINATION = obj("HTTPRouteDestination", {"destination": DESTINATION, "weight": INTEGER,
                                                       "headers": HEADERS})
HTTP_RETRY = obj("HTTPRetry", {
    "attempts": INTEGER, "perTryTimeout": DURATION, "retryOn": STRING, "retryRemoteLocalities": BOOLEAN,
    "retryIgnorePreviousHosts": BOOLEAN, "backoff": DURATION,
})
HTTP_REWRITE = obj("HTTPRewrite", {
    "uri": STRING, "authority": STRING,
    "uriRegexRewrite": obj("RegexRewrite", {"match": STRING, "rewrite": STRING}),
})
HTTP_FAULT = obj("HTTPFaultInjection", {
    "delay": obj("Delay", {"fixedDelay": DURATION, "exponentialDelay": DURATION, "percentage": PERCENT,
                           "percent": PERCENT_INT}),
    "abort": obj("Abort", {"httpStatus": INTEGER, "grpcStatus": STRING, "http2Error": STRING,
                           "percentage": PERCENT}),
})
HTTP_REDIRECT = obj("HTTPRedirect", {
    "uri": STRING, "authority": STRING, "port": PORT,
    "derivePort": Enum(("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")), "scheme": STRING,
    "redirectCode": INTEGER,
})
HTTP_ROUTE = obj("HTTPRoute", {
    "name": STRING, "match": ListOf(HTTP_MATCH_REQUEST), "route": ListOf(HTTP_ROUTE_DESTINATION),
    "redirect": HTTP_REDIRECT,
    "directResponse": obj("HTTPDirectResponse", {
        "status": INTEGER, "body": obj("HTTPBody", {"string": STRING, "bytes": STRING}),
    }),
    "delegate": obj("Delegate", {"name": STRING, "namespace": STRING}),
    "rewrite": HTTP_REWRITE, "timeout": DURATION, "retries": HTTP_RETRY, "fault": HTTP_FAULT,
    "mirror": DESTINATION,
    "mirrors": ListOf(obj("HTTPMirrorPolicy", {"destination": DESTINATION, "percentage": PERCENT})),
    "mirrorPercent": PERCENT_INT, "mirrorPercentage": PERCENT,
    "corsPolicy": obj("CorsPolicy", {
        "allowOrigin": STRINGS, "allowOrigins": ListOf(STRING_MATCH), "allowMethods": STRINGS,
        "allowHeaders": STRINGS, "exposeHeaders": STRINGS, "maxAge": DURATION, "allowCredentials": BOOLEAN,
        "unmatchedPreflights": Enum(("UNSPECIFIED", "FORWARD", "IGNORE")),
    }),
    "headers": HEADERS,
})
_L4_MATCH_FIELDS: dict[str, Kind] = {
    "destinationSubnets": STRINGS, "port": PORT, "sourceLabels": STRING_MAP, "gateways": STRINGS,
    "sourceNamespace": STRING,
}
ROUTE_DESTINATION = obj("RouteDestination", {"destination": DESTINATION, "weight": INTEGER})
TCP_ROUTE = obj("TCPRoute", {"match": ListOf(obj("L4MatchAttributes", _L4_MATCH_FIELDS)),
                             "route": ListOf(ROUTE_DESTINATION)})
TLS_ROUTE = obj("TLSRoute", {
    "match": ListOf(obj("TLSMatchAttributes", {"sniHosts": STRINGS, **_L4_MATCH_FIELDS})),
    "route": ListOf(ROUTE_DESTINATION),
})
VIRTUAL_SERVICE_SPEC = obj("VirtualService spec", {
    "hosts": STRINGS, "gateways": STRINGS, "http": ListOf(HTTP_ROUTE), "tls": ListOf(TLS_ROUTE),
    "tcp": ListOf(TCP_ROUTE), "exportTo": STRINGS,
})
VIRTUAL_SERVICE = resource("VirtualService", VIRTUAL_SERVICE_SPEC)

# --- PeerAuthentication --------------------------------------------------------------------

MUTUAL_TLS = obj("MutualTLS", {"mode": Enum(("UNSET", "DISABLE", "PERMISSIVE", "STRICT"))})
PEER_AUTHENTICATION_SPEC = obj("PeerAuthentication spec", {
    "selector": WORKLOAD_SELECTOR, "mtls": MUTUAL_TLS,
    "portLevelMtls": OPAQUE,  # keyed by port number: YAML gives int keys, JSON strings (checked by the parser)
})
PEER_AUTHENTICATION = resource("PeerAuthentication", PEER_AUTHENTICATION_SPEC)
