"""``weir proxy-agent``: run the sidecar agent (Istio's pilot-agent) next to a workload.

Run it inside the pod's network namespace (the injector makes it the ``istio-proxy`` container,
as uid 1337): it serves SDS on a UNIX socket, the DNS proxy on ``127.0.0.1:15053`` with the
control plane's name tables, the status server on ``:15020``, and runs Envoy until SIGTERM.
Certificates come from the CA at ``CA_ADDR`` (TLS; the pod's token authenticates the request),
or are signed in-process with a local ``cacerts`` directory (``--ca-dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from weir.agent.caclient import grpc_signer
from weir.agent.envoy import EnvoyError
from weir.agent.proxy import ConfigError, ProxyConfig, config_from, serve
from weir.agent.secrets import Issued, Signer
from weir.cli import _logging
from weir.cli._common import Parser, UsageError
from weir.control.ca import CacertsError, CertificateAuthority

# (flag, help) — every flag also reads the environment name shown in the help.
_FLAGS = (
    ("--pod-name", "the pod's name (POD_NAME; required)"),
    ("--pod-namespace", "the pod's namespace (POD_NAMESPACE; required)"),
    ("--instance-ip", "the pod's IPs, comma-separated (INSTANCE_IP; required)"),
    ("--service-account", "the pod's service account (SERVICE_ACCOUNT; default 'default')"),
    ("--trust-domain", "the mesh's trust domain (TRUST_DOMAIN; default cluster.local)"),
    ("--xds-address", "the control plane's ADS address, host:port or unix:///path "
     "(XDS_ADDRESS; default istiod.istio-system.svc:15010)"),
    ("--ca-address", "the CA's gRPC address, host:port, TLS (CA_ADDR): where certificates are signed"),
    ("--ca-root-cert", "trust bundle to check the CA with (WEIR_CA_ROOT_CERT; default "
     "/var/run/secrets/istio/root-cert.pem, or $WEIR_POD_DIR/root-cert.pem)"),
    ("--token-file", "the pod's service-account token for the CA (WEIR_TOKEN_FILE; default "
     "/var/run/secrets/tokens/istio-token, or $WEIR_POD_DIR/token)"),
    ("--secret-ttl", "workload certificate lifetime, e.g. 24h, 90m, 30s (SECRET_TTL; default 24h)"),
    ("--ca-dir", "sign in-process with this cacerts directory instead of asking a CA (WEIR_CA_DIR)"),
    ("--config-dir", "where the bootstrap and Envoy's log go (WEIR_PROXY_CONFIG_DIR; default /etc/istio/proxy)"),
    ("--sds-socket", "the SDS socket (WEIR_SDS_SOCKET; default /var/run/secrets/workload-spiffe-uds/socket)"),
    ("--dns-table", "a JSON name table for the DNS proxy (WEIR_DNS_TABLE)"),
    ("--dns-address", "the DNS proxy's address (WEIR_DNS_ADDRESS; default 127.0.0.1:15053)"),
    ("--status-address", "the status server's address (WEIR_STATUS_ADDRESS; default 127.0.0.1:15020)"),
    ("--drain-duration", "seconds Envoy drains on SIGTERM (TERMINATION_DRAIN_DURATION_SECONDS; default 5)"),
    ("--concurrency", "Envoy's worker threads (WEIR_PROXY_CONCURRENCY; default 2)"),
    ("--log-level", "Envoy's log level (WEIR_PROXY_LOG_LEVEL; default warning)"),
    ("--log-format", "json | text | auto (WEIR_LOG_FORMAT; default auto)"),
)


def register(groups: Any) -> None:
    parser = groups.add_parser("proxy-agent", help="the sidecar agent: Envoy, SDS, DNS proxy, status",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True
    run = verbs.add_parser("run", help="run until SIGTERM", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, text in _FLAGS:
        run.add_argument(flag, help=text)
    run.set_defaults(func=cmd_run)
    # Istio's injected command line: `pilot-agent proxy sidecar --domain ... --proxyLogLevel=...`
    proxy = verbs.add_parser("proxy", help="Istio's form: `proxy sidecar [--domain D] [--proxyLogLevel L] ...`",
                             description="The arguments Istio's injector gives pilot-agent; settings come from the "
                             "environment as for `run`.")
    proxy.add_argument("kind", choices=["sidecar"], help="the proxy type (only sidecar)")
    proxy.add_argument("--domain", help="the pod's DNS domain (accepted; weir derives it from POD_NAMESPACE)")
    proxy.add_argument("--proxyLogLevel", dest="log_level", help="Envoy's log level")
    proxy.add_argument("--proxyComponentLogLevel", dest="component_log_level", help="accepted, not used")
    proxy.add_argument("--log_output_level", dest="log_output_level", help="accepted, not used")
    proxy.add_argument("--log-format", help="json | text | auto (WEIR_LOG_FORMAT; default auto)")
    proxy.set_defaults(func=cmd_run)


def signer(config: ProxyConfig) -> Signer:
    """Ask the CA at ``CA_ADDR`` (TLS, the pod's token), or sign in-process with ``--ca-dir``."""
    if config.ca_dir is not None:
        return local_signer(config)
    if not config.ca_address:
        raise UsageError("--ca-address (CA_ADDR): required, or --ca-dir (WEIR_CA_DIR) to sign in-process")
    for what, path in (("--ca-root-cert (WEIR_CA_ROOT_CERT)", config.ca_root_cert),
                       ("--token-file (WEIR_TOKEN_FILE)", config.token_file)):
        if not path.is_file():
            raise UsageError(f"{what}: {path} does not exist")
    return grpc_signer(config.ca_address, token_file=config.token_file, root_cert=config.ca_root_cert,
                       ttl=config.cert_ttl)


def local_signer(config: ProxyConfig) -> Signer:
    """Sign CSRs for the workload's identity with the cacerts directory of ``config``."""
    assert config.ca_dir is not None
    try:
        ca = CertificateAuthority.from_cacerts(config.ca_dir, trust_domain=config.trust_domain)
    except (CacertsError, ValueError) as exc:
        raise UsageError(f"--ca-dir: {exc}") from None
    identity = config.identity

    def sign(csr_pem: bytes) -> Issued:
        return ca.sign(csr_pem, identity=identity, ttl=config.cert_ttl)
    return sign


def cmd_run(args: argparse.Namespace) -> int:
    ignored = ("func", "group", "verb", "log_format", "kind", "domain", "component_log_level", "log_output_level")
    flags = {k: v for k, v in vars(args).items() if k not in ignored}
    try:
        config = config_from(flags, os.environ)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    sign = signer(config)
    log_format = args.log_format or os.environ.get("WEIR_LOG_FORMAT", "auto")
    if log_format not in ("json", "text", "auto"):
        raise UsageError(f"--log-format: invalid value {log_format!r}: expected json, text or auto")
    _logging.setup(log_format)
    try:
        asyncio.run(serve(config, sign))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, EnvoyError) as exc:  # a port or socket that cannot be bound, Envoy that cannot start
        print(f"weir proxy-agent: {exc}")
        return 1
    return 0
