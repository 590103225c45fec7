"""Workload identity tokens, shaped like Kubernetes' projected service-account tokens.

A pod proves who it is to the CA (``weir.control.casvc``) with a token, as an Istio sidecar
sends its projected ``istio-token`` (audience ``istio-ca``) to istiod. On Kubernetes the
kube-apiserver mints those; in embedded mode there is no apiserver, so weir mints them here with
a key that only the control plane and the runtime hold. The token is a real JWT (RFC 7519),
signed HS256 (HMAC-SHA256, RFC 7518), with the claims a Kubernetes token carries::

    {"iss": "weir", "sub": "system:serviceaccount:<ns>:<sa>", "aud": ["istio-ca"],
     "iat": ..., "nbf": ..., "exp": ...,
     "kubernetes.io": {"namespace": "<ns>", "pod": {"name": ..., "uid": ...},
                       "serviceaccount": {"name": "<sa>"}}}

:func:`verify` is strict: the header must say HS256 (``alg: none`` and every other algorithm
are refused before the signature is looked at), the signature is compared in constant time,
then the claims are parsed once into a frozen :class:`Claims`. Each refusal is one
:class:`TokenError` whose ``reason`` is one of :data:`REASONS` and whose message says what was
wrong (never the token itself). Time comes from the caller, as an aware ``datetime`` or as
seconds since the epoch (``time.time()``); lifetimes as a ``timedelta`` or seconds.

Standard library only; it knows nothing of gRPC, X.509 or the pods' store.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

ISSUER: Final = "weir"
DEFAULT_AUDIENCE: Final = "istio-ca"
"""The audience Istio's sidecar asks for (``istio-token``) and istiod checks."""
KEY_BYTES: Final = 32
"""New keys are this long; shorter keys are refused (RFC 7518: at least the hash's size)."""
MAX_TOKEN_CHARS: Final = 16 * 1024
SA_PREFIX: Final = "system:serviceaccount:"
_HEADER: Final = {"alg": "HS256", "typ": "JWT"}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

Reason = Literal["malformed", "bad-signature", "expired", "not-yet-valid", "wrong-audience", "wrong-issuer"]
REASONS: Final[tuple[Reason, ...]] = ("malformed", "bad-signature", "expired", "not-yet-valid", "wrong-audience",
                                      "wrong-issuer")


class TokenError(ValueError):
    """A token was refused. ``reason`` (one of :data:`REASONS`) is for counting and deciding;
    the message is for people."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason: Reason = reason
        super().__init__(message)


class TokenKeyError(ValueError):
    """A token signing key is unusable (too short, unreadable, not base64); names the file."""


@dataclass(frozen=True)
class Claims:
    """A verified token's claims: who the pod is and for how long the token holds."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    audiences: tuple[str, ...]
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    issuer: str = ISSUER

    @property
    def subject(self) -> str:
        """``system:serviceaccount:<namespace>:<service account>``, as Kubernetes names it."""
        return f"{SA_PREFIX}{self.namespace}:{self.service_account}"


# -- keys --------------------------------------------------------------------------------------

def new_key() -> bytes:
    """A fresh random HS256 key (:data:`KEY_BYTES` bytes)."""
    return secrets.token_bytes(KEY_BYTES)


def save_key(path: str | os.PathLike[str], key: bytes) -> None:
    """Write ``key`` to ``path`` as one line of base64, mode 0600 from the start, replacing any
    old key atomically (temporary file in the same directory, fsync, rename)."""
    _check_key(key, str(path))
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(key) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The key :func:`save_key` wrote to ``path``; :class:`TokenKeyError` naming the file otherwise."""
    try:
        text = Path(path).read_bytes().strip()
    except OSError as e:
        raise TokenKeyError(f"{path}: cannot read the token key: {e.strerror or e}") from None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TokenKeyError(f"{path}: is not a base64 token key") from None
    _check_key(key, str(path))
    return key


def _check_key(key: bytes, where: str) -> None:
    if not isinstance(key, bytes) or len(key) < KEY_BYTES:
        size = len(key) if isinstance(key, bytes) else type(key).__name__
        raise TokenKeyError(f"{where}: a token key needs at least {KEY_BYTES} bytes, not {size}")


# -- minting -----------------------------------------------------------------------------------

def mint(key: bytes, *, namespace: str, service_account: str, pod_name: str, pod_uid: str,
         audience: str = DEFAULT_AUDIENCE, ttl: timedelta | float, now: datetime | float) -> str:
    """A signed token for the pod ``namespace/pod_name`` (uid ``pod_uid``) running as
    ``service_account``, for ``audience``, valid from ``now`` for ``ttl``."""
    _check_key(key, "mint")
    for what, value in (("namespace", namespace), ("service account", service_account),
                        ("pod name", pod_name), ("pod uid", pod_uid), ("audience", audience)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"mint: the {what} must be a non-empty string, not {value!r}")
    if ":" in namespace or ":" in service_account:
        raise ValueError(f"mint: namespace {namespace!r} and service account {service_account!r} may not contain ':'")
    lifetime = int(ttl.total_seconds() if isinstance(ttl, timedelta) else ttl)
    if lifetime <= 0:
        raise ValueError(f"mint: ttl must be at least one second, not {ttl}")
    issued = int(_at(now).timestamp())
    payload = {
        "aud": [audience], "exp": issued + lifetime, "iat": issued, "nbf": issued,
        "iss": ISSUER, "sub": f"{SA_PREFIX}{namespace}:{service_account}",
        "kubernetes.io": {"namespace": namespace, "pod": {"name": pod_name, "uid": pod_uid},
                          "serviceaccount": {"name": service_account}},
    }
    signing_input = f"{_b64(_json(_HEADER))}.{_b64(_json(payload))}"
    return f"{signing_input}.{_b64(_mac(key, signing_input))}"


# -- verifying ---------------------------------------------------------------------------------

def verify(key: bytes, token: str, *, audience: str = DEFAULT_AUDIENCE, now: datetime | float,
           leeway: timedelta = timedelta(0)) -> Claims:
    """The claims of ``token`` if it is well-formed, signed with ``key``, meant for ``audience``
    and valid at ``now`` (give or take ``leeway``); :class:`TokenError` otherwise."""
    if not isinstance(token, str) or not token:
        raise TokenError("malformed", "the token is empty")
    if not token.isascii():
        raise TokenError("malformed", "the token holds characters that are not ASCII")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError("malformed", f"the token is {len(token)} characters long; at most {MAX_TOKEN_CHARS}")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed", f"a JWT has 3 dot-separated parts; this token has {len(parts)}")
    header = _json_part(parts[0], "header")
    if header.get("alg") != "HS256":
        raise TokenError("malformed", f"the token's algorithm is {header.get('alg')!r}; only 'HS256' is accepted")
    if header.get("typ", "JWT") != "JWT" or "crit" in header:
        raise TokenError("malformed", "the token's header is not a plain JWT header (typ JWT, no crit)")
    signature = _unb64(parts[2], "signature")
    if not hmac.compare_digest(signature, _mac(key, f"{parts[0]}.{parts[1]}")):
        raise TokenError("bad-signature", "the token's signature does not verify with the CA's token key")
    claims = _parse_claims(_json_part(parts[1], "payload"))
    if claims.issuer != ISSUER:
        raise TokenError("wrong-issuer", f"the token was issued by {claims.issuer!r}, not {ISSUER!r}")
    if audience not in claims.audiences:
        raise TokenError("wrong-audience", f"the token is for {', '.join(map(repr, claims.audiences))}, "
                                           f"not for {audience!r}")
    at = _at(now)
    if at >= claims.expires_at + leeway:
        raise TokenError("expired", f"the token of {claims.subject} expired at {claims.expires_at.isoformat()}")
    if at + leeway < claims.not_before:
        raise TokenError("not-yet-valid", f"the token of {claims.subject} is not valid before "
                                          f"{claims.not_before.isoformat()}")
    return claims


def _parse_claims(payload: dict[str, Any]) -> Claims:
    k8s = _field(payload, "kubernetes.io", dict, "")
    namespace = _field(k8s, "namespace", str, "kubernetes.io.")
    pod = _field(k8s, "pod", dict, "kubernetes.io.")
    account = _field(_field(k8s, "serviceaccount", dict, "kubernetes.io."), "name", str,
                     "kubernetes.io.serviceaccount.")
    pod_name = _field(pod, "name", str, "kubernetes.io.pod.")
    pod_uid = _field(pod, "uid", str, "kubernetes.io.pod.")
    subject = _field(payload, "sub", str, "")
    if subject != f"{SA_PREFIX}{namespace}:{account}":
        raise TokenError("malformed", f"the token's subject {subject!r} does not match its kubernetes.io claims "
                                      f"(namespace {namespace!r}, service account {account!r})")
    raw_aud = payload.get("aud")
    audiences = (raw_aud,) if isinstance(raw_aud, str) else raw_aud
    if not isinstance(audiences, list | tuple) or not audiences or not all(isinstance(a, str) for a in audiences):
        raise TokenError("malformed", f"the token's 'aud' must be a string or a list of strings, not {raw_aud!r}")
    issued = _field(payload, "iat", int, "")
    expires = _field(payload, "exp", int, "")
    not_before = payload.get("nbf", issued)
    if not isinstance(not_before, int) or isinstance(not_before, bool):
        raise TokenError("malformed", f"the token's 'nbf' must be an integer, not {not_before!r}")
    if expires <= issued:
        raise TokenError("malformed", f"the token expires ({expires}) no later than it was issued ({issued})")
    try:
        return Claims(namespace=namespace, service_account=account, pod_name=pod_name, pod_uid=pod_uid,
                      audiences=tuple(audiences), issued_at=datetime.fromtimestamp(issued, UTC),
                      not_before=datetime.fromtimestamp(not_before, UTC),
                      expires_at=datetime.fromtimestamp(expires, UTC), issuer=_field(payload, "iss", str, ""))
    except (OverflowError, OSError, ValueError):
        raise TokenError("malformed", f"the token's times (iat {issued}, exp {expires}) are out of range") from None


def _field(obj: dict[str, Any], name: str, kind: type[Any], where: str) -> Any:
    value = obj.get(name)
    if value is None:
        raise TokenError("malformed", f"the token has no '{where}{name}' claim")
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
        expected = {str: "a non-empty string", int: "an integer", dict: "an object"}[kind]
        raise TokenError("malformed", f"the token's '{where}{name}' must be {expected}, not {value!r}")
    return value


# -- encoding ----------------------------------------------------------------------------------

def _json_part(part: str, what: str) -> dict[str, Any]:
    raw = _unb64(part, what)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise TokenError("malformed", f"the token's {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError("malformed", f"the token's {what} is not a JSON object")
    return value


def _unb64(part: str, what: str) -> bytes:
    if not part or not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise TokenError("malformed", f"the token's {what} is not unpadded base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _mac(key: bytes, signing_input: str) -> bytes:
    return hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()


def _at(now: datetime | float) -> datetime:
    if not isinstance(now, datetime):
        return datetime.fromtimestamp(now, UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"the time {now.isoformat()} is naive; it must be timezone-aware")
    return now.astimezone(UTC)
