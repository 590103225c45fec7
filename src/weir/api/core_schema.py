"""Tables of the Kubernetes ``core/v1`` Service, Namespace and ServiceAccount fields.

The same shape as :mod:`weir.api.kube_schema` (which holds the Pod's and the walker): the real
field names and JSON types, so an unknown or misspelt field is an error with a suggestion.
"""

from __future__ import annotations

from weir.api import kube_schema as ks
from weir.api.kube_schema import BOOLEAN, INTEGER, OPAQUE, STRING, STRING_MAP, STRINGS, Enum, ListOf, Obj

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")

SERVICE_PORT = Obj("ServicePort", {
    "name": STRING, "protocol": Enum(("TCP", "UDP", "SCTP")), "appProtocol": STRING, "port": INTEGER,
    "targetPort": ks.INT_OR_STRING, "nodePort": INTEGER,
})
SERVICE_SPEC = Obj("ServiceSpec", {
    "ports": ListOf(SERVICE_PORT),
    "selector": STRING_MAP,
    "clusterIP": STRING,
    "clusterIPs": STRINGS,
    "type": Enum(SERVICE_TYPES),
    "externalIPs": STRINGS,
    "sessionAffinity": Enum(("ClientIP", "None")),
    "loadBalancerIP": STRING,
    "loadBalancerSourceRanges": STRINGS,
    "externalName": STRING,
    "externalTrafficPolicy": Enum(("Cluster", "Local")),
    "healthCheckNodePort": INTEGER,
    "publishNotReadyAddresses": BOOLEAN,
    "sessionAffinityConfig": Obj("SessionAffinityConfig", {
        "clientIP": Obj("ClientIPConfig", {"timeoutSeconds": INTEGER}),
    }),
    "ipFamilies": ListOf(Enum(("IPv4", "IPv6"))),
    "ipFamilyPolicy": Enum(("SingleStack", "PreferDualStack", "RequireDualStack")),
    "allocateLoadBalancerNodePorts": BOOLEAN,
    "loadBalancerClass": STRING,
    "internalTrafficPolicy": Enum(("Cluster", "Local")),
    "trafficDistribution": STRING,
})
SERVICE = Obj("Service", {"apiVersion": STRING, "kind": STRING, "metadata": ks.OBJECT_META, "spec": SERVICE_SPEC,
                          "status": OPAQUE})

NAMESPACE = Obj("Namespace", {
    "apiVersion": STRING, "kind": STRING, "metadata": ks.OBJECT_META,
    "spec": Obj("NamespaceSpec", {"finalizers": STRINGS}), "status": OPAQUE,
})

OBJECT_REFERENCE = Obj("ObjectReference", {
    "kind": STRING, "namespace": STRING, "name": STRING, "uid": STRING, "apiVersion": STRING,
    "resourceVersion": STRING, "fieldPath": STRING,
})
SERVICE_ACCOUNT = Obj("ServiceAccount", {
    "apiVersion": STRING, "kind": STRING, "metadata": ks.OBJECT_META, "secrets": ListOf(OBJECT_REFERENCE),
    "imagePullSecrets": ListOf(ks.LOCAL_OBJECT_REFERENCE), "automountServiceAccountToken": BOOLEAN,
})

LIST = Obj("List", {
    "apiVersion": STRING, "kind": STRING,
    "metadata": Obj("ListMeta", {"selfLink": STRING, "resourceVersion": STRING, "continue": STRING,
                                 "remainingItemCount": INTEGER}),
    "items": ListOf(OPAQUE),
})
