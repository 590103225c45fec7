"""weir.pki.tokens: workload tokens as JWTs (HS256) shaped like Kubernetes' projected tokens.

Round trip and the exact JWT shape; tampering (payload, signature, key, ``alg: none``); time
(expired, not yet valid, leeway, epoch seconds or datetimes); audience and issuer; malformed
tokens of every kind, each refused with its reason; and the key file (0600, atomic, checked).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from weir.pki import tokens
from weir.pki.tokens import Claims, TokenError, TokenKeyError

from .pki_helpers import T0

KEY = b"k" * 32
HOUR = timedelta(hours=1)


def token(key: bytes = KEY, **overrides: Any) -> str:
    args: dict[str, Any] = {"namespace": "shop", "service_account": "cart", "pod_name": "cart-7d9f",
                            "pod_uid": "0b6c1f2e", "ttl": HOUR, "now": T0}
    return tokens.mint(key, **(args | overrides))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def forge(payload: Any, *, header: Any = None, key: bytes = KEY) -> str:
    """A token signed with ``key`` over any header and payload (what an attacker holding the key,
    or a buggy minter, could produce)."""
    signing_input = f"{b64(json.dumps(header or {'alg': 'HS256', 'typ': 'JWT'}).encode())}." \
                    f"{b64(json.dumps(payload).encode())}"
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def payload_of(tok: str) -> dict[str, Any]:
    result: dict[str, Any] = unb64(tok.split(".")[1])
    return result


def refused(tok: str, reason: str, *, key: bytes = KEY, audience: str = "istio-ca", now: Any = T0) -> str:
    with pytest.raises(TokenError) as info:
        tokens.verify(key, tok, audience=audience, now=now)
    assert info.value.reason == reason, str(info.value)
    return str(info.value)


# -- round trip ------------------------------------------------------------------------------------

def test_round_trip_gives_the_pods_claims() -> None:
    claims = tokens.verify(KEY, token(), audience="istio-ca", now=T0 + timedelta(minutes=30))
    assert claims == Claims(namespace="shop", service_account="cart", pod_name="cart-7d9f", pod_uid="0b6c1f2e",
                            audiences=("istio-ca",), issued_at=T0, not_before=T0, expires_at=T0 + HOUR)
    assert claims.subject == "system:serviceaccount:shop:cart"


def test_the_token_is_a_jwt_with_kubernetes_claims() -> None:
    tok = token()
    header, payload, signature = tok.split(".")
    assert unb64(header) == {"alg": "HS256", "typ": "JWT"}
    assert unb64(payload) == {
        "aud": ["istio-ca"], "iss": "weir", "sub": "system:serviceaccount:shop:cart",
        "iat": int(T0.timestamp()), "nbf": int(T0.timestamp()), "exp": int((T0 + HOUR).timestamp()),
        "kubernetes.io": {"namespace": "shop", "pod": {"name": "cart-7d9f", "uid": "0b6c1f2e"},
                          "serviceaccount": {"name": "cart"}},
    }
    expected = hmac.new(KEY, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert signature == b64(expected)
    assert "=" not in tok


def test_epoch_seconds_and_datetimes_are_the_same_time() -> None:
    assert token(now=T0.timestamp(), ttl=3600) == token()
    claims = tokens.verify(KEY, token(), now=T0.timestamp() + 10)
    assert claims.expires_at == T0 + HOUR


def test_a_token_from_an_external_minter_with_a_string_audience_verifies() -> None:
    payload = payload_of(token()) | {"aud": "istio-ca"}
    assert tokens.verify(KEY, forge(payload), now=T0).audiences == ("istio-ca",)


# -- tampering ---------------------------------------------------------------------------------------

def test_a_changed_payload_fails_the_signature() -> None:
    header, _, signature = token().split(".")
    other = payload_of(token(service_account="admin"))
    message = refused(f"{header}.{b64(json.dumps(other).encode())}.{signature}", "bad-signature")
    assert "signature" in message


def test_a_changed_signature_or_another_key_fails() -> None:
    tok = token()
    flipped = tok[:-2] + ("A" if tok[-2] != "A" else "B") + tok[-1]
    refused(flipped, "bad-signature")
    refused(token(key=b"x" * 32), "bad-signature")
    refused(tok + "AAAA", "bad-signature")


@pytest.mark.parametrize("alg", ["none", "HS512", "RS256", None])
def test_only_hs256_is_accepted(alg: str | None) -> None:
    header = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    tok = forge(payload_of(token()), header=header)
    if alg == "none":
        tok = tok.rsplit(".", 1)[0] + "."
    assert "HS256" in refused(tok, "malformed")


def test_a_critical_header_is_refused() -> None:
    refused(forge(payload_of(token()), header={"alg": "HS256", "crit": ["exp"]}), "malformed")


# -- time, audience, issuer ---------------------------------------------------------------------------

def test_expiry_is_exclusive_and_leeway_extends_it() -> None:
    tokens.verify(KEY, token(), now=T0 + HOUR - timedelta(seconds=1))
    message = refused(token(), "expired", now=T0 + HOUR)
    assert "system:serviceaccount:shop:cart" in message
    assert "expired at 2030-01-01T13:00:00+00:00" in message
    tokens.verify(KEY, token(), now=T0 + HOUR, leeway=timedelta(seconds=30))


def test_not_yet_valid() -> None:
    refused(token(), "not-yet-valid", now=T0 - timedelta(seconds=1))
    tokens.verify(KEY, token(), now=T0 - timedelta(seconds=1), leeway=timedelta(seconds=5))


def test_wrong_audience() -> None:
    message = refused(token(audience="kubernetes"), "wrong-audience")
    assert "'kubernetes'" in message
    assert "'istio-ca'" in message
    tokens.verify(KEY, token(audience="kubernetes"), audience="kubernetes", now=T0)


def test_wrong_issuer() -> None:
    refused(forge(payload_of(token()) | {"iss": "kubernetes/serviceaccount"}), "wrong-issuer")


def test_a_naive_time_is_an_error() -> None:
    with pytest.raises(ValueError, match="naive"):
        tokens.verify(KEY, token(), now=T0.replace(tzinfo=None))


# -- malformed ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("tok", "words"), [
    ("", "empty"),
    ("abc", "3 dot-separated parts"),
    ("a.b", "3 dot-separated parts"),
    ("a.b.c.d", "3 dot-separated parts"),
    ("..", "base64url"),
    ("eyJhbGciOiJIUzI1NiJ9=.e30.AAAA", "base64url"),
    ("eyJh+GciOiJIUzI1NiJ9.e30.AAAA", "base64url"),
    ("eyJhbGciOiJIUzI1NiJ9.e30.A", "base64url"),
    (f"{b64(b'not json')}.e30.AAAA", "header is not JSON"),
    (f"{b64(b'[1]')}.e30.AAAA", "header is not a JSON object"),
    ("é.b.c", "ASCII"),
    ("a" * 20000, "at most"),
])
def test_malformed_tokens(tok: str, words: str) -> None:
    assert words in refused(tok, "malformed")


@pytest.mark.parametrize(("change", "words"), [
    ({"kubernetes.io": None}, "no 'kubernetes.io' claim"),
    ({"kubernetes.io": []}, "'kubernetes.io' must be an object"),
    ({"sub": "system:serviceaccount:shop:admin"}, "does not match its kubernetes.io claims"),
    ({"exp": "tomorrow"}, "'exp' must be an integer"),
    ({"exp": True}, "'exp' must be an integer"),
    ({"iat": None}, "no 'iat' claim"),
    ({"nbf": 1.5}, "'nbf' must be an integer"),
    ({"aud": []}, "'aud'"),
    ({"aud": [1]}, "'aud'"),
    ({"exp": 0}, "no later than it was issued"),
    ({"exp": 10**20}, "out of range"),
])
def test_malformed_claims(change: dict[str, Any], words: str) -> None:
    payload = {k: v for k, v in (payload_of(token()) | change).items() if v is not None}
    assert words in refused(forge(payload), "malformed")


def test_malformed_nested_claims() -> None:
    payload = payload_of(token())
    payload["kubernetes.io"]["pod"] = {"name": "cart-7d9f"}
    assert "kubernetes.io.pod.uid" in refused(forge(payload), "malformed")
    payload["kubernetes.io"]["pod"] = {"name": "cart-7d9f", "uid": ""}
    assert "non-empty string" in refused(forge(payload), "malformed")


def test_a_payload_that_is_not_json_is_malformed_even_when_signed() -> None:
    header = b64(json.dumps({"alg": "HS256"}).encode())
    body = b64(b"\xff\xfe")
    mac = hmac.new(KEY, f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert "payload is not JSON" in refused(f"{header}.{body}.{b64(mac)}", "malformed")


# -- minting -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "words"), [
    ({"namespace": ""}, "namespace"),
    ({"pod_uid": ""}, "pod uid"),
    ({"service_account": "a:b"}, "may not contain ':'"),
    ({"ttl": timedelta(0)}, "at least one second"),
    ({"ttl": 0.5}, "at least one second"),
])
def test_mint_refuses_bad_input(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        token(**change)


def test_mint_refuses_a_short_key() -> None:
    with pytest.raises(TokenKeyError, match="at least 32 bytes"):
        token(key=b"short")


# -- keys --------------------------------------------------------------------------------------------

def test_new_keys_are_random_and_long_enough() -> None:
    a, b = tokens.new_key(), tokens.new_key()
    assert len(a) == tokens.KEY_BYTES
    assert a != b


def test_save_and_load_a_key(tmp_path: Path) -> None:
    path = tmp_path / "token-key"
    key = tokens.new_key()
    tokens.save_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tokens.load_key(path) == key
    newer = tokens.new_key()
    tokens.save_key(path, newer)  # replaced atomically: no temporary file is left behind
    assert tokens.load_key(path) == newer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token-key"]


def test_load_key_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TokenKeyError, match="missing-key: cannot read"):
        tokens.load_key(tmp_path / "missing-key")
    (tmp_path / "garbage").write_text("not base64!\n")
    with pytest.raises(TokenKeyError, match="garbage: is not a base64 token key"):
        tokens.load_key(tmp_path / "garbage")
    (tmp_path / "short").write_text(base64.b64encode(b"short").decode())
    with pytest.raises(TokenKeyError, match="short: a token key needs at least 32 bytes, not 5"):
        tokens.load_key(tmp_path / "short")


def test_save_key_refuses_a_short_key(tmp_path: Path) -> None:
    with pytest.raises(TokenKeyError):
        tokens.save_key(tmp_path / "k", b"short")
    assert not list(tmp_path.iterdir())
