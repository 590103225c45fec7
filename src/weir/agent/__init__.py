"""The sidecar agent (Istio's pilot-agent): what runs next to a workload's Envoy.

``certs`` is the workload side of the mesh's identities: it makes the key and CSR, verifies
the chain the CA sends back and decides when to rotate, all pure (time is a parameter).
Envoy bootstrap and lifecycle, SDS, the DNS proxy and the status server build on it. This
package must not know about the control plane (``weir.control``), the node agent or the
embedded runtime: what it shares with the CA lives in ``weir.api`` (``weir.api.spiffe``).
"""
