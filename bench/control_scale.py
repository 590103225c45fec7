"""The control plane at scale: N services and M simulated proxies (ADS clients) against
``weir control run``: time to converge, per-proxy push latency, the control plane's peak
memory and CPU, compared with istiod's published figure (peers.md §2: "Istiod: **1 vCPU and
1.5 GB** for 1000 services and 2000 sidecars with namespace isolation").

    .venv/bin/python bench/control_scale.py [--quick] [--sizes 50:100,100:200] [--changes 4]

For each size ``SERVICES:PROXIES`` (:mod:`control_scale_mesh` describes the mesh), in a fresh
temporary directory: ``weir apply -f`` writes the mesh into a new config store (timed); ``weir
control run`` starts as its own process (so ``/proc`` gives its own CPU and memory) and is
ready when ``/ready`` answers; the simulated proxies (:mod:`control_scale_client`, 500
streams per process by default) connect their channels before the clock starts, and are then
released together:

- **initial**: from the release to each proxy's ACK of every type of the first version;
- **changes** (alternating: one edited VirtualService, one added Service; each written into
  the store as ``weir apply`` does, in this process, so the clock starts when the transaction
  has committed): from the commit to each proxy's last ACK of the new version. The next
  change waits for convergence and a random pause (0-1 s), so the control plane's 1 s store
  poll is not in phase with the changes. ``first push`` is when the first proxy got a
  response of the new version: the poll wait plus reloading the store and the registry.

Convergence is the last proxy's time; the per-proxy times give p50/p90/p99/max. The control
plane is sampled every 0.1 s (CPU seconds of all its threads, VmRSS, VmHWM). A profile of
the per-proxy work on the same snapshot follows (:mod:`control_scale_profile`). Everything
runs on 127.0.0.1 under a temporary directory, needs no root, and every process started is
stopped by its PID when the run ends, fails, or is interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from control_scale_mesh import CHANGES, Mesh
from control_scale_procs import Clients, ControlProcess, Sampler, Synced, memory
from control_scale_profile import profile, py_spy_record
from control_scale_report import ISTIOD, build_results, chart, print_table
from lab import COMMIT_ENV, machine, run_at_ref, stop_on_sigterm
from report import outputs, run_main, write_json

from weir.api.load import load_documents
from weir.control.store import ConfigStore

ROOT = Path(__file__).resolve().parents[1]
FULL_SIZES = "50:100,100:200,250:500"
QUICK_SIZES = "50:100"
PROFILE_SIZE = "1000:2000"
PROGRESS_EVERY = 15.0


def wait_all(clients: Clients, proxies: int, version: int, t0: float, timeout: float,
             what: str) -> tuple[list[Synced], int]:
    """Every proxy's first report of ``version`` (or later), and how many streams were opened
    again meanwhile; raises when some proxies are missing after ``timeout``."""
    found: dict[int, Synced] = {}
    reconnects = 0
    deadline = time.monotonic() + timeout
    shown = time.monotonic()
    while len(found) < proxies:
        if time.monotonic() - shown > PROGRESS_EVERY:
            shown = time.monotonic()
            print(f"    {what}: {len(found)}/{proxies} proxies synced after {shown - t0:.0f} s", file=sys.stderr,
                  flush=True)
        try:
            event = clients.next_event(min(deadline, shown + PROGRESS_EVERY) - time.monotonic())
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{what}: {proxies - len(found)} of {proxies} proxies did not ACK version "
                                   f"{version} within {timeout:.0f} s") from None
            continue
        if "reconnect" in event:
            reconnects += 1
        elif "v" in event and event["v"] >= version and event["p"] not in found:
            found[event["p"]] = Synced(event["p"], event["v"], event["first"], event["synced"])
    return list(found.values()), reconnects


def phase(name: str, kind: str, version: int, t0: float, waited: tuple[list[Synced], int],
          sampler: Sampler) -> dict[str, Any]:
    synced, reconnects = waited
    end = max(s.synced for s in synced)
    cpu, peak = sampler.between(t0, end)
    inside = [s for s in sampler.samples if t0 <= s.t <= end]
    clients_cpu = inside[-1].clients_cpu - inside[0].clients_cpu if len(inside) >= 2 else 0.0
    return {"name": name, "kind": kind, "version": version,
            "latencies_s": sorted(round(s.synced - t0, 4) for s in synced),
            "first_push_s": round(min(s.first for s in synced) - t0, 4),
            "convergence_s": round(end - t0, 4),
            "control_cpu_s": round(cpu, 3), "control_peak_cores": round(peak, 3),
            "clients_cpu_s": round(clients_cpu, 3), "reconnects": reconnects}


def measure_size(services: int, proxies: int, changes: int, per_client: int, timeout: float, tmp: Path,
                 spy: str | None) -> dict[str, Any]:
    objects = Mesh(services, proxies).manifests()
    manifest = tmp / "mesh.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    store = tmp / "control.db"
    start = time.monotonic()
    applied = subprocess.run([sys.executable, "-m", "weir", "apply", "-f", str(manifest), "--store", str(store)],
                             capture_output=True, text=True, check=False, timeout=timeout)
    apply_s = time.monotonic() - start
    if applied.returncode != 0:
        raise RuntimeError(f"weir apply failed ({applied.returncode}): {applied.stderr.strip()[:1000]}")
    control = ControlProcess(store, tmp / "control.log")
    clients: Clients | None = None
    try:
        control.start()
        rss_ready, _ = memory(control.pid)
        clients = Clients(control.ads, services, proxies, per_client)
        clients.start(timeout)
        sampler = Sampler(control.pid, clients)
        phases = []
        spy_summary = None
        with sampler.running():
            t0 = clients.go()
            version = 1
            phases.append(phase("initial", "initial", version, t0,
                                wait_all(clients, proxies, version, t0, timeout, "initial"), sampler))
            print(f"    initial: {phases[-1]['convergence_s']:.2f} s", file=sys.stderr, flush=True)
            config = ConfigStore(str(store))
            kinds = list(CHANGES)
            for k in range(changes):
                kind = kinds[k % len(kinds)]
                time.sleep(random.uniform(0.5, 1.5))  # noqa: S311 - a pause, not a secret
                spying = py_spy_record(spy, control.pid, tmp / f"spy-{k}.txt") if spy and k == changes - 1 else None
                try:
                    resources = load_documents(json.dumps(CHANGES[kind](k)), f"change {k}", json.loads)
                    config.apply(resources)
                    t0 = time.monotonic()
                    version += 1
                    name = f"{kind} #{k + 1}"
                    phases.append(phase(name, kind, version, t0,
                                        wait_all(clients, proxies, version, t0, timeout, name), sampler))
                finally:
                    if spying is not None:
                        spy_summary = spying.finish()
                print(f"    {name}: {phases[-1]['convergence_s']:.2f} s", file=sys.stderr, flush=True)
            final = sampler.sample()
        return {"services": services, "proxies": proxies, "apply_s": round(apply_s, 3),
                "objects": len(objects), "ready_s": round(control.ready_after, 3),
                "rss_ready_bytes": rss_ready, "peak_rss_bytes": final.hwm, "phases": phases,
                "timeline": [[round(s.t - sampler.samples[0].t, 2), round(s.cpu, 2), s.rss]
                             for s in sampler.samples[:: max(1, len(sampler.samples) // 600)]],
                "py_spy": spy_summary}
    except Exception:
        print(f"control plane log (tail):\n{control.log_tail()}", file=sys.stderr)
        raise
    finally:
        if clients is not None:
            clients.stop()
        control.stop()


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        s, sep, p = part.strip().partition(":")
        if not sep or not s.isdigit() or not p.isdigit() or int(s) < 1 or int(p) < 1:
            raise argparse.ArgumentTypeError(f"size {part!r} is not SERVICES:PROXIES (e.g. 1000:2000)")
        sizes.append((int(s), int(p)))
    return sizes


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 2 changes: a smoke run (CI)")
    p.add_argument("--sizes", type=parse_sizes,
                   help=f"SERVICES:PROXIES,... smallest first (default {FULL_SIZES}; --quick {QUICK_SIZES}); "
                   f"istiod's published size is 1000:2000")
    p.add_argument("--changes", type=int, help="changes per size, alternating kinds (default 3; --quick 2)")
    p.add_argument("--per-client", type=int, default=500, help="simulated proxies per client process (default 500)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one convergence (default 1800)")
    p.add_argument("--profile-size", type=parse_sizes,
                   help=f"SERVICES:PROXIES of the snapshot profiled in-process (default {PROFILE_SIZE}; "
                   f"--quick {QUICK_SIZES})")
    p.add_argument("--py-spy", metavar="PATH", default=shutil.which("py-spy"),
                   help="py-spy binary: samples the control plane during the last change of the largest size "
                   "(default: py-spy on PATH, if any)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    p.add_argument("--ref", help="measure weir as committed at this git ref (e.g. HEAD) instead of the working tree")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    if args.ref and not os.environ.get(COMMIT_ENV):
        return run_at_ref(args.ref, __file__, list(sys.argv[1:] if argv is None else argv))
    sizes = args.sizes or parse_sizes(QUICK_SIZES if args.quick else FULL_SIZES)
    changes = args.changes if args.changes is not None else (2 if args.quick else 3)
    profile_sizes = args.profile_size or parse_sizes(QUICK_SIZES if args.quick else PROFILE_SIZE)
    profile_services, profile_proxies = profile_sizes[0]
    started = dt.datetime.now(dt.UTC)
    info = machine()
    print(f"control_scale: sizes {sizes}, {changes} changes each, on {info['nproc']} x {info['cpu']}", file=sys.stderr)
    measured = []
    for i, (services, proxies) in enumerate(sizes):
        print(f"  {services} services, {proxies} proxies", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"weir-bench-control-{services}-"))
        try:
            spy = args.py_spy if i == len(sizes) - 1 else None
            measured.append(measure_size(services, proxies, changes, args.per_client, args.timeout, tmp, spy))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("  profiling the per-proxy work in-process", file=sys.stderr, flush=True)
    prof = profile(profile_services, profile_proxies, sample=5 if args.quick else 20)
    res = {
        "benchmark": "control_scale",
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "config": {"sizes": sizes, "changes": changes, "per_client": args.per_client, "quick": args.quick,
                   "poll_interval_s": 1.0, "change_kinds": list(CHANGES)},
        "istiod": ISTIOD,
        **build_results(measured, prof),
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out, png = args.out / f"control_scale-{stamp}.json", args.out / f"control_scale-{stamp}.png"
    title = f"weir control plane at scale — {info['git_commit']}, {stamp}, {info['nproc']} CPU"
    res["chart"] = str(png) if chart(png, res, title) else None
    write_json(out, res)
    print()
    print_table(res)
    print(outputs(out, png if res["chart"] else None))
    return 0


if __name__ == "__main__":
    run_main(main, "control_scale", "every process it started was stopped")
