"""What ``weir up`` proves once the mesh is up, from live evidence only.

- **traffic**: every pod annotated ``weir.dev/smoke-test: URL`` (``weir.dev/smoke-test-requests``:
  how many, default 20) sends that many requests from inside itself (``weir example-app load``,
  as the pod's first container) and the answers are counted, with the versions that answered;
- **Envoy on both sides**: each sidecar's own counters (its admin ``/stats`` inside the pod):
  requests and connections it took in on ``virtualInbound`` over TLS, and sent out to mesh
  clusters;
- **mutual TLS**: the peer SPIFFE IDs the server-side sidecars forwarded to the applications
  (``x-forwarded-client-cert``), as the applications reported them;
- **DNS**: the addresses the applications' names resolved to, compared with the control plane's
  registry (the service VIPs only the mesh's DNS proxy knows), and each agent's DNS query count;
- **no NET_ADMIN or NET_RAW**: the effective, permitted and ambient capability sets of every
  process in every pod's network namespace, read from ``/proc``.

:func:`collect` gathers it into a JSON-able dict; :func:`render` prints the short report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from subprocess import TimeoutExpired  # noqa: TID251 (what runtime.exec raises on its timeout; nothing runs here)
from typing import Any

from weir.install.embedded import State
from weir.install.procs import http_get, in_node
from weir.netns import NetNS, run_in
from weir.runtime.node import NodeConfig
from weir.runtime.pods import PodError, Runtime
from weir.runtime.shim import processes_in

SMOKE_TEST = "weir.dev/smoke-test"
SMOKE_REQUESTS = "weir.dev/smoke-test-requests"
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
_STAT = re.compile(r"^([^:]+): (\d+)$")


def envoy_stats(netns: str) -> dict[str, int]:
    """The sidecar's counters and gauges (Envoy's admin on 127.0.0.1:15000 inside the pod)."""
    got = run_in(NetNS(netns), lambda: http_get("http://127.0.0.1:15000/stats?usedonly"))
    if got is None or got[0] != 200:
        return {}
    stats = {}
    for line in got[1].splitlines():
        m = _STAT.match(line.strip())
        if m:
            stats[m.group(1)] = int(m.group(2))
    return stats


def agent_dns_queries(netns: str) -> int | None:
    got = run_in(NetNS(netns), lambda: http_get("http://127.0.0.1:15020/stats/prometheus"))
    if got is None or got[0] != 200:
        return None
    for line in got[1].splitlines():
        if line.startswith("weir_agent_dns_requests_total "):
            return int(float(line.split()[1]))
    return None


def capabilities(netns: str, shim_pid: int = 0) -> list[dict[str, Any]]:
    """Per process of the pod's containers: pid, command, uid, and whether it holds NET_ADMIN /
    NET_RAW. The runtime's shim (the pod's supervisor, containerd's shim) is not a container
    and is left out."""
    found = []
    for pid in processes_in(NetNS(netns), exclude={shim_pid} if shim_pid else ()):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        except OSError:
            continue
        held = 0
        for name in ("CapEff", "CapPrm", "CapAmb"):
            held |= int(fields.get(name, "0").strip(), 16)
        found.append({"pid": pid, "command": fields.get("Name", "").strip(),
                      "uid": int(fields.get("Uid", "0").split()[0]),
                      "net_admin": bool(held >> CAP_NET_ADMIN & 1), "net_raw": bool(held >> CAP_NET_RAW & 1)})
    return found


def _sum(stats: dict[str, int], test: Callable[[str], bool]) -> int:
    return sum(v for k, v in stats.items() if test(k))


def sidecar_summary(stats: dict[str, int]) -> dict[str, int]:
    return {
        "inbound_requests": _sum(stats, lambda k: k.startswith("http.inbound_") and k.endswith(".downstream_rq_total")),
        "inbound_connections": _sum(stats, lambda k: k.startswith("tcp.inbound|")
                                    and k.endswith(".downstream_cx_total")),
        "inbound_tls_handshakes": stats.get("listener.0.0.0.0_15006.ssl.handshake", 0),
        "outbound_requests": _sum(stats, lambda k: k.startswith("cluster.outbound|")
                                  and k.endswith(".upstream_rq_total")),
        "outbound_connections": _sum(stats, lambda k: k.startswith("cluster.outbound|")
                                     and k.endswith(".upstream_cx_total")),
        "outbound_tls_handshakes": _sum(stats, lambda k: k.startswith("cluster.outbound|")
                                        and k.endswith(".ssl.handshake")),
    }


def _peers(body: Any, into: set[str]) -> None:
    """Every ``peer`` SPIFFE pair an application reported, nested answers included."""
    if isinstance(body, dict):
        peer = body.get("peer")
        if isinstance(peer, dict) and peer.get("uri"):
            into.add(f"{body.get('service', '?')} ({body.get('pod', '?')}) <- {peer['uri']}")
        for value in body.values():
            _peers(value, into)


def _addresses(body: Any, into: dict[str, str]) -> None:
    if isinstance(body, dict):
        for key in ("url", "target"):
            if key in body and "address" in body:
                into[str(body[key])] = str(body["address"])
        for value in body.values():
            _addresses(value, into)


def collect(state: State, node: NodeConfig) -> dict[str, Any]:
    runtime = Runtime(node)
    records = runtime.pods()
    report: dict[str, Any] = {"traffic": [], "sidecars": {}, "peers": [], "dns": {}, "capabilities": {}}
    for record in records:
        annotations = (record.manifest.get("metadata") or {}).get("annotations") or {}
        url = annotations.get(SMOKE_TEST)
        if not url:
            continue
        count = str(annotations.get(SMOKE_REQUESTS, "20"))
        try:
            result = runtime.exec(record.namespace, record.name, None,
                                  ["weir", "example-app", "load", url, "-n", count], capture=True, timeout=120)
            summary = json.loads(result.stdout or "{}")
        except (PodError, ValueError, OSError, TimeoutExpired) as exc:
            wanted = int(count) if count.isdigit() else 1  # none of them was answered
            summary = {"requests": wanted, "failed": wanted, "errors": {str(exc): 1}}
        summary["from"] = f"{record.namespace}/{record.name}"
        report["traffic"].append(summary)
    peers: set[str] = set()
    addresses: dict[str, str] = {}
    for summary in report["traffic"]:
        for sample in summary.get("samples", []):
            _peers(sample, peers)
            _addresses(sample, addresses)
        if summary.get("url") and summary.get("address"):
            addresses[str(summary["url"])] = str(summary["address"])
    report["peers"] = sorted(peers)
    registry = in_node(state, lambda: http_get(f"{state.debug_url}/debug/registryz"))
    vips = {}
    if registry is not None and registry[0] == 200:
        vips = {str(s["vip"]): str(s["hostname"]) for s in json.loads(registry[1]) if s.get("vip")}
    report["dns"] = {"resolved": {name: {"address": addr, "service": vips.get(addr, "")}
                                  for name, addr in sorted(addresses.items())}, "queries": {}}
    for record in records:
        key = f"{record.namespace}/{record.name}"
        if not record.netns:
            continue
        report["capabilities"][key] = capabilities(record.netns, record.shim_pid)
        injected = record.has_istio_proxy
        if injected:
            report["sidecars"][key] = sidecar_summary(envoy_stats(record.netns))
            report["dns"]["queries"][key] = agent_dns_queries(record.netns)
    report["checks"] = checks(report)
    return report


def checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim of the report with whether the evidence holds it up."""
    out = []

    def claim(name: str, ok: bool, detail: str) -> None:
        out.append({"name": name, "ok": ok, "detail": detail})

    traffic = report["traffic"]
    if traffic:
        sent = sum(int(t.get("requests", 0)) for t in traffic)
        failed = sum(int(t.get("failed", 0)) for t in traffic)
        versions: dict[str, int] = {}
        for t in traffic:
            for version, n in (t.get("versions") or {}).items():
                versions[version] = versions.get(version, 0) + int(n)
        split = ", ".join(f"{v}: {n}" for v, n in sorted(versions.items()))
        claim("traffic", sent > 0 and failed == 0,
              f"{sent - failed}/{sent} requests answered" + (f" (versions {split})" if split else "")
              + ("; errors: " + "; ".join(e for t in traffic for e in (t.get("errors") or {})) if failed else ""))
        sidecars = report["sidecars"]
        inbound = {k: v for k, v in sidecars.items() if v["inbound_requests"] or v["inbound_connections"]}
        outbound = {k: v for k, v in sidecars.items() if v["outbound_requests"] or v["outbound_connections"]}
        tls_in = all(v["inbound_tls_handshakes"] > 0 for v in inbound.values())
        claim("envoy-both-sides", bool(inbound) and bool(outbound) and tls_in,
              f"{len(outbound)} sidecars sent to mesh services, {len(inbound)} took requests in, "
              + ("all over mutual TLS" if tls_in else "NOT all over TLS"))
        claim("mutual-tls-peers", bool(report["peers"]),
              "; ".join(report["peers"]) or "no application saw a peer identity")
        resolved = report["dns"]["resolved"]
        by_mesh = {n: r for n, r in resolved.items() if r["service"]}
        queries = sum(q or 0 for q in report["dns"]["queries"].values())
        claim("dns-proxy", bool(resolved) and len(by_mesh) == len(resolved) and queries > 0,
              ", ".join(f"{n} -> {r['address']} ({r['service'] or 'not a mesh VIP'})" for n, r in resolved.items())
              + f"; {queries} queries answered by the sidecars' DNS proxies")
    else:
        claim("traffic", True, f"no pod carries a {SMOKE_TEST} annotation: no traffic sent")
    caps = report["capabilities"]
    holders = [f"{pod}: {p['command']} (pid {p['pid']})" for pod, procs in caps.items() for p in procs
               if p["net_admin"] or p["net_raw"]]
    processes = sum(len(p) for p in caps.values())
    claim("no-net-admin", processes > 0 and not holders,
          f"{processes} processes in {len(caps)} pods checked; "
          + ("none holds NET_ADMIN or NET_RAW" if not holders else "holding: " + "; ".join(holders)))
    return out


def render(report: dict[str, Any]) -> str:
    lines = ["", "weir up: what the mesh did"]
    for check in report["checks"]:
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
    for pod, summary in sorted(report["sidecars"].items()):
        lines.append(f"       sidecar {pod}: in {summary['inbound_requests']} requests + "
                     f"{summary['inbound_connections']} TCP connections ({summary['inbound_tls_handshakes']} TLS "
                     f"handshakes); out {summary['outbound_requests']} requests + "
                     f"{summary['outbound_connections']} connections")
    return "\n".join(lines)
