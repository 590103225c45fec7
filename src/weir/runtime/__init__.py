"""The embedded runtime: weir's stand-in for kubelet and containerd on one machine.

``cni`` executes CNI network configuration lists with libcni's semantics (``cnicache`` is
libcni's on-disk result cache). Pods, processes and the SQLite store build on it; this
package must not know about the control plane, the node agent or capture rules.
"""
