"""The probe checks themselves, for a single-threaded supervisor: nothing here blocks.

``httpGet`` and ``tcpSocket`` are small state machines over a non-blocking socket (connect,
TLS handshake for HTTPS, send, receive); ``exec`` and ``grpc`` are child processes, polled.
:class:`Checks` holds the attempts in flight; the pod's shim calls :meth:`Checks.wait` where it
would sleep, which waits on their sockets (so an answer is read as soon as it arrives), steps
every attempt and hands back the finished ones. A slow or silent endpoint costs one idle
socket until its ``timeoutSeconds`` run out, never a stalled loop.

A ``grpc`` probe runs ``python -m weir.runtime.grpcprobe`` (gRPC's client library has threads
of its own, which the shim must not have); its ``timeoutSeconds`` bounds the RPC, and the
process gets :data:`GRPC_START_ALLOWANCE` more to start. HTTPS probes do not verify the
server's certificate, as kubelet does not.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from weir.api.pod_model import Container, ExecAction, GRPCAction, HTTPGetAction, ProbeHandler, TCPSocketAction
from weir.runtime.probes import (
    MAX_BODY,
    Outcome,
    address,
    dial_error,
    go_quote,
    host_port,
    http_outcome,
    http_request,
    parse_http_response,
    url,
)

GRPC_START_ALLOWANCE = 10.0
K = TypeVar("K")


class Check(Protocol):
    """One attempt of a probe."""

    deadline: float
    """When it fails for taking too long (the clock of :meth:`Checks.wait`)."""

    def fileno(self) -> int:
        """The socket to wait on, or -1 (a process: polled)."""

    def wants_write(self) -> bool: ...

    def step(self, now: float) -> Outcome | None:
        """Make what progress is possible without blocking; the outcome once there is one."""

    def cancel(self) -> None: ...


@dataclass(frozen=True)
class ExecContext:
    """How an ``exec`` probe runs: as the container's process would (``preexec`` runs in the child)."""

    env: Mapping[str, str]
    cwd: str
    uid: int
    gid: int
    preexec: Callable[[], None] | None = None


def start_check(container: Container, handler: ProbeHandler, timeout: float, now: float,
                context: ExecContext) -> Check:
    """Begin one attempt of ``handler`` (a probe of ``container``) that must end by ``now + timeout``."""
    deadline = now + timeout
    if isinstance(handler, ExecAction):
        return ProcessCheck(list(handler.command), deadline, f"command {go_quote(' '.join(handler.command))} timed out",
                            env=context.env, cwd=context.cwd, uid=context.uid, gid=context.gid,
                            preexec=context.preexec)
    if isinstance(handler, GRPCAction):
        argv = [sys.executable, "-m", "weir.runtime.grpcprobe", "--address", host_port(address(""), handler.port),
                "--service", handler.service, "--timeout", f"{timeout:g}"]
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        return ProcessCheck(argv, deadline + GRPC_START_ALLOWANCE, f"timeout: health rpc did not complete within "
                            f"{timeout:g}s", env=env, cwd="/", preexec=context.preexec)
    port = container.port_number(handler.port)
    if port is None:  # a pod built by hand: the parser refuses unknown port names
        return Done(Outcome(False, f"no port named {go_quote(str(handler.port))} in container {container.name}"))
    if isinstance(handler, TCPSocketAction):
        return SocketCheck(address(handler.host), port, deadline)
    return HTTPCheck(handler, port, deadline)


class Done:
    """An attempt whose outcome was known at once."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.deadline = 0.0

    def fileno(self) -> int:
        return -1

    def wants_write(self) -> bool:
        return False

    def step(self, now: float) -> Outcome | None:
        return self.outcome

    def cancel(self) -> None:
        pass


class SocketCheck:
    """``tcpSocket``: a connection is accepted before the deadline. The base of :class:`HTTPCheck`."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        self.host, self.port, self.deadline = host, port, deadline
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.connected = False
        self.error = self.sock.connect_ex((host, port))
        if self.error in (errno.EINPROGRESS, errno.EAGAIN):
            self.error = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def wants_write(self) -> bool:
        return not self.connected

    def cancel(self) -> None:
        self.sock.close()

    def _connect(self) -> Outcome | None:
        """None once connected or while connecting; the failure otherwise."""
        error = self.error or self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not error:
            try:
                self.sock.getpeername()
                self.connected = True
                return None
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    error = exc.errno or errno.EIO
        if error:
            return self._fail(dial_error(self.host, self.port, f"connect: {_strerror(error)}"))
        return None

    def _fail(self, message: str) -> Outcome:
        self.cancel()
        return Outcome(False, message)

    def step(self, now: float) -> Outcome | None:
        failed = self._connect()
        if failed is not None:
            return failed
        if self.connected:
            self.cancel()
            return Outcome(True)
        if now >= self.deadline:
            return self._fail(dial_error(self.host, self.port, "i/o timeout"))
        return None


class HTTPCheck(SocketCheck):
    """``httpGet``: connect, TLS for HTTPS, send kubelet's request, read the answer."""

    def __init__(self, action: HTTPGetAction, port: int, deadline: float) -> None:
        super().__init__(address(action.host), port, deadline)
        self.url = url(action, port)
        self.request = http_request(action, port)
        self.conn: socket.socket | ssl.SSLSocket = self.sock
        self.tls = action.scheme == "HTTPS"
        self.handshaken = not self.tls
        self.want_write = True
        self.received = b""

    def wants_write(self) -> bool:
        return self.want_write

    def cancel(self) -> None:
        self.conn.close()
        self.sock.close()

    def _fail(self, message: str) -> Outcome:
        self.cancel()
        return Outcome(False, f"Get {go_quote(self.url)}: {message}")

    def step(self, now: float) -> Outcome | None:
        try:
            outcome = self._progress()
        except ssl.SSLWantReadError:
            self.want_write, outcome = False, None
        except ssl.SSLWantWriteError:
            self.want_write, outcome = True, None
        except BlockingIOError:
            outcome = None  # wait for what the operation in progress set in want_write
        except ValueError as exc:
            return self._fail(str(exc))
        except ssl.SSLError as exc:
            return self._fail(f"TLS: {exc.reason or exc}")
        except OSError as exc:
            return self._fail(_strerror(exc.errno) if exc.errno else str(exc))
        if outcome is None and now >= self.deadline:
            return self._fail("context deadline exceeded (Client.Timeout exceeded while awaiting headers)")
        return outcome

    def _progress(self) -> Outcome | None:
        if not self.connected:
            failed = self._connect()
            if failed is not None or not self.connected:
                return failed
            if self.tls:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE  # kubelet's HTTPS probes skip verification too
                self.conn = context.wrap_socket(self.sock, do_handshake_on_connect=False)
        if not self.handshaken:
            assert isinstance(self.conn, ssl.SSLSocket)
            self.want_write = False
            self.conn.do_handshake()
            self.handshaken = True
        while self.request:
            self.want_write = True
            self.request = self.request[self.conn.send(self.request):]
        self.want_write = False
        while True:
            try:
                chunk = self.conn.recv(65536)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                chunk = b""
            self.received += chunk
            response = parse_http_response(self.received, eof=not chunk)
            if response is not None:
                self.cancel()
                return http_outcome(response)


class ProcessCheck:
    """``exec`` (and ``grpc``, through its helper): a child process; exit 0 passes, its output
    (at most :data:`MAX_BODY`) is the message (kubelet's is the output alone; when there is none,
    a failure says its exit code here)."""

    def __init__(self, argv: list[str], deadline: float, timed_out: str, *, env: Mapping[str, str], cwd: str,
                 uid: int | None = None, gid: int | None = None, preexec: Callable[[], None] | None = None) -> None:
        self.deadline, self.timed_out = deadline, timed_out
        self.killed = False
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 - read and closed when the process is over
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: Outcome | None = None
        try:
            self.proc = subprocess.Popen(
                argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.output,
                stderr=subprocess.STDOUT, user=uid, group=gid, extra_groups=[] if uid is not None else None,
                start_new_session=True, preexec_fn=preexec,  # noqa: PLW1509 - the shim has one thread
            )
        except OSError as exc:
            self.output.close()
            self.error = Outcome(False, f"cannot run {go_quote(argv[0])}: {exc.strerror}")

    def fileno(self) -> int:
        return -1

    def wants_write(self) -> bool:
        return False

    def step(self, now: float) -> Outcome | None:
        if self.proc is None:
            return self.error
        code = self.proc.poll()
        if code is None:
            if now >= self.deadline and not self.killed:
                self._kill()
            return None
        self.output.seek(0)
        text = self.output.read(MAX_BODY).decode("utf-8", "replace").strip()
        self.output.close()
        if self.killed:
            return Outcome(False, self.timed_out)
        return Outcome(code == 0, text or ("" if code == 0 else f"exit code {code}"))

    def _kill(self) -> None:
        assert self.proc is not None
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._kill()
            self.proc.wait()  # SIGKILL: at once
        if not self.output.closed:
            self.output.close()


class Checks(Generic[K]):
    """The probe attempts in flight, each under the key of what it probes."""

    def __init__(self) -> None:
        self.running: dict[K, Check] = {}

    def start(self, key: K, check: Check) -> None:
        self.running[key] = check

    def wait(self, timeout: float, clock: Callable[[], float]) -> list[tuple[K, Outcome]]:
        """Wait up to ``timeout`` seconds, less when an attempt's socket is ready or its deadline
        comes, then step every attempt; the finished ones, with their outcomes. ``clock`` gives
        the time the deadlines are in (monotonic seconds)."""
        start = clock()
        until = min([start + timeout, *(c.deadline for c in self.running.values() if c.deadline > start)])
        sockets = [(c.fileno(), c.wants_write(), key) for key, c in self.running.items() if c.fileno() >= 0]
        if sockets:
            with selectors.DefaultSelector() as selector:
                for fd, write, key in sockets:
                    selector.register(fd, selectors.EVENT_WRITE if write else selectors.EVENT_READ, key)
                selector.select(max(0.0, until - start))
        elif until > start:
            time.sleep(until - start)
        done = []
        now = clock()
        for key, check in list(self.running.items()):
            outcome = check.step(now)
            if outcome is not None:
                del self.running[key]
                done.append((key, outcome))
        return done

    def cancel(self, key: K) -> None:
        check = self.running.pop(key, None)
        if check is not None:
            check.cancel()

    def close(self) -> None:
        for key in list(self.running):
            self.cancel(key)


def _strerror(code: int) -> str:
    text = os.strerror(code)
    return text[:1].lower() + text[1:]  # Go's words: "connection refused"
