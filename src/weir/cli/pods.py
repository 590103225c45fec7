"""``weir pod`` and ``weir node``: the embedded runtime's commands (kubectl-like output).

Every ``weir pod`` command first restarts the supervisor of any pod that lost it (after a
crash or a reboot of the runtime), so no pod is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import yaml

from weir.api.pod import ManifestError
from weir.cli._common import Parser, UsageError, load_document
from weir.install.embedded import State, UpError, admit
from weir.platform.local import PodRecord
from weir.runtime.node import NodeConfig, NodeError, init_node, load_node
from weir.runtime.pods import PodError, Runtime
from weir.runtime.status import ready_count


def register(groups: Any) -> None:
    pod = groups.add_parser("pod", help="run pods on this machine (the embedded runtime)",
                            description="Pods from Kubernetes v1 Pod manifests, each a network namespace wired by "
                            "the node's CNI chain, its containers processes under their runAsUser. Run `weir node "
                            "init` once first.")
    pod.add_argument("--root", default=os.environ.get("WEIR_ROOT", "/"), help="node root (env WEIR_ROOT; default /)")
    verbs = pod.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True

    run = verbs.add_parser("run", help="create a pod from a manifest")
    run.add_argument("-f", "--filename", required=True, metavar="FILE", help="Pod manifest (YAML or JSON, '-' = stdin)")
    run.add_argument("--no-inject", action="store_true",
                     help="when a mesh is up (`weir up`), run the pod as written instead of through its injector")
    run.set_defaults(func=cmd_run)

    ls = verbs.add_parser("ls", help="list pods")
    ls.add_argument("-n", "--namespace", help="only this namespace (default: all)")
    ls.set_defaults(func=cmd_ls)

    get = verbs.add_parser("get", help="show one pod with its status")
    _named(get)
    get.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    get.set_defaults(func=cmd_get)

    logs = verbs.add_parser("logs", help="print a container's output")
    _named(logs)
    logs.add_argument("-c", "--container", help="container (default: the first)")
    logs.add_argument("-p", "--previous", action="store_true", help="the previous run of the container")
    logs.set_defaults(func=cmd_logs)

    exe = verbs.add_parser("exec", help="run a command in a pod's container (its namespace, uid and env)")
    _named(exe)
    exe.add_argument("-c", "--container", help="container (default: the first)")
    exe.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    exe.set_defaults(func=cmd_exec)

    rm = verbs.add_parser("rm", help="stop and delete a pod (containers, CNI DEL, namespace)")
    _named(rm)
    rm.set_defaults(func=cmd_rm)

    node = groups.add_parser("node", help="set up this machine as a node for the embedded runtime")
    node_verbs = node.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    node_verbs.required = True
    init = node_verbs.add_parser(
        "init", help="write the node's CNI chain and install weir-cni",
        description="Writes a conflist with the reference plugins bridge + host-local + portmap on the node's own "
        "bridge and subnet, weir-cni chained last, into weir-owned directories under --root, and installs the "
        "weir-cni plugin. Safe to run again.")
    init.add_argument("--root", default=os.environ.get("WEIR_ROOT", "/"), help="node root (env WEIR_ROOT; default /)")
    init.add_argument("--bridge", default="weir0", help="bridge name (default weir0)")
    init.add_argument("--subnet", default="10.213.0.0/16", help="pod subnet (default 10.213.0.0/16)")
    init.add_argument("--masquerade", action="store_true", help="masquerade pod traffic leaving the node")
    init.add_argument("--node-netns", default="", help=argparse.SUPPRESS)
    init.add_argument("--exclude-namespaces", default="kube-system", help="namespaces never captured (comma list)")
    init.add_argument("--fail-open-namespaces", default="",
                      help="namespaces whose pods start uncaptured when the node agent is down (comma list)")
    init.add_argument("--backoff", type=float, default=10.0, help="first crash-loop back-off in seconds (default 10)")
    init.set_defaults(func=cmd_node_init)


def _named(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="pod name")
    parser.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")


def _runtime(args: argparse.Namespace) -> Runtime:
    try:
        runtime = Runtime(load_node(args.root))
    except NodeError as exc:
        raise UsageError(str(exc)) from None
    for pod in runtime.reconcile():
        print(f"restarted the supervisor of pod {pod}", file=sys.stderr)
    return runtime


def _fail(exc: Exception) -> int:
    print(f"weir pod: {exc}", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    doc = load_document(args.filename)
    try:
        state = State.load(args.root)
    except UpError as exc:
        raise UsageError(str(exc)) from None
    if state is not None and isinstance(doc, dict) and not args.no_inject:
        # a mesh is up on this node: pods go through its injector, as through Istio's webhook
        try:
            result = admit(state, doc)
        except UpError as exc:
            raise UsageError(str(exc)) from None
        doc = result.pod
        print("sidecar injected" if result.injected else f"no sidecar: {result.reason}", file=sys.stderr)
    try:
        record = runtime.run(doc, args.filename)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    except PodError as exc:
        return _fail(exc)
    print(f"pod/{record.name} created in namespace {record.namespace} (IP {record.status.get('podIP', '-')})")
    return 0


def display_status(record: PodRecord) -> str:
    """What ``kubectl get pods`` shows in STATUS."""
    if record.deleting:
        return "Terminating"
    inits = record.status.get("initContainerStatuses", [])
    sidecars = record.native_sidecars
    for i, entry in enumerate(inits):
        state = entry.get("state", {})
        if "terminated" in state and state["terminated"].get("exitCode") == 0:
            continue
        if entry["name"] in sidecars and entry.get("started"):
            continue  # a native sidecar that has started is not holding the pod back
        if "waiting" in state and state["waiting"].get("reason") not in (None, "PodInitializing"):
            return f"Init:{state['waiting']['reason']}"
        if "terminated" in state:
            return f"Init:{state['terminated'].get('reason', 'Error')}"
        return f"Init:{i}/{len(inits)}"
    for entry in record.status.get("containerStatuses", []):
        state = entry.get("state", {})
        if "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating"):
            return str(state["waiting"]["reason"])
        if "terminated" in state and record.phase not in ("Succeeded",):
            return str(state["terminated"].get("reason", "Error"))
    return "Completed" if record.phase == "Succeeded" else record.phase


def _age(created: float) -> str:
    seconds = int(time.time() - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cmd_ls(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    rows = [("NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP", "AGE")]
    for record in runtime.pods(args.namespace):
        containers = record.status.get("containerStatuses", [])
        ready, total = ready_count(record.status, record.native_sidecars)  # native sidecars count, as in kubectl
        restarts = sum(int(c.get("restartCount", 0)) for c in containers + record.status.get(
            "initContainerStatuses", []))
        rows.append((record.namespace, record.name, f"{ready}/{total}", display_status(record),
                     str(restarts), str(record.status.get("podIP", "<none>")), _age(record.created)))
    if len(rows) == 1:
        print("No pods." if args.namespace is None else f"No pods in namespace {args.namespace}.")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    try:
        obj = runtime.get(args.namespace, args.name).as_object()
    except PodError as exc:
        return _fail(exc)
    if args.output == "json":
        print(json.dumps(obj, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(obj, sort_keys=False), end="")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    try:
        path = runtime.log_path(runtime.get(args.namespace, args.name), args.container, args.previous)
    except PodError as exc:
        return _fail(exc)
    try:
        with open(path, "rb") as f:
            sys.stdout.buffer.write(f.read())
    except FileNotFoundError:
        pass  # the container has not written anything (or not started) yet
    return 0


_EXEC_OPTIONS = {"-n": "namespace", "--namespace": "namespace", "-c": "container", "--container": "container"}


def _exec_command(args: argparse.Namespace) -> list[str]:
    """The command of ``weir pod exec NAME [-n NS] [-c C] -- COMMAND``. argparse's REMAINDER takes
    everything after NAME, options included: take the options back from its start, up to ``--``."""
    rest = list(args.command)
    while rest and rest[0] != "--":
        option, eq, value = rest[0].partition("=")
        if option not in _EXEC_OPTIONS:
            if option.startswith("-"):
                raise UsageError(f"exec: unknown option {option!r} (put the command after '--')")
            return rest  # no '--': the command starts here
        if not eq:
            if len(rest) < 2:
                raise UsageError(f"exec: {option} needs a value")
            value = rest[1]
        setattr(args, _EXEC_OPTIONS[option], value)
        rest = rest[1 if eq else 2:]
    return rest[1:]


def cmd_exec(args: argparse.Namespace) -> int:
    command = _exec_command(args)
    if not command:
        raise UsageError("exec needs a command: weir pod exec NAME [-c CONTAINER] -- COMMAND [ARGS...]")
    runtime = _runtime(args)
    try:
        return runtime.exec(args.namespace, args.name, args.container, command).returncode
    except PodError as exc:
        return _fail(exc)


def cmd_rm(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    try:
        runtime.remove(args.namespace, args.name)
    except PodError as exc:
        return _fail(exc)
    print(f"pod/{args.name} deleted from namespace {args.namespace}")
    return 0


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def cmd_node_init(args: argparse.Namespace) -> int:
    config = NodeConfig(root=args.root, bridge=args.bridge, subnet=args.subnet, masquerade=args.masquerade,
                        node_netns=args.node_netns, exclude_namespaces=_list(args.exclude_namespaces),
                        fail_open_namespaces=_list(args.fail_open_namespaces), backoff_seconds=args.backoff)
    try:
        init_node(config)
    except NodeError as exc:
        raise UsageError(str(exc)) from None
    print(f"node ready: {config.conflist} (bridge {config.bridge}, subnet {config.subnet}, weir-cni chained last); "
          f"start the agent with: weir node-agent run --run-dir {config.run_dir} --runtime-db {config.db}")
    return 0
