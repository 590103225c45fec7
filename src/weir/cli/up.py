"""``weir up``, ``weir status``, ``weir down``: the whole embedded mesh on this machine.

``weir up [FILE|DIR ...]`` (default: the shipped example, ``examples/mesh``) loads every manifest
strictly first (one bad document: exit 2, nothing done), then brings up the node, the node agent
with weir-cni, the control plane with its CA, the config and the pods with injected sidecars,
showing each step; then it sends the traffic the pods ask for (``weir.dev/smoke-test``) and prints
what the mesh did, from live evidence: both sidecars, peer SPIFFE IDs, DNS answered by the DNS
proxy, no NET_ADMIN/NET_RAW in any pod. The mesh stays up: ``weir status`` shows it, ``weir down``
removes every namespace, bridge, rule, process and file ``up`` made.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from weir.agent.proxy import ConfigError, parse_duration
from weir.api.errors import ManifestError
from weir.api.load import load_files
from weir.cli._common import Parser, UsageError, _StrictLoader
from weir.install import report as mesh_report
from weir.install.embedded import UpConfig, UpError, down, node_of, read_state, syncz, up
from weir.install.procs import ProcError, alive, http_get, in_node
from weir.runtime.node import NodeConfig, NodeError
from weir.runtime.node import validate as validate_node
from weir.runtime.pods import Runtime
from weir.runtime.status import ready_count

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mesh"


def _root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=os.environ.get("WEIR_ROOT", "/"),
                        help="node root (env WEIR_ROOT; default /)")


def register(groups: Any) -> None:
    parser: Parser = groups.add_parser("up", help="bring the whole mesh up on this machine (root)",
                                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="FILE|DIR",
                        help=f"manifests: Pods, Services, Istio config ... (default: {EXAMPLE})")
    _root_arg(parser)
    parser.add_argument("--bridge", default="weir0", help="pod bridge (default weir0)")
    parser.add_argument("--subnet", default="10.213.0.0/16", help="pod subnet (default 10.213.0.0/16)")
    parser.add_argument("--cacerts", metavar="DIR", help="plug in a CA: ca-cert.pem, ca-key.pem, root-cert.pem, "
                        "cert-chain.pem (default: a self-signed root made for this mesh)")
    parser.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain (default cluster.local)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each step (default 180)")
    parser.add_argument("--workload-cert-ttl", default="", metavar="DURATION",
                        help="sidecar certificate lifetime, e.g. 24h, 1h, 60s (Istio's SECRET_TTL; default 24h); "
                        "they rotate at half of it")
    parser.add_argument("--keep-on-failure", action="store_true", help="leave a failed mesh up for inspection")
    parser.add_argument("--no-traffic", action="store_true", help="bring it up, send no traffic, print no report")
    parser.add_argument("--report", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--node-netns", default="", help=argparse.SUPPRESS)
    parser.set_defaults(func=cmd_up)

    status = groups.add_parser("status", help="show the embedded mesh: daemons, pods, proxies, config versions")
    _root_arg(status)
    status.add_argument("-o", "--output", choices=["json"], help="print JSON instead of tables")
    status.set_defaults(func=cmd_status)

    down_parser = groups.add_parser("down", help="remove everything `weir up` made on this machine")
    _root_arg(down_parser)
    down_parser.set_defaults(func=cmd_down)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _load(paths: list[str]) -> list[Any]:
    def read(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise OSError("not a UTF-8 text file") from None

    try:
        resources = load_files(paths, read, lambda text: list(yaml.load_all(text, Loader=_StrictLoader)))
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    if not resources:
        raise UsageError(f"no objects found in {', '.join(paths)}")
    return resources


def cmd_up(args: argparse.Namespace) -> int:
    paths = args.paths or [str(EXAMPLE)]
    resources = _load(paths)
    if args.timeout <= 0:
        raise UsageError(f"--timeout: {args.timeout:g} must be more than 0")
    try:
        validate_node(NodeConfig(bridge=args.bridge, subnet=args.subnet))
    except NodeError as exc:
        raise UsageError(str(exc).replace("bridge:", "--bridge:", 1).replace("subnet:", "--subnet:", 1)) from None
    if args.cacerts and not os.path.isdir(args.cacerts):
        raise UsageError(f"--cacerts: {args.cacerts} is not a directory")
    if args.workload_cert_ttl:
        try:
            parse_duration(args.workload_cert_ttl, "--workload-cert-ttl")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    config = UpConfig(root=args.root, bridge=args.bridge, subnet=args.subnet, node_netns=args.node_netns,
                      cacerts=args.cacerts, trust_domain=args.trust_domain, timeout=args.timeout,
                      keep_on_failure=args.keep_on_failure, workload_cert_ttl=args.workload_cert_ttl)
    _say(f"weir up: {len(resources)} objects from {', '.join(paths)}")
    try:
        state = up(config, resources, _say)
    except (UpError, ProcError) as exc:
        print(f"weir up: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a pod that cannot start, a CNI failure: named by the runtime
        print(f"weir up: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _say("the mesh is up")
    if args.no_traffic:
        return 0
    _say("sending traffic and collecting evidence")
    found = mesh_report.collect(state, node_of(args.root))
    print(mesh_report.render(found))
    if args.report:
        Path(args.report).write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    print("\n`weir status` shows the mesh; `weir down` removes it.")
    return 0 if all(c["ok"] for c in found["checks"]) else 1


def status_doc(root: str) -> dict[str, Any]:
    state = read_state(root)
    node = node_of(root)
    control = in_node(state, lambda: http_get(f"{state.debug_url}/debug/status"))
    pods = []
    for record in Runtime(node).pods():
        sidecars = record.native_sidecars  # kubectl's READY and RESTARTS count them with the containers
        ready, total = ready_count(record.status, sidecars)
        statuses = [*(record.status.get("containerStatuses") or []),
                    *(c for c in record.status.get("initContainerStatuses") or [] if c.get("name") in sidecars)]
        pods.append({"namespace": record.namespace, "name": record.name, "phase": record.phase,
                     "ip": record.status.get("podIP", ""), "ready": f"{ready}/{total}",
                     "restarts": sum(int(c.get("restartCount", 0)) for c in statuses)})
    return {"phase": state.phase, "processes": {name: {"pid": pid, "alive": alive(pid)}
                                                for name, pid in state.processes.items()},
            "control": json.loads(control[1]) if control is not None and control[0] == 200 else None,
            "pods": pods, "proxies": syncz(state)}


def cmd_status(args: argparse.Namespace) -> int:
    try:
        doc = status_doc(args.root)
    except UpError as exc:
        print(f"weir status: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"mesh: {doc['phase']}")
    for name, proc in doc["processes"].items():
        print(f"  {name:<11} pid {proc['pid']:<8} {'running' if proc['alive'] else 'NOT RUNNING'}")
    control = doc["control"]
    if control is None:
        print("  control plane: not answering on its debug port")
    else:
        print(f"  config: version {control['config_version']} (store version {control['store_version']}), "
              f"{control['services']} services, {control['pods']} pods"
              + (f"; ERROR: {control['last_error']}" if control["last_error"] else ""))
    print("\nPODS")
    print(f"  {'NAMESPACE':<12} {'NAME':<20} {'READY':<6} {'STATUS':<10} {'RESTARTS':<9} IP")
    for p in doc["pods"]:
        print(f"  {p['namespace']:<12} {p['name']:<20} {p['ready']:<6} {p['phase']:<10} {p['restarts']:<9} {p['ip']}")
    print("\nPROXIES")
    print(f"  {'NAME':<32} {'CDS':<8} {'LDS':<8} {'RDS':<8} {'NDS':<8}")
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for proxy in doc["proxies"]:  # Envoy's stream and the agent's (name tables) make one proxy
        entry = merged.setdefault((proxy["namespace"], proxy["name"]), {**proxy, "types": {}})
        entry["types"].update(proxy.get("types") or {})
    for proxy in sorted(merged.values(), key=lambda p: (p["namespace"], p["name"])):
        types = proxy["types"]

        def cell(kind: str, types: dict[str, Any] = types) -> str:
            t = types.get(kind)
            return "-" if t is None else f"{t['acked'] or '-'}{'' if t['state'] == 'SYNCED' else '*'}"
        print(f"  {proxy['name'] + '.' + proxy['namespace']:<32} {cell('CDS'):<8} {cell('LDS'):<8} "
              f"{cell('RDS'):<8} {cell('NDS'):<8}")
    print("\n  (versions each proxy ACKed; * = a newer one is in flight or was rejected)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not down(args.root, _say):
        print(f"weir down: nothing to remove under {args.root}", file=sys.stderr)
        return 0
    _say("the mesh is down")
    return 0
