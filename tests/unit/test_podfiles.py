"""weir.runtime.podfiles: a pod's directory (token, trust bundle, scratch) under a temporary node root."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from weir.api.pod import Pod, parse_pod
from weir.pki import tokens
from weir.runtime import podfiles, shim
from weir.runtime.node import NodeConfig

UID = "0f6c1a52-pod-uid"
ROOT_PEM = b"-----BEGIN CERTIFICATE-----\nMIIB...test root...\n-----END CERTIFICATE-----\n"


def a_pod() -> Pod:
    return parse_pod({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "cart-1", "namespace": "shop", "uid": UID},
                      "spec": {"serviceAccountName": "cart", "containers": [{"name": "app", "command": ["true"]}]}})


@pytest.fixture
def node(tmp_path: Path) -> NodeConfig:
    key_path = tmp_path / "token.key"
    tokens.save_key(key_path, tokens.new_key())
    root_cert = tmp_path / "root-cert.pem"
    root_cert.write_bytes(ROOT_PEM)
    return NodeConfig(root=str(tmp_path / "node"), token_key=str(key_path), ca_root_cert=str(root_cert))


def token_path(node: NodeConfig) -> Path:
    return Path(node.pod_dir(UID)) / podfiles.TOKEN


def claims(node: NodeConfig, now: float) -> tokens.Claims:
    return tokens.verify(tokens.load_key(node.token_key), token_path(node).read_text(), now=now)


def test_create_makes_the_directory_scratch_token_and_trust_bundle(node: NodeConfig) -> None:
    before = time.time()
    directory = podfiles.create(node, a_pod(), UID)
    assert directory == node.pod_dir(UID)
    assert directory.startswith(node.root)
    assert os.path.isdir(directory)
    scratch = os.stat(os.path.join(directory, podfiles.SCRATCH))
    assert stat.S_ISDIR(scratch.st_mode)
    assert stat.S_IMODE(scratch.st_mode) == 0o1777
    got = claims(node, now=time.time())
    assert (got.namespace, got.service_account, got.pod_name, got.pod_uid) == ("shop", "cart", "cart-1", UID)
    assert tokens.DEFAULT_AUDIENCE in got.audiences
    assert int(before) <= got.issued_at.timestamp() <= time.time()
    assert (got.expires_at - got.issued_at).total_seconds() == podfiles.TOKEN_TTL
    assert stat.S_IMODE(token_path(node).stat().st_mode) == 0o644  # the sidecar (uid 1337) reads it
    root = Path(directory) / podfiles.ROOT_CERT
    assert root.read_bytes() == ROOT_PEM
    assert stat.S_IMODE(root.stat().st_mode) == 0o644
    assert sorted(os.listdir(directory)) == sorted([podfiles.TOKEN, podfiles.ROOT_CERT, podfiles.SCRATCH])


def test_the_token_is_not_valid_for_another_key_or_after_its_lifetime(node: NodeConfig) -> None:
    podfiles.create(node, a_pod(), UID)
    token = token_path(node).read_text()
    with pytest.raises(tokens.TokenError) as bad:
        tokens.verify(tokens.new_key(), token, now=time.time())
    assert bad.value.reason == "bad-signature"
    with pytest.raises(tokens.TokenError) as late:
        tokens.verify(tokens.load_key(node.token_key), token, now=time.time() + podfiles.TOKEN_TTL + 60)
    assert late.value.reason == "expired"


def test_create_again_keeps_the_directory(node: NodeConfig) -> None:
    directory = podfiles.create(node, a_pod(), UID)
    (Path(directory) / podfiles.SCRATCH / "bootstrap.json").write_text("{}")
    assert podfiles.create(node, a_pod(), UID) == directory
    assert (Path(directory) / podfiles.SCRATCH / "bootstrap.json").read_text() == "{}"
    claims(node, now=time.time())


def test_no_token_key_means_no_token_and_no_bundle_means_no_root_cert(tmp_path: Path) -> None:
    bare = NodeConfig(root=str(tmp_path))
    directory = podfiles.create(bare, a_pod(), UID)
    assert os.listdir(directory) == [podfiles.SCRATCH]
    assert podfiles.refresh_token(bare, a_pod(), UID, now=time.time() + podfiles.TOKEN_TTL) is False
    assert os.listdir(directory) == [podfiles.SCRATCH]


def test_refresh_rewrites_only_after_80_percent_of_the_lifetime(node: NodeConfig) -> None:
    podfiles.create(node, a_pod(), UID)
    issued = token_path(node).stat().st_mtime
    first = token_path(node).read_text()
    ttl = podfiles.TOKEN_TTL
    assert podfiles.refresh_token(node, a_pod(), UID, now=issued + 0.5 * ttl) is False
    assert podfiles.refresh_token(node, a_pod(), UID, now=issued + 0.79 * ttl) is False
    assert token_path(node).read_text() == first
    later = issued + 0.81 * ttl
    assert podfiles.refresh_token(node, a_pod(), UID, now=later) is True
    assert token_path(node).read_text() != first
    got = claims(node, now=later + 0.9 * ttl)  # the old token would have expired by then
    assert int(got.issued_at.timestamp()) == int(later)
    assert got.pod_uid == UID
    # the new token ages from its own issue time: not rewritten again straight away
    assert podfiles.refresh_token(node, a_pod(), UID, now=later + 60) is False
    assert podfiles.refresh_token(node, a_pod(), UID, now=later + 0.81 * ttl) is True


def test_refresh_of_a_pod_without_a_directory_does_nothing(node: NodeConfig) -> None:
    assert podfiles.refresh_token(node, a_pod(), "never-created", now=time.time() + podfiles.TOKEN_TTL) is False
    assert not os.path.exists(node.pod_dir("never-created"))


def test_remove_takes_the_directory_and_is_idempotent(node: NodeConfig) -> None:
    directory = podfiles.create(node, a_pod(), UID)
    other = podfiles.create(node, a_pod(), "other-uid")
    podfiles.remove(node, UID)
    assert not os.path.exists(directory)
    assert os.path.isdir(other)
    podfiles.remove(node, UID)
    assert not os.path.exists(directory)


class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []

    def event(self, uid: str, kind: str, reason: str, message: str) -> None:
        self.seen.append((uid, kind, reason, message))


def test_the_shim_rewrites_an_old_token_once_a_minute_at_most(node: NodeConfig,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pod = a_pod()
    podfiles.create(node, pod, UID)
    old = time.time() - podfiles.TOKEN_TTL * 0.9  # past 80% of its life
    os.utime(token_path(node), (old, old))
    clock = [1000.0]
    monkeypatch.setattr(shim.time, "monotonic", lambda: clock[0])
    events = _Events()
    fake = SimpleNamespace(node=node, pod=pod, uid=UID, store=events, _token_checked=clock[0])
    shim.Shim.refresh_token(fake)  # type: ignore[arg-type]
    assert events.seen == []  # not a minute yet
    clock[0] += shim.TOKEN_CHECK_INTERVAL
    shim.Shim.refresh_token(fake)  # type: ignore[arg-type]
    assert [e[2] for e in events.seen] == ["TokenRefreshed"]
    assert token_path(node).stat().st_mtime > old + 60
    clock[0] += shim.TOKEN_CHECK_INTERVAL
    shim.Shim.refresh_token(fake)  # type: ignore[arg-type]
    assert len(events.seen) == 1  # fresh now: left alone
    fake.node = NodeConfig(root=node.root, token_key=str(Path(node.root) / "missing.key"))
    os.utime(token_path(node), (old, old))
    clock[0] += shim.TOKEN_CHECK_INTERVAL
    shim.Shim.refresh_token(fake)  # type: ignore[arg-type]
    assert events.seen[-1][2] == "TokenRefreshFailed"
