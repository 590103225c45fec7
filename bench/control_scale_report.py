"""Results, the printed table and the chart of the control-plane benchmark (no I/O but the chart).

Per size: the initial convergence, each change's convergence and first push, the per-proxy
push latencies pooled over the changes (p50/p90/p99/max), the control plane's CPU seconds per
push and peak cores (1 s windows), its peak RSS (VmHWM), and the ratios to istiod's published
1 vCPU and 1.5 GB. When istiod's size (1,000 services, 2,000 sidecars) was not measured, the
figures there are extrapolated from the measured sizes with a least-squares line in
services x proxies (the work per push is one compile per proxy of a config that grows with
the services, and every stream holds its own packed copy), and marked as extrapolated.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from report import percentile, ratio, save_figure, table

ISTIOD_SERVICES, ISTIOD_SIDECARS, ISTIOD_VCPU, ISTIOD_MEMORY = 1000, 2000, 1.0, 1.5e9
ISTIOD: dict[str, Any] = {
    "quote": "Istiod: 1 vCPU and 1.5 GB for 1000 services and 2000 sidecars with namespace isolation.",
    "source": "istio.io Performance and Scalability (istio/istio.io:content/*/docs/ops/deployment/"
              "performance-and-scalability/index.md), via shared/reference/peers.md §2.1",
    "services": ISTIOD_SERVICES, "sidecars": ISTIOD_SIDECARS, "vcpu": ISTIOD_VCPU, "memory_bytes": ISTIOD_MEMORY,
}
GB = 1e9


def _size_summary(size: dict[str, Any]) -> dict[str, Any]:
    initial = size["phases"][0]
    changes = size["phases"][1:]
    pooled = [x for ph in changes for x in ph["latencies_s"]]
    conv = [ph["convergence_s"] for ph in changes]
    cpu = [ph["control_cpu_s"] for ph in changes]
    peak_cores = max([ph["control_peak_cores"] for ph in size["phases"]], default=0.0)
    out = {
        "services": size["services"], "proxies": size["proxies"],
        "initial_convergence_s": initial["convergence_s"],
        "initial_latency_s": _dist(initial["latencies_s"]),
        "initial_control_cpu_s": initial["control_cpu_s"],
        "change_convergence_s": {"median": statistics.median(conv), "max": max(conv)} if conv else None,
        "change_first_push_s": statistics.median(ph["first_push_s"] for ph in changes) if changes else None,
        "change_latency_s": _dist(pooled) if pooled else None,
        "change_control_cpu_s": statistics.median(cpu) if cpu else None,
        "control_peak_cores": peak_cores,
        "control_peak_rss_bytes": size["peak_rss_bytes"],
        "control_rss_ready_bytes": size["rss_ready_bytes"],
        "clients_cpu_s_per_change": statistics.median(ph["clients_cpu_s"] for ph in changes) if changes else None,
    }
    out["ratios_vs_istiod_at_its_size"] = {
        "peak_rss": ratio(size["peak_rss_bytes"], ISTIOD_MEMORY),
        "peak_cores": ratio(peak_cores, ISTIOD_VCPU),
    }
    return out


def _dist(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values)}


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least squares ``y = a + b x``; None with fewer than two distinct x."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def _at_istiod_size(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    target = ISTIOD_SERVICES * ISTIOD_SIDECARS
    for s in summaries:
        if s["services"] * s["proxies"] == target:
            return {"how": "measured", **_pick(s)}
    xs = [s["services"] * s["proxies"] for s in summaries]
    picked = [_pick(s) for s in summaries]
    out: dict[str, Any] = {"how": f"extrapolated: least squares y = a + b * services * proxies over {len(xs)} sizes"}
    for key in picked[0] if picked else ():
        ys = [p[key] for p in picked]
        if any(y is None for y in ys):
            continue
        fit = _fit(xs, ys)
        if fit is not None:
            out[key] = fit[0] + fit[1] * target
    return out if len(out) > 1 else None


def _pick(s: dict[str, Any]) -> dict[str, Any]:
    change = s["change_convergence_s"]
    return {"initial_convergence_s": s["initial_convergence_s"],
            "change_convergence_s": change["median"] if change else None,
            "change_control_cpu_s": s["change_control_cpu_s"],
            "control_peak_rss_bytes": s["control_peak_rss_bytes"]}


def build_results(measured: list[dict[str, Any]], prof: dict[str, Any]) -> dict[str, Any]:
    summaries = [_size_summary(s) for s in measured]
    at = _at_istiod_size(summaries)
    comparison = None
    if at is not None and "control_peak_rss_bytes" in at:
        comparison = {**at, "peak_rss_vs_istiod": ratio(at["control_peak_rss_bytes"], ISTIOD_MEMORY),
                      "note": "weir's push is one Python thread: it uses at most about one core (see "
                              "control_peak_cores), so its cost shows as time to converge, not as cores; "
                              "istio publishes no convergence time for this size. Without Sidecar/exportTo, every "
                              "weir proxy gets every service; istiod's figure is with namespace isolation."}
    return {"sizes": measured, "summaries": summaries, "at_istiod_size": comparison, "profile": prof}


# ---- printing -----------------------------------------------------------------------------------


def print_table(res: dict[str, Any]) -> None:
    rows = []
    for s in res["summaries"]:
        lat, conv = s["change_latency_s"], s["change_convergence_s"]
        rows.append([f"{s['services']}:{s['proxies']}", f"{s['initial_convergence_s']:.2f}",
                     f"{conv['median']:.2f}" if conv else "-",
                     *([f"{lat[k]:.2f}" for k in ("p50", "p90", "p99", "max")] if lat else ["-"] * 4),
                     f"{s['change_control_cpu_s']:.1f}" if s["change_control_cpu_s"] is not None else "-",
                     f"{s['control_peak_cores']:.2f}", f"{s['control_peak_rss_bytes'] / 1e6:.0f}",
                     f"{s['ratios_vs_istiod_at_its_size']['peak_cores']:.2f}x",
                     f"{s['ratios_vs_istiod_at_its_size']['peak_rss']:.2f}x"])
    print(table(rows, ["services:proxies", "initial s", "change s (med)", "push p50", "p90", "p99", "max",
                       "CPU s/push", "peak cores", "peak RSS MB", "cores/istiod", "RSS/istiod"]))
    at = res["at_istiod_size"]
    if at:
        print(f"\nat istiod's size (1000 services, 2000 proxies), {at['how']}:")
        for key in ("initial_convergence_s", "change_convergence_s", "change_control_cpu_s"):
            if key in at and at[key] is not None:
                print(f"  {key}: {at[key]:.0f}")
        rss = at["control_peak_rss_bytes"] / GB
        print(f"  peak RSS: {rss:.2f} GB = {at['peak_rss_vs_istiod']:.2f}x istiod's 1.5 GB")
    p = res["profile"]
    steps = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in p["per_proxy_s"].items())
    print(f"\nper proxy and version at {p['services']}:{p['proxies']} (median of {p['sampled_proxies']}): {steps}")
    w, n = p["what_if_pack_cache"], p["what_if_namespace_and_pack_cache"]
    print(f"one push ~ {p['one_push_cpu_s_estimate']:.0f} CPU s of compile+pack; with a content-addressed pack cache "
          f"~ {w['one_push_cpu_s_estimate']:.0f} CPU s ({p['distinct_resources_in_sample']} distinct of "
          f"{p['resources_in_sample']} resources in the sample); also compiling the outbound half once per "
          f"namespace ~ {n['one_push_cpu_s_estimate']:.1f} CPU s (same output: {n['identical_to_compile_proxy']})")


def chart(path: Path, res: dict[str, Any], title: str) -> bool:
    """Convergence vs size, per-proxy push latency per size, the largest size's CPU and RSS over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summaries, sizes = res["summaries"], res["sizes"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 5))
    xs = [s["services"] * s["proxies"] for s in summaries]
    a.plot(xs, [s["initial_convergence_s"] for s in summaries], "o-", label="initial (all proxies ACK)")
    a.plot(xs, [s["change_convergence_s"]["median"] if s["change_convergence_s"] else None for s in summaries],
           "s-", label="one change (median)")
    at = res["at_istiod_size"]
    target = ISTIOD_SERVICES * ISTIOD_SIDECARS
    changes = [(x, s["change_convergence_s"]["median"]) for x, s in zip(xs, summaries, strict=True)
               if s["change_convergence_s"]]
    fit = _fit([x for x, _ in changes], [y for _, y in changes])
    if at and at["how"] != "measured" and at.get("change_convergence_s") and fit is not None:
        line = [min(xs) * 1.0, target]
        a.plot(line, [fit[0] + fit[1] * x for x in line], ":", color="gray", lw=1, label="least-squares line")
        a.plot([target], [at["change_convergence_s"]], "x", markersize=10, label="change, extrapolated to 1000:2000")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("services x proxies")
    a.set_ylabel("seconds to converge")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    a.set_title("time to full convergence", fontsize=10)
    data = [[x for ph in s["phases"][1:] for x in ph["latencies_s"]] or [0.0] for s in sizes]
    b.boxplot(data, tick_labels=[f"{s['services']}:{s['proxies']}" for s in sizes], whis=(5, 95),
              flierprops={"markersize": 2})
    b.set_ylabel("seconds from store commit to the proxy's last ACK")
    b.set_title("per-proxy push latency (changes pooled)", fontsize=10)
    b.grid(axis="y", alpha=0.3)
    last = sizes[-1]
    t = [row[0] for row in last["timeline"]]
    cores = [0.0] + [(last["timeline"][i][1] - last["timeline"][i - 1][1]) / max(t[i] - t[i - 1], 1e-6)
                     for i in range(1, len(t))]
    c.plot(t, cores, lw=0.8, label="control plane cores")
    c.axhline(ISTIOD_VCPU, ls="--", color="gray", lw=0.8, label="istiod: 1 vCPU")
    c.set_ylim(bottom=0)
    c.set_xlabel("seconds")
    c.set_ylabel("cores")
    c2 = c.twinx()
    c2.plot(t, [row[2] / GB for row in last["timeline"]], color="tab:red", lw=1, label="RSS (GB)")
    c2.axhline(ISTIOD_MEMORY / GB, ls="--", color="tab:red", lw=0.8, label="istiod: 1.5 GB (at 1000:2000)")
    c2.set_ylim(bottom=0)
    c2.set_ylabel("RSS GB", color="tab:red")
    c2.legend(loc="lower right", fontsize=8)
    c.legend(loc="upper left", fontsize=8)
    c.set_title(f"{last['services']}:{last['proxies']}: CPU and memory over the run", fontsize=10)
    save_figure(fig, path, title)
    return True
