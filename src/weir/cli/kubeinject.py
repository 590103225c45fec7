"""``weir kube-inject``: add the sidecar to manifests, as ``istioctl kube-inject`` does."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from weir.cli._common import UsageError, load_document, load_documents
from weir.control.inject import InjectError, InjectValues, MeshInfo, inject_template_spec

_INJECTABLE = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController",
               "CronJob"}


def register(groups: Any) -> None:
    parser = groups.add_parser(
        "kube-inject", help="add the sidecar to Pod and workload manifests (like istioctl kube-inject)",
        description="Inject the istio-proxy sidecar into every Pod and workload template in FILE and print the "
        "result; other documents pass through unchanged. With CNI (the default) pods get the istio-validation "
        "init container and need no privileges; --flavor embedded gives weir's embedded runtime commands "
        "instead of images.")
    parser.add_argument("-f", "--filename", required=True, metavar="FILE", help="manifests (YAML/JSON, '-' = stdin)")
    parser.add_argument("--flavor", choices=["kubernetes", "embedded"], default="kubernetes",
                        help="kubernetes: images and volumes, as Istio; embedded: commands for `weir pod run`")
    parser.add_argument("--values", metavar="FILE", help="Istio Helm values (global.hub, global.tag, pilot.cni ...)")
    parser.add_argument("--no-cni", dest="cni", action="store_false",
                        help="inject the privileged istio-init container instead (kubernetes flavor only)")
    parser.set_defaults(func=cmd_kube_inject)


def cmd_kube_inject(args: argparse.Namespace) -> int:
    helm: dict[str, Any] = {}
    if args.values:
        loaded = load_document(args.values)
        if not isinstance(loaded, dict):
            raise UsageError(f"{args.values}: expected Helm values (a mapping)")
        helm = loaded
    helm.setdefault("pilot", {}).setdefault("cni", {})
    if not args.cni:
        helm["pilot"]["cni"]["enabled"] = False
    elif "enabled" not in helm["pilot"]["cni"]:
        helm["pilot"]["cni"]["enabled"] = True
    try:
        values = InjectValues.from_helm(helm, flavor=args.flavor)
    except InjectError as exc:
        raise UsageError(str(exc)) from None
    out = []
    for index, doc in enumerate(load_documents(args.filename)):
        if not (isinstance(doc, dict) and doc.get("kind") in _INJECTABLE):
            out.append(doc)
            continue
        try:
            out.append(inject_template_spec(doc, values=values, mesh=MeshInfo()).pod)
        except InjectError as exc:
            raise UsageError(f"{args.filename}: document {index}: {exc}") from None
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False))
    return 0
