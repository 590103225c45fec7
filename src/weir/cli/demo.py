"""``weir demo``: the capture engine end to end on this machine, in namespaces it makes itself.

A pod and a peer on a bridge (both network namespaces, nothing in the host's). The pod's
validation fails first, as for a pod that raced the node agent; then weir programs the
pod's capture rules, validation passes, real connections in both directions go through a
stand-in sidecar that reports each original destination, drift is detected and repaired,
and removal leaves the pod clean. Everything is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from weir.capture.apply import Backend, CaptureError, Executor
from weir.capture.pod import spec_from_pod
from weir.capture.spec import InvalidSpecError
from weir.cli._common import Parser, UsageError, load_document
from weir.netns import lab

APP_UID = 1000
PROXY_UID = 1337


def register(groups: Any) -> None:
    parser: Parser = groups.add_parser(
        "demo", help="show traffic capture end to end on this machine (root; cleans up after itself)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pod", metavar="FILE", help="Pod manifest to capture (default: the shipped example)")
    parser.add_argument("--backend", choices=["auto", "iptables-nft", "iptables-legacy", "nftables"], default="auto",
                        help="rule back-end (default: auto, as Istio detects)")
    parser.set_defaults(func=cmd_demo)


class _Step:
    def __init__(self) -> None:
        self.failed = 0

    def say(self, text: str) -> None:
        print(text, flush=True)

    def check(self, ok: bool, text: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {text}", flush=True)
        if not ok:
            self.failed += 1


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=5)


def _start(procs: list[subprocess.Popen[str]], host: lab.Host, script: str, *args: str,
           uid: int | None = None) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", host.name]
    if uid is not None:
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    proc = subprocess.Popen([*argv, "/usr/bin/python3", "-u", script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        error = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} did not start: {error}")
    return proc


def _validate(host: lab.Host) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weir", "capture", "validate", "--netns", host.path,
                           "--user", str(PROXY_UID), "--timeout", "2"], capture_output=True, text=True, check=False)


def _connect(host: lab.Host, ip: str, port: int, uid: int) -> str:
    code = ("import socket,sys\ns=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
            "print(s.recv(200).decode().strip())")
    out = lab.python(host, code, user=uid, args=[ip, str(port)])
    return out.stdout.strip() if out.returncode == 0 else f"error: {out.stderr.strip().splitlines()[-1:]}"


def _tamper(host: lab.Host, backend: Backend) -> None:
    if backend is Backend.NFTABLES:
        host.run("nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-output")
    else:
        tool = "iptables-legacy" if backend is Backend.IPTABLES_LEGACY else "iptables-nft"
        host.run(tool, "-t", "nat", "-D", "ISTIO_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN")


def cmd_demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UsageError("the demo creates network namespaces and needs root")
    manifest = load_document(args.pod) if args.pod else _example()
    backend = None if args.backend == "auto" else Backend(args.backend)
    step = _Step()
    workdir = tempfile.mkdtemp(prefix="weir-demo-")
    try:
        os.chmod(workdir, 0o755)  # noqa: S103 - the sidecar stand-in runs as uid 1337 and must read it
        script = os.path.join(workdir, "labproc.py")
        shutil.copy(str(resources.files("weir.netns") / "labproc.py"), script)
        os.chmod(script, 0o644)
        with lab.topology(2, ipv6=False, prefix="wdemo") as topo, _processes() as procs:
            pod, peer = topo.hosts
            try:
                spec = spec_from_pod(manifest, [f"{pod.ipv4}/24"])
            except InvalidSpecError as exc:
                raise UsageError(f"{args.pod}: {exc}") from None
            step.say(f"1. a pod ({pod.name}, {pod.ipv4}) and a peer ({peer.name}, {peer.ipv4}) on a bridge")
            _start(procs, peer, script, "reply", "8080", "hello from the peer")
            _start(procs, pod, script, "reply", "8080", "hello from the app", uid=APP_UID)

            step.say("2. validation before capture (a pod that raced the node agent)")
            before = _validate(pod)
            step.check(before.returncode == 126, f"weir capture validate exits {before.returncode} (126 expected)")

            step.say("3. weir programs the pod's capture rules")
            executor = Executor()
            result = executor.apply(spec, pod.ns, backend)
            step.check(result.changed, f"applied with {result.backend.value}")
            again = executor.apply(spec, pod.ns, result.backend)
            step.check(not again.changed, "applying the same rules again changes nothing")

            step.say("4. validation after capture")
            after = _validate(pod)
            step.check(after.returncode == 0, f"weir capture validate exits {after.returncode} (0 expected)")

            step.say("5. real traffic through a stand-in sidecar (uid 1337) that relays to the original destination")
            relay = _start(procs, pod, script, "relay", uid=PROXY_UID)
            answer = _connect(pod, peer.ipv4, 8080, APP_UID)
            step.check(answer == "hello from the peer", f"app -> {peer.ipv4}:8080 answered {answer!r}")
            answer = _connect(peer, pod.ipv4, 8080, 0)
            step.check(answer == "hello from the app", f"peer -> {pod.ipv4}:8080 answered {answer!r}")
            time.sleep(0.2)
            relay.kill()
            for line in (relay.stdout.read() if relay.stdout else "").splitlines():
                step.say(f"     sidecar saw  {line}")
            answer = _connect(pod, peer.ipv4, 8080, PROXY_UID)
            step.check(answer == "hello from the peer", "the proxy's own uid 1337 goes out directly, not captured")

            step.say("6. drift: a rule is deleted behind weir's back")
            _tamper(pod, result.backend)
            drift = executor.check(spec, pod.ns, result.backend)
            step.check(not drift.ok, "weir capture check finds it:")
            for line in drift.describe().splitlines():
                step.say(f"     {line}")
            executor.apply(spec, pod.ns, result.backend)
            step.check(executor.check(spec, pod.ns, result.backend).ok, "re-applying repairs it")

            step.say("7. removal")
            executor.remove(pod.ns, spec, result.backend)
            gone = executor.check(spec, pod.ns, result.backend)
            step.check(not gone.ok and _validate(pod).returncode == 126, "rules gone; validation fails again")
    except CaptureError as exc:
        print(f"weir demo: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("demo finished: all steps passed" if not step.failed else f"demo finished: {step.failed} step(s) FAILED")
    return 0 if not step.failed else 1


def _example() -> Any:
    path = resources.files("weir.examples") / "pod.yaml"
    import yaml

    return yaml.safe_load(path.read_text())
