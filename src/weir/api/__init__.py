"""Kubernetes- and Istio-shaped resources as frozen dataclasses, parsed once at the edge.

The bottom layer of weir (under ``weir.netns``): it imports only the standard library, so
every other package may use it. It decodes nothing itself: callers pass the dicts that
``yaml.safe_load`` or ``json.loads`` returned, and get typed values or a
:class:`ManifestError` naming each bad field by its JSON path. It knows nothing of processes,
namespaces or the Kubernetes API. Import from the modules: ``weir.api.pod`` is the Pod
model's one entry point; ``service`` and ``core`` (Namespace, ServiceAccount) hold the other
core/v1 kinds, ``networking`` the Istio ServiceEntry, DestinationRule and VirtualService,
``security`` the PeerAuthentication, and ``load`` turns manifest text or files into any of them.
"""
