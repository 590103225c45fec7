"""One workload's secrets (pilot-agent's ``SecretManagerClient``): key, certificate chain, roots.

:class:`WorkloadSecrets` holds the current :class:`WorkloadSecret` for one SPIFFE identity and
replaces it when it is missing or due (:func:`weir.agent.certs.rotation_time`, judged by an
injected clock): a fresh EC P-256 key and CSR, signed through an injected ``sign`` callable,
and the answer checked with :func:`weir.agent.certs.verify_chain` (plus the key/certificate
match) before anyone sees it. Listeners hear about every new secret; the SDS driver
(``weir.agent.sds``) pushes it to Envoy from there and sleeps until :meth:`next_rotation`.

No sockets, no event loop, no timers: the only I/O is whatever ``sign`` does, and signing
happens on the caller's thread (a lock keeps concurrent callers from signing twice). This
module must not know about the control plane: ``sign`` returns anything shaped like
``weir.control.ca.SignedCert`` (:class:`Issued`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from weir.agent.certs import DEFAULT_GRACE_PERIOD_RATIO, ChainError, new_key_and_csr, rotation_time, verify_chain
from weir.api.spiffe import SpiffeId

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""Returns the current time as an aware datetime (UTC)."""


class Issued(Protocol):
    """What the CA answers: the workload certificate, the issuer path (may end with the root)
    and the trust bundle, all PEM. ``weir.control.ca.SignedCert`` has this shape."""

    @property
    def cert_pem(self) -> bytes: ...

    @property
    def chain_pem(self) -> bytes: ...

    @property
    def root_pem(self) -> bytes: ...


Signer = Callable[[bytes], Issued]
"""Takes a PEM CSR, returns the CA's answer; raises when the CA refuses or cannot be reached."""
Listener = Callable[["WorkloadSecret"], None]


class IssueError(ValueError):
    """The CA's answer cannot be used (bad chain, wrong identity, key mismatch); the old secret stays."""


@dataclass(frozen=True)
class WorkloadSecret:
    """One issued identity, as Envoy gets it: ``default`` (chain + key) and ``ROOTCA`` (roots)."""

    identity: SpiffeId
    cert_chain_pem: bytes
    """The workload certificate first, then the CA's chain."""
    key_pem: bytes = field(repr=False)
    roots_pem: bytes
    serial: int
    not_before: datetime
    not_after: datetime
    rotate_at: datetime
    generation: int
    """1 for the first secret this manager issued, +1 per replacement."""


class WorkloadSecrets:
    """The current secret of ``identity``, renewed through ``sign`` once ``rotate_fraction`` of
    its lifetime remains (0.5: at half-life, Istio's default), so that the replacement reaches
    Envoy long before the old certificate expires."""

    def __init__(self, identity: SpiffeId, sign: Signer, clock: Clock,
                 rotate_fraction: float = DEFAULT_GRACE_PERIOD_RATIO, jitter: float = 0.0) -> None:
        if not 0.0 < rotate_fraction <= 1.0:
            raise ValueError(f"rotate_fraction must be within (0, 1], not {rotate_fraction}")
        if not -1.0 < jitter < 1.0:
            raise ValueError(f"jitter must be within (-1, 1), not {jitter}")
        self.identity = identity
        self.rotate_fraction = rotate_fraction
        self.jitter = jitter
        self._sign = sign
        self._clock = clock
        self._lock = threading.RLock()
        self._current: WorkloadSecret | None = None
        self._listeners: list[Listener] = []

    # -- reading -------------------------------------------------------------------------------

    @property
    def current(self) -> WorkloadSecret | None:
        """The secret in use, without signing anything (``None`` before the first :meth:`ensure`)."""
        with self._lock:
            return self._current

    def default(self) -> tuple[bytes, bytes]:
        """``(cert_chain_pem, key_pem)`` for SDS ``default``, renewing first when missing or due."""
        secret = self.ensure()
        return secret.cert_chain_pem, secret.key_pem

    def root(self) -> bytes:
        """The trust bundle for SDS ``ROOTCA``, renewing first when missing or due."""
        return self.ensure().roots_pem

    def next_rotation(self) -> datetime | None:
        """When the current secret becomes due (``None``: there is none yet; due now)."""
        with self._lock:
            return None if self._current is None else self._current.rotate_at

    def seconds_to_rotation(self) -> float:
        """Seconds from the clock's now until :meth:`next_rotation` (0.0 when due or missing)."""
        with self._lock:
            if self._current is None:
                return 0.0
            return max(0.0, (self._current.rotate_at - self._clock()).total_seconds())

    def due(self) -> bool:
        """Whether :meth:`ensure` would sign now."""
        with self._lock:
            return self._current is None or self._clock() >= self._current.rotate_at

    # -- renewing ------------------------------------------------------------------------------

    def ensure(self) -> WorkloadSecret:
        """The current secret, first replaced (one signing) when missing or due.

        Errors from ``sign`` propagate and :class:`IssueError` reports an unusable answer; in
        both cases the previous secret, if any, stays current and nobody is notified.
        """
        with self._lock:
            if self._current is not None and self._clock() < self._current.rotate_at:
                return self._current
            secret = self._issue(generation=1 if self._current is None else self._current.generation + 1)
            self._current = secret
            if self._clock() >= secret.rotate_at:
                log.warning("the new certificate of %s is due for rotation already (%s): its lifetime is too short "
                            "or the CA's clock is behind", self.identity, secret.rotate_at.isoformat())
            for listener in list(self._listeners):
                listener(secret)
            return secret

    def tick(self) -> bool:
        """:meth:`ensure`, telling whether it replaced the secret (what a timer calls)."""
        with self._lock:
            before = self._current
            return self.ensure() is not before

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(secret)`` after each replacement (on the thread that renewed, with the
        manager's lock held: hand the work off, do not block). Returns the function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return remove

    def _issue(self, generation: int) -> WorkloadSecret:
        key_pem, csr_pem = new_key_and_csr(self.identity)
        answer = self._sign(csr_pem)
        now = self._clock()
        try:
            proved = verify_chain(answer.cert_pem, answer.chain_pem, answer.root_pem, now)
        except ChainError as e:
            raise IssueError(f"the CA's certificate for {self.identity} failed verification: {e}") from e
        if proved != self.identity:
            raise IssueError(f"the CA issued a certificate for {proved}, not for {self.identity}")
        leaf = x509.load_pem_x509_certificates(answer.cert_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
        der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
            raise IssueError(f"the CA's certificate for {self.identity} does not carry the key of our CSR")
        rotate_at = rotation_time(leaf, fraction=self.rotate_fraction, jitter=self.jitter)
        return WorkloadSecret(identity=self.identity, cert_chain_pem=_join(answer.cert_pem, answer.chain_pem),
                              key_pem=key_pem, roots_pem=answer.root_pem, serial=leaf.serial_number,
                              not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
                              rotate_at=rotate_at, generation=generation)


def _join(*pems: bytes) -> bytes:
    return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in pems if p.strip())
