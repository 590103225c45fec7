"""``weir install``: the node agent from an IstioOperator file, as ``istioctl install`` does.

The file and the ``--set`` overrides are checked field by field (``weir.install.operator``); the
manifests come from ``helm template`` on the weir-cni chart with the translated values, so the
chart is the only source of them. By default they are printed; ``--dry-run`` lists the
server-side apply requests instead, and ``--apply`` sends them with the ``kubernetes`` client.
``--apply`` has not been run against a real cluster (none exists where weir is built); its
request building is unit-tested, the sending is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from weir.cli._common import UsageError, load_document
from weir.install import CHART_DIR, CHECKOUT_HELM, RELEASE_NAME
from weir.install.apply import ApplyRequest, plan
from weir.install.operator import InstallSpec, SpecError, apply_sets, empty_document, parse

EXIT_FAILED = 1


class InstallError(Exception):
    """The input was fine but the work failed (helm missing or failing, the cluster refusing): exit 1."""


def register(groups: Any) -> None:
    parser = groups.add_parser(
        "install", help="render or apply the node agent (weir-cni) from an IstioOperator",
        description="Render the weir-cni node agent (Istio's istio-cni-node) from an IstioOperator "
        "(install.istio.io/v1alpha1): spec.components.cni.{enabled,namespace}, spec.values.cni.* with Istio's "
        "names, spec.values.global.{nativeNftables,hub,tag,logging.level}, spec.values.pilot.cni.enabled "
        "(recorded for the injector). Unknown or mistyped fields are an error naming the field. The manifests "
        "come from 'helm template' on the weir-cni chart.",
    )
    parser.add_argument("-f", "--filename", metavar="FILE",
                        help="IstioOperator YAML or JSON ('-' for stdin); without it, the defaults")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field under spec, as istioctl does: values.cni.chained=false, "
                        "components.cni.namespace=weir-system, values.cni.excludeNamespaces=[kube-system,ci] "
                        "(repeatable; true/false and whole numbers are typed, [..] and {..} are YAML)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", dest="mode", action="store_const", const="print",
                      help="print the rendered manifests (the default)")
    mode.add_argument("--dry-run", dest="mode", action="store_const", const="dry-run",
                      help="check and render, then list the server-side apply requests --apply would send; "
                      "contacts no cluster")
    mode.add_argument("--apply", dest="mode", action="store_const", const="apply",
                      help="server-side apply to the cluster of the current kubeconfig (in-cluster config when "
                      "KUBERNETES_SERVICE_HOST is set), with the kubernetes client")
    parser.add_argument("--chart", default=str(CHART_DIR), metavar="DIR",
                        help="the weir-cni chart directory (default: the one in this source checkout)")
    parser.add_argument("--helm", metavar="PATH",
                        help="helm 3 binary (default: $WEIR_HELM, else helm on PATH, else the checkout's .tools/)")
    parser.set_defaults(func=cmd_install, mode="print")


def cmd_install(args: argparse.Namespace) -> int:
    document = load_document(args.filename) if args.filename else empty_document()
    try:
        spec = parse(apply_sets(document, args.sets))
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    header = [f"# weir install: components.cni {'in namespace ' + spec.namespace if spec.cni_enabled else 'disabled'}"]
    header += [f"# {line}" for line in spec.comments()]
    try:
        if not spec.cni_enabled:
            sys.stdout.write("\n".join(header) + "\n")
            return 0
        manifests = render(spec, Path(args.chart), find_helm(args.helm, os.environ))
        if args.mode == "print":
            sys.stdout.write("\n".join(header) + "\n" + manifests)
            return 0
        requests = plan(yaml.safe_load_all(manifests), spec.namespace)
        if args.mode == "dry-run":
            sys.stdout.write("\n".join([*header, "# dry run: nothing was sent", *(r.describe() for r in requests)])
                             + "\n")
            return 0
        for request in send(requests, os.environ):
            sys.stdout.write(f"applied {request.describe()}\n")
            sys.stdout.flush()
    except InstallError as exc:
        sys.stderr.write(f"weir install: error: {exc}\n")
        return EXIT_FAILED
    return 0


def find_helm(explicit: str | None, env: Mapping[str, str]) -> str:
    """``--helm``, else ``$WEIR_HELM``, else ``helm`` on PATH, else the checkout's ``.tools/`` copy
    (``scripts/setup.sh`` installs it there)."""
    for source, candidate in (("--helm", explicit), ("WEIR_HELM", env.get("WEIR_HELM"))):
        if candidate:
            if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
                raise InstallError(f"{source}: {candidate!r} is not an executable file")
            return candidate
    found = shutil.which("helm", path=env.get("PATH", os.defpath))
    if found:
        return found
    if os.access(CHECKOUT_HELM, os.X_OK):
        return str(CHECKOUT_HELM)
    raise InstallError("helm 3 is needed to render the chart and was not found (--helm, WEIR_HELM, PATH, "
                       f"{CHECKOUT_HELM}); scripts/setup.sh installs it")


def helm_template_argv(helm: str, chart: Path, namespace: str, values_file: Path) -> list[str]:
    return [helm, "template", RELEASE_NAME, str(chart), "--namespace", namespace, "--values", str(values_file)]


def render(spec: InstallSpec, chart: Path, helm: str) -> str:
    """The manifests, as ``helm template`` prints them for the spec's values."""
    if not (chart / "Chart.yaml").is_file():
        raise InstallError(f"{chart}: not a Helm chart (no Chart.yaml); pass --chart")
    with tempfile.TemporaryDirectory(prefix="weir-install-") as tmp:
        values_file = Path(tmp) / "values.json"
        values_file.write_text(json.dumps(spec.values, indent=2, sort_keys=True) + "\n")
        try:
            proc = subprocess.run(helm_template_argv(helm, chart, spec.namespace, values_file),
                                  capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"cannot run {helm}: {exc}") from None
    if proc.returncode != 0:
        detail = "; ".join(line.strip() for line in proc.stderr.splitlines() if line.strip())
        raise InstallError(f"helm template failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def send(requests: Sequence[ApplyRequest], env: Mapping[str, str]) -> Iterator[ApplyRequest]:
    """Server-side apply each request in order with the ``kubernetes`` client's dynamic client,
    yielding each once the API server accepted it; the first failure stops the rest.

    Not run against a real cluster: none exists where weir is built.
    """
    try:
        from kubernetes import config, dynamic
        from kubernetes.client import ApiClient
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
        from urllib3.exceptions import HTTPError
    except ImportError:
        raise InstallError("--apply needs the kubernetes Python client, which is not installed") from None
    try:
        if env.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config"))
    except ConfigException as exc:
        raise InstallError(f"--apply: no cluster configured: {exc}") from None
    failures = (ApiException, HTTPError, OSError)
    try:
        client = dynamic.DynamicClient(ApiClient())  # type: ignore[no-untyped-call]
    except failures as exc:
        raise InstallError(f"--apply: cannot reach the cluster: {getattr(exc, 'reason', None) or exc}") from None
    for count, request in enumerate(requests):
        try:
            resource = client.resources.get(api_version=request.api_version, kind=request.kind)
            client.server_side_apply(  # type: ignore[no-untyped-call]
                resource, body=dict(request.body), name=request.name,
                namespace=request.namespace, field_manager=request.field_manager, force_conflicts=request.force)
        except failures as exc:
            raise InstallError(f"--apply failed at {request.describe()}: {getattr(exc, 'reason', None) or exc} "
                               f"({count} of {len(requests)} applied)") from None
        yield request
