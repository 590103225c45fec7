"""``weir apply``, ``weir get``, ``weir delete`` (the config store, kubectl-like) and ``weir control run``.

``apply`` loads every file strictly first (:func:`weir.api.load.load_files`): one bad document
anywhere is one line on stderr, exit 2, and nothing applied. The store is a SQLite file
(``--store``, env ``WEIR_CONTROL_STORE``, default ``/var/lib/weir/control.db``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from weir.api.errors import ManifestError
from weir.api.load import KINDS, load_files
from weir.cli import _logging
from weir.cli._common import Parser, UsageError, _StrictLoader
from weir.control.ca import CacertsError, CertificateAuthority
from weir.control.casvc import CaService
from weir.control.server import DEFAULT_ADS_ADDRESS, DEFAULT_DEBUG_ADDRESS, ControlPlane
from weir.control.store import ConfigStore, StoreError
from weir.pki import tokens

DEFAULT_STORE = "/var/lib/weir/control.db"
_NAMESPACED = {k.header.kind: k.header.namespaced for k in KINDS}
_SHORT = {"po": "Pod", "svc": "Service", "ns": "Namespace", "sa": "ServiceAccount", "se": "ServiceEntry",
          "dr": "DestinationRule", "vs": "VirtualService", "pa": "PeerAuthentication"}


def kind_of(text: str) -> str:
    """``svc``, ``services``, ``Service`` ... -> ``Service``; UsageError for an unknown kind."""
    lowered = text.lower()
    if lowered in _SHORT:
        return _SHORT[lowered]
    for kind in _NAMESPACED:
        if lowered in (kind.lower(), kind.lower() + "s", kind.lower() + "es"):
            return kind
    raise UsageError(f"unknown kind {text!r} (one of: {', '.join(k.lower() for k in _NAMESPACED)})")


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=os.environ.get("WEIR_CONTROL_STORE", DEFAULT_STORE),
                        help=f"config store database (env WEIR_CONTROL_STORE; default {DEFAULT_STORE})")


def register(groups: Any) -> None:
    apply = groups.add_parser("apply", help="create or update mesh config from manifests",
                              description="Loads every manifest (YAML or JSON, files or directories of *.yaml, "
                              "*.yml, *.json) and applies them in one transaction: all or nothing.")
    apply.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR",
                       help="manifest file or directory (repeatable)")
    _store_arg(apply)
    apply.set_defaults(func=cmd_apply)

    get = groups.add_parser("get", help="show mesh config from the store")
    get.add_argument("kind", metavar="KIND", help="service, virtualservice (vs), destinationrule (dr) ...")
    get.add_argument("name", metavar="NAME", nargs="?", help="one object (default: list them)")
    get.add_argument("-n", "--namespace", help="namespace (default: default for NAME, all for a list)")
    get.add_argument("-o", "--output", choices=["yaml", "json"], help="print manifests (default: a table)")
    _store_arg(get)
    get.set_defaults(func=cmd_get)

    delete = groups.add_parser("delete", help="delete mesh config from the store")
    delete.add_argument("kind", metavar="KIND")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    _store_arg(delete)
    delete.set_defaults(func=cmd_delete)

    control = groups.add_parser("control", help="the control plane (config store, registry, ADS for Envoy)")
    verbs = control.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True
    run = verbs.add_parser("run", help="serve ADS from the config store until SIGTERM")
    _store_arg(run)
    run.add_argument("--runtime-db", help="the embedded runtime's pod database (pods with a podIP are endpoints)")
    run.add_argument("--ads-address", default=DEFAULT_ADS_ADDRESS,
                     help=f"HOST:PORT or unix:/path (default {DEFAULT_ADS_ADDRESS})")
    run.add_argument("--ca-address", help="HOST:PORT of the CA (gRPC over TLS; istiod's is :15012); "
                     "needs --ca-dir and --token-key")
    run.add_argument("--ca-dir", help="the CA's cacerts directory (ca-cert.pem, ca-key.pem, root-cert.pem, "
                     "cert-chain.pem)")
    run.add_argument("--token-key", help="key file that verifies the pods' service-account tokens")
    run.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain (default cluster.local)")
    run.add_argument("--debug-address", default=DEFAULT_DEBUG_ADDRESS,
                     help=f"HOST:PORT of /ready and /debug/* (default {DEFAULT_DEBUG_ADDRESS}; '' turns it off)")
    run.add_argument("--log-format", default=os.environ.get("WEIR_LOG_FORMAT", "auto"),
                     choices=["json", "text", "auto"], help="default auto: text on a terminal, else JSON lines")
    run.set_defaults(func=cmd_run)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OSError("not a UTF-8 text file") from None


def _decode(text: str) -> list[object]:
    return list(yaml.load_all(text, Loader=_StrictLoader))


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        resources = load_files(args.filename, _read, _decode)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    if not resources:
        raise UsageError(f"no objects found in {', '.join(args.filename)}")
    try:
        applied = ConfigStore(args.store).apply(resources)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    for result in applied:
        print(f"{result.kind.lower()}/{result.name} {result.action}")
    return 0


def _display_namespace(kind: str, namespace: str | None) -> str:
    return "" if not _NAMESPACED[kind] else (namespace or "default")


def cmd_get(args: argparse.Namespace) -> int:
    kind = kind_of(args.kind)
    store = ConfigStore(args.store)
    if args.name:
        found = store.get(kind, _display_namespace(kind, args.namespace), args.name)
        if found is None:
            where = f" in namespace {args.namespace or 'default'}" if _NAMESPACED[kind] else ""
            print(f"weir get: {kind.lower()} {args.name!r} not found{where}", file=sys.stderr)
            return 1
        _print(found.body, args.output or "yaml")
        return 0
    objects = [o for o in store.list(kind) if args.namespace is None or o.namespace == args.namespace]
    if args.output:
        _print({"apiVersion": "v1", "kind": "List", "items": [o.body for o in objects]}, args.output)
        return 0
    if not objects:
        print(f"no {kind.lower()} found", file=sys.stderr)
        return 0
    width = max([len("NAMESPACE"), *(len(o.namespace) for o in objects)])
    print(f"{'NAMESPACE':<{width}}  NAME")
    for o in objects:
        print(f"{o.namespace:<{width}}  {o.name}")
    return 0


def _print(document: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(document, indent=2))
    else:
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False))


def cmd_delete(args: argparse.Namespace) -> int:
    kind = kind_of(args.kind)
    namespace = _display_namespace(kind, args.namespace)
    if not ConfigStore(args.store).delete(kind, namespace, args.name):
        where = f" in namespace {namespace}" if namespace else ""
        print(f"weir delete: {kind.lower()} {args.name!r} not found{where}", file=sys.stderr)
        return 1
    print(f"{kind.lower()} {args.name!r} deleted")
    return 0


async def _serve(plane: ControlPlane) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    address = await plane.start()
    print(f"weir control: serving ADS on {address} (store {plane.store.path})", file=sys.stderr)
    try:
        await stop.wait()
    finally:
        await plane.stop()


def _ca_service(args: argparse.Namespace) -> CaService | None:
    given = [f for f in ("ca_address", "ca_dir", "token_key") if getattr(args, f)]
    if not given:
        return None
    if len(given) != 3:
        raise UsageError("--ca-address, --ca-dir and --token-key go together (the CA needs all three)")
    try:
        ca = CertificateAuthority.from_cacerts(args.ca_dir, trust_domain=args.trust_domain)
        key = tokens.load_key(args.token_key)
    except (CacertsError, tokens.TokenKeyError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return CaService(ca, key)


def cmd_run(args: argparse.Namespace) -> int:
    _logging.setup(args.log_format)
    try:
        if args.debug_address and not args.debug_address.rpartition(":")[2].isdigit():
            raise UsageError(f"--debug-address: {args.debug_address!r} is not HOST:PORT")
        plane = ControlPlane(args.store, args.runtime_db, ads_address=args.ads_address,
                             debug_address=args.debug_address or None, ca=_ca_service(args),
                             ca_address=args.ca_address)
        asyncio.run(_serve(plane))
    except OSError as exc:  # an address that cannot be bound, a store that cannot be opened
        print(f"weir control: {exc}", file=sys.stderr)
        return 1
    return 0
