"""The control plane (Istio's istiod): pure cores, driven by thin servers.

``ca`` is the certificate authority: it signs workload CSRs with SPIFFE identities (time from
an injected clock). ``inject`` is the sidecar injector (Istio's injection webhook logic): a
pure function from a Pod manifest to the injected Pod manifest. Modules here compute; serving
HTTP or gRPC, watching the Kubernetes API and running processes belong to drivers. This
package must not know about the node agent, the sidecar agent (``weir.agent``) or the
embedded runtime beyond the manifests and identities they exchange (``weir.api``).
"""
