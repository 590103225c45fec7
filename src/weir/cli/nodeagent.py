"""``weir node-agent``: run the node agent (Istio's istio-cni-node).

Where pods come from and what repair acts on: with ``--node-root`` (env WEIR_ROOT) the embedded
runtime of that node (its conf and bin dirs, run dir and pod store become the defaults); with
``KUBERNETES_SERVICE_HOST`` set, the Kubernetes API; otherwise a directory of manifests
(``--pods-dir``), without repair.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from weir.cli import _logging
from weir.cli._common import Parser, UsageError
from weir.nodeagent.agent import config_from, serve
from weir.nodeagent.settings import ConfigError
from weir.platform import PodBackend, PodSource

# (flag, help) — every flag also reads Istio's environment name, shown in the help.
_FLAGS = (
    ("--node-root", "embedded node to serve (env WEIR_ROOT): its CNI dirs, run dir and pods"),
    ("--run-dir", "run directory shared with the plugin (CNI_AGENT_RUN_DIR; default /var/run/weir-cni)"),
    ("--cni-conf-dir", "CNI config directory (MOUNTED_CNI_NET_DIR; default /etc/cni/net.d)"),
    ("--cni-bin-dir", "CNI bin directories, comma-separated (CNI_BIN_DIR; default /opt/cni/bin)"),
    ("--cni-conf-name", "the config file to chain into (CNI_CONF_NAME; default: the first valid one)"),
    ("--chained-cni-plugin", "chain into the primary config, or write a standalone one (CHAINED_CNI_PLUGIN)"),
    ("--cni-conf-dropin", "CNI 1.1 drop-in: leave the primary file untouched (CNI_CONF_DROPIN)"),
    ("--install-cni", "install and guard the plugin and its config (WEIR_INSTALL_CNI; default true)"),
    ("--pods-dir", "directory of Pod manifests to look pods up in (WEIR_PODS_DIR)"),
    ("--runtime-db", "the embedded runtime's pod database (WEIR_RUNTIME_DB)"),
    ("--exclude-namespaces", "namespaces never captured, comma-separated (EXCLUDE_NAMESPACES)"),
    ("--fail-open-namespaces", "namespaces whose pods start uncaptured while the agent is down "
     "(WEIR_FAIL_OPEN_NAMESPACES)"),
    ("--pod-namespace", "the agent's own namespace (POD_NAMESPACE)"),
    ("--native-nftables", "program native nftables (NATIVE_NFTABLES)"),
    ("--log-level", "the plugin's log level (CNI_PLUGIN_LOG_LEVEL)"),
    ("--repair-enabled", "run the repair controller (REPAIR_ENABLED)"),
    ("--repair-repair-pods", "repair in place (REPAIR_REPAIR_PODS; default true)"),
    ("--repair-delete-pods", "delete broken pods (REPAIR_DELETE_PODS)"),
    ("--repair-label-pods", "label broken pods (REPAIR_LABEL_PODS)"),
    ("--monitoring-port", "Prometheus metrics port (MONITORING_PORT; default 15014)"),
    ("--readiness-port", "health port for /healthz and /readyz (WEIR_READINESS_PORT; default 8000)"),
    ("--listen-address", "address of the metrics and health servers (WEIR_LISTEN_ADDRESS; default 0.0.0.0)"),
    ("--log-format", "json | text | auto (WEIR_LOG_FORMAT; default auto: text on a terminal, else JSON lines)"),
)


def register(groups: Any) -> None:
    parser = groups.add_parser("node-agent", help="the node agent: installs and guards weir-cni, repairs pods",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True
    run = verbs.add_parser(
        "run", help="run until SIGTERM", description="Install weir-cni and keep it in the chain, serve the plugin, "
        "repair pods that raced it, export health (:8000) and metrics (:15014). Every setting also reads Istio's "
        "environment variable name (in parentheses); REPAIR_* and the rest of Istio's settings work as in Istio.")
    for flag, text in _FLAGS:
        run.add_argument(flag, help=text)
    run.set_defaults(func=cmd_run)


def _node_defaults(flags: dict[str, Any]) -> tuple[PodSource | None, PodBackend | None, float]:
    """For an embedded node: fill its directories into unset flags; the pod store and repair backend."""
    from weir.nodeagent.repair import RepairConfig
    from weir.nodeagent.settings import Source
    from weir.platform.local import StorePods
    from weir.runtime.node import NodeError, load_node
    from weir.runtime.pods import Runtime
    from weir.runtime.repairbackend import RuntimePods

    root = flags.pop("node_root", None) or os.environ.get("WEIR_ROOT")
    if not root:
        return None, None, 0.0
    try:
        node = load_node(root)
    except NodeError as exc:
        raise UsageError(str(exc)) from None
    for key, value, var in (("run_dir", node.run_dir, "CNI_AGENT_RUN_DIR"),
                            ("cni_conf_dir", node.conf_dir, "MOUNTED_CNI_NET_DIR"),
                            ("cni_bin_dir", node.bin_dir, "CNI_BIN_DIR"), ("runtime_db", node.db, "WEIR_RUNTIME_DB"),
                            ("exclude_namespaces", ",".join(node.exclude_namespaces), "EXCLUDE_NAMESPACES"),
                            ("fail_open_namespaces", ",".join(node.fail_open_namespaces), "WEIR_FAIL_OPEN_NAMESPACES")):
        if flags.get(key) is None and var not in os.environ:
            flags[key] = value
    interval = RepairConfig.from_source(Source(flags, os.environ)).poll_interval
    return StorePods(node.db), RuntimePods(Runtime(node), interval), interval


def cmd_run(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "group", "verb")}
    try:
        pods, backend, _ = _node_defaults(flags)
        config = config_from(flags, os.environ)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if pods is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        from weir.platform import kube

        backend = kube.connect(node_name=config.repair.node_name, label_selector=config.repair.label_selector_text,
                               field_selector=config.repair.field_selector_text)
        pods = kube.PodLookup(backend)
    log_format = flags.get("log_format") or os.environ.get("WEIR_LOG_FORMAT", "auto")
    if log_format not in ("json", "text", "auto"):
        raise UsageError(f"--log-format: invalid value {log_format!r}: expected json, text or auto")
    _logging.setup(log_format)
    try:
        asyncio.run(serve(config, pods=pods, repair_backend=backend))
    except OSError as exc:  # a port or socket that cannot be bound
        print(f"weir node-agent: {exc}")
        return 1
    return 0
