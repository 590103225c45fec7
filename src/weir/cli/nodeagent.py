"""``weir node-agent``: run the node agent (Istio's istio-cni-node)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from weir.cli._common import UsageError
from weir.nodeagent.agent import config_from, serve
from weir.nodeagent.settings import ConfigError


def register(groups: Any) -> None:
    parser = groups.add_parser("node-agent", help="the node agent: serves the weir-cni plugin",
                               description="The node agent (Istio's istio-cni-node). Settings take Istio's "
                               "environment variable names when a flag is not given.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=type(parser))
    verbs.required = True
    run = verbs.add_parser("run", help="serve plugin events until SIGTERM",
                           description="Serve the weir-cni plugin's events on <run dir>/pluginevent.sock and "
                           "program capture rules in pod namespaces.")
    run.add_argument("--run-dir", help="run directory shared with the plugin (env CNI_AGENT_RUN_DIR; "
                     "default /var/run/weir-cni)")
    run.add_argument("--pods-dir", help="directory of Pod manifests the agent looks pods up in (env WEIR_PODS_DIR)")
    run.add_argument("--runtime-db", help="the embedded runtime's pod database (env WEIR_RUNTIME_DB); "
                     "pods are looked up there instead of --pods-dir")
    run.add_argument("--exclude-namespaces", help="comma-separated namespaces never captured (env EXCLUDE_NAMESPACES)")
    run.add_argument("--pod-namespace", help="the agent's own namespace (env POD_NAMESPACE)")
    run.add_argument("--native-nftables", help="true to program native nftables (env NATIVE_NFTABLES)")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = config_from(vars(args), os.environ)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(config))
    return 0
