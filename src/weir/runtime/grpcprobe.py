"""A ``grpc`` probe, run as a child process of the pod's shim (gRPC's client library starts
threads, and the shim keeps to one): ``grpc.health.v1.Health/Check`` for one service, on
plaintext, as kubelet's gRPC prober does. Exit 0 when the answer is ``SERVING``; otherwise
exit 1 with kubelet's words on stdout.

  python -m weir.runtime.grpcprobe --address 127.0.0.1:9000 [--service NAME] [--timeout SECONDS]

The two messages of the health protocol are encoded here (one string field; one enum field),
so no generated code is needed.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc

METHOD = "/grpc.health.v1.Health/Check"
STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_request(service: str) -> bytes:
    """``HealthCheckRequest{service}``: field 1, length-delimited."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_status(data: bytes) -> int:
    """``HealthCheckResponse.status`` (field 1, varint); 0 (UNKNOWN) when absent. Other fields are skipped."""
    i, status = 0, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
            if number == 1:
                status = value
        elif wire == 2:
            length, i = _read_varint(data, i)
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire} in a HealthCheckResponse")
    if i > len(data):
        raise ValueError("truncated HealthCheckResponse")
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data):
            raise ValueError("truncated HealthCheckResponse")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def check(address: str, service: str, timeout: float) -> tuple[bool, str]:
    """One health check: (passed, kubelet's message)."""
    start = time.monotonic()
    with grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)]) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False, (f'timeout: failed to connect service "{address}" within {timeout:g}s: '
                           "context deadline exceeded")
        call = channel.unary_unary(METHOD)
        remaining = max(0.001, timeout - (time.monotonic() - start))
        try:
            answer = call(encode_request(service), timeout=remaining)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return False, ("this server does not implement the grpc health protocol (grpc.health.v1.Health): "
                               f"{details}")
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, f"timeout: health rpc did not complete within {timeout:g}s"
            return False, f"error: health rpc probe failed: {details}"
    try:
        status = decode_status(answer)
    except ValueError as exc:
        return False, f"error: health rpc probe failed: {exc}"
    if status != 1:
        return False, f'service unhealthy (responded with "{STATUSES.get(status, str(status))}")'
    return True, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weir-grpc-probe")
    parser.add_argument("--address", required=True, help="HOST:PORT")
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    passed, message = check(args.address, args.service, args.timeout)
    if message:
        print(message)
    sys.stdout.flush()
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
