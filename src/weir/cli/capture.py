"""``weir capture``: render, apply, check and remove a pod's capture rules; run the validation probe."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from weir import netns
from weir.capture import iptables, nftables
from weir.capture.apply import DEFAULT_STATE_DIR, Backend, CaptureError, Executor
from weir.capture.config import KNOWN_KEYS, spec_from_config
from weir.capture.pod import spec_from_pod
from weir.capture.spec import CaptureSpec, InvalidSpecError
from weir.capture.validate import (
    ProbeConfig,
    drop_privileges,
    failure_message,
    host_is_ipv6_only,
    run_probe,
)
from weir.cli._common import Parser, UsageError, load_document

_BACKENDS = {
    "auto": None,
    "iptables": None,
    "iptables-nft": Backend.IPTABLES_NFT,
    "iptables-legacy": Backend.IPTABLES_LEGACY,
    "nftables": Backend.NFTABLES,
}

SOURCE_HELP = (
    "--config FILE is istio-iptables' environment-style configuration (JSON or YAML; keys such as "
    "INBOUND_PORTS_INCLUDE, PROXY_UID, DNS_SERVERS_V4; an absent key is off, except the base values "
    "ports 15001/15006/15008, uid=gid=1337, TPROXY mark 1337, route table 133, owner groups '*', "
    "loopback 127.0.0.1/32). --pod FILE is a Kubernetes Pod manifest, read with the CNI plugin's rules "
    "(traffic.sidecar.istio.io/* annotations, istio-proxy env and runAsUser/runAsGroup)."
)


def register(groups: Any) -> None:
    parser = groups.add_parser(
        "capture", help="traffic capture rules: render, apply, check, remove, validate",
        description="Istio-compatible traffic capture rules (iptables or native nftables) for a pod. "
        + SOURCE_HELP,
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True

    render = verbs.add_parser("render", help="print the rule text for a spec (nothing is applied)",
                              description="Print only the rule text: iptables-restore input for one address "
                              "family, or the native nftables script (which covers both families). " + SOURCE_HELP)
    _source(render)
    render.add_argument("--backend", choices=["iptables", "nftables"], default="iptables",
                        help="rule language (default: iptables)")
    render.add_argument("--family", choices=["4", "6"], default="4",
                        help="address family for iptables (default: 4); nftables renders both in one script")
    render.set_defaults(func=cmd_render)

    for verb, text in (
        ("apply", "apply the rules inside a pod's network namespace "
                  "(idempotent; IPv4 and IPv6 together or not at all)"),
        ("check", "compare the rules in a namespace with the spec: exit 0 when equal, 1 with a diff"),
        ("remove", "remove what weir added to a namespace (and nothing else)"),
    ):
        sub = verbs.add_parser(verb, help=text, description=text + ". " + SOURCE_HELP)
        _source(sub)
        sub.add_argument("--netns", required=True, metavar="PATH",
                         help="the pod's network namespace (e.g. /var/run/netns/NAME or /proc/PID/ns/net)")
        sub.add_argument("--backend", choices=list(_BACKENDS), default="auto",
                         help="iptables back-end or native nftables; 'auto'/'iptables' detect as Istio does: "
                         "legacy when legacy iptables already has rules there, else nft "
                         "(FORCE_IPTABLES_BINARY=legacy|nft overrides)")
        sub.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=argparse.SUPPRESS)
        sub.set_defaults(func={"apply": cmd_apply, "check": cmd_check, "remove": cmd_remove}[verb])

    validate = verbs.add_parser(
        "validate", help="prove that capture works in this pod (Istio's istio-validation)",
        description="Run as the proxy uid inside the pod's network namespace: listen on 127.0.0.1:15001 and "
        ":15006, dial 127.0.0.6:15002 and pass when SO_ORIGINAL_DST shows port 15002. Exits 0 when capture "
        "works and 126 (with an explanation) when it does not within the timeout. IPv6 uses [::1] and [::6].",
    )
    validate.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS",
                          help="give up after this long (default: 5)")
    family = validate.add_mutually_exclusive_group()
    family.add_argument("--ipv6", dest="ipv6", action="store_true", default=None, help="probe over IPv6")
    family.add_argument("--ipv4", dest="ipv6", action="store_false", help="probe over IPv4")
    validate.add_argument("--proxy-port", type=_port, default=15001, help="Envoy's outbound port (default: 15001)")
    validate.add_argument("--inbound-port", type=_port, default=15006,
                          help="Envoy's inbound capture port (default: 15006)")
    validate.add_argument("--probe-port", type=_port, default=15002, help="port dialled (default: 15002)")
    validate.add_argument("--user", metavar="UID[:GID]", type=_user,
                          help="drop to this uid (and gid) before probing; normally the container runs as it")
    validate.add_argument("--netns", metavar="PATH", help="probe inside this network namespace")
    validate.set_defaults(func=cmd_validate)


def _source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", metavar="FILE", help="istio-iptables environment-style config (JSON/YAML)")
    group.add_argument("--pod", metavar="FILE", help="Kubernetes Pod manifest (JSON/YAML)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"seconds must be more than 0 and at most 3600, not {text}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 1-65535")
    return int(text)


def _user(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise argparse.ArgumentTypeError(f"invalid user {text!r}: expected UID or UID:GID")
    return int(uid), int(gid or uid)


def load_spec(args: argparse.Namespace, ns: netns.NetNS | None = None) -> CaptureSpec:
    """The spec named on the command line; bad files and values are UsageErrors."""
    path = args.config or args.pod
    doc = load_document(path)
    try:
        if args.config:
            if not isinstance(doc, dict):
                keys = ", ".join(KNOWN_KEYS[:3])
                raise UsageError(f"{path}: expected a mapping of istio-iptables keys ({keys}, ...)")
            return spec_from_config(doc)
        ips = None
        if ns is not None and isinstance(doc, dict) and not (doc.get("status") or {}).get("podIPs") \
                and not (doc.get("status") or {}).get("podIP"):
            ips = netns.addresses(ns)
        return spec_from_pod(doc, ips)
    except InvalidSpecError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _namespace(path: str) -> netns.NetNS:
    ns = netns.NetNS(path)
    if not ns.exists():
        raise UsageError(f"--netns {path}: no such network namespace")
    try:
        host = ns.is_host()
    except OSError as exc:
        raise UsageError(f"--netns {path}: {exc}") from None
    if host:
        raise UsageError(f"--netns {path}: that is the host's own network namespace; weir only programs pod namespaces")
    return ns


def _backend(args: argparse.Namespace) -> Backend | None:
    backend = _BACKENDS[args.backend]
    if backend is None and os.environ.get("NATIVE_NFTABLES", "").lower() in ("1", "true"):
        return Backend.NFTABLES
    return backend


def cmd_render(args: argparse.Namespace) -> int:
    spec = load_spec(args)
    text = nftables.render(spec) if args.backend == "nftables" else iptables.render(spec, int(args.family))
    sys.stdout.write(text)
    return 0


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    sys.stderr.write(f"weir capture {args.verb}: {exc}\n")
    return 1


def cmd_apply(args: argparse.Namespace) -> int:
    ns = _namespace(args.netns)
    spec = load_spec(args, ns)
    try:
        result = Executor(state_dir=args.state_dir).apply(spec, ns, _backend(args))
    except CaptureError as exc:
        return _fail(args, exc)
    families = "+".join(f"IPv{f}" for f in result.families)
    state = "applied" if result.changed else "already in place, nothing changed"
    print(f"capture rules {state} in {args.netns} ({result.backend.value}, {families})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    ns = _namespace(args.netns)
    spec = load_spec(args, ns)
    try:
        result = Executor(state_dir=args.state_dir).check(spec, ns, _backend(args))
    except CaptureError as exc:
        return _fail(args, exc)
    if result.ok:
        print(result.describe())
        return 0
    print(f"capture rules in {args.netns} differ from the spec ({result.backend.value}):")
    print(result.describe())
    return 1


def cmd_remove(args: argparse.Namespace) -> int:
    ns = _namespace(args.netns)
    spec = load_spec(args, ns)
    try:
        removed = Executor(state_dir=args.state_dir).remove(ns, spec, _backend(args))
    except CaptureError as exc:
        return _fail(args, exc)
    print(f"capture rules removed from {args.netns}" if removed else f"no capture rules of weir's in {args.netns}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    def probe() -> int:
        if args.user is not None:
            try:
                drop_privileges(*args.user)
            except OSError as exc:
                raise UsageError(f"--user {args.user[0]}:{args.user[1]}: {exc.strerror}") from None
        cfg = ProbeConfig(proxy_port=args.proxy_port, inbound_port=args.inbound_port, probe_port=args.probe_port,
                          ipv6=host_is_ipv6_only() if args.ipv6 is None else args.ipv6, timeout=args.timeout)
        result = run_probe(cfg, log=lambda line: print(f"validation: {line}", file=sys.stderr))
        if result.ok:
            print(f"validation passed: {result.detail}")
        else:
            sys.stderr.write(failure_message(cfg, result, os.getuid()) + "\n")
        return result.exit_code

    if args.netns:
        return netns.run_in(_namespace(args.netns), probe)
    return probe()
