"""Credentials of the tunnel: connector tokens (signed, short-lived) and caller tokens.

A **connector token** is a JWT signed with Ed25519 (``EdDSA``) by whoever runs the tunnel. It
names the connector (``sub``), the routes it may serve (``routes``) and expires (``exp``). The
edge holds only the public key(s), so it can verify tokens but never mint them. Rotation needs no
restart anywhere: the connector reads its token file again on every dial, and the edge reads its
key file again when the file changes (list old and new keys together during a key rollover).

A **caller token** is a random bearer token an MCP client sends to the edge. The edge's callers
file stores only its SHA-256, one caller per line::

    # name      sha256 of the token                                              routes (optional)
    support-bot 3f0c…e1                                                          tickets,wiki

It is read again when it changes, so callers are added and revoked without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import AuthenticationError, ConfigError

__all__ = [
    "AUDIENCE",
    "Caller",
    "CallerTokens",
    "ConnectorClaims",
    "ConnectorKeys",
    "generate_signing_key",
    "hash_token",
    "mint_token",
    "new_caller_token",
    "valid_route_name",
]

log = logging.getLogger(__name__)

AUDIENCE = "agent-sandbox-tunnel"
"""The ``aud`` claim every connector token carries."""
_ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def valid_route_name(name: str) -> bool:
    """Route names are lower-case letters, digits, ``-`` and ``_`` (1-63, not starting with a sign)."""
    return _ROUTE_NAME.fullmatch(name) is not None


def generate_signing_key() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM: ``(private, public)``; the edge gets only the public one."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def mint_token(
    private_key_pem: bytes,
    *,
    connector: str,
    routes: Sequence[str],
    ttl_seconds: float = 3600,
    now: float | None = None,
) -> str:
    """A connector token for ``connector`` serving ``routes``, valid for ``ttl_seconds``.

    Raises:
        ConfigError: the key is not an Ed25519 private key, a route name is invalid, or the
            lifetime is not positive.
    """
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("the signing key must be an Ed25519 private key")
    bad = [r for r in routes if not valid_route_name(r)]
    if bad or not routes:
        raise ConfigError(f"invalid or missing route names: {bad or 'none given'}")
    if ttl_seconds <= 0:
        raise ConfigError("a token's lifetime must be positive")
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": connector,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + int(ttl_seconds),
        "routes": sorted(set(routes)),
    }
    return jwt.encode(claims, key, algorithm="EdDSA")


@dataclass(frozen=True)
class ConnectorClaims:
    """What a verified connector token says: who, which routes, until when (Unix time)."""

    name: str
    routes: frozenset[str]
    expires: float


class _WatchedFile:
    """A file parsed again whenever its size, inode or modification time changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            stamp = None
        else:
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp and stamp is not None:
            return False
        self._stamp = stamp
        return True


class ConnectorKeys:
    """The edge's verifier of connector tokens: public keys from a PEM file, read on change.

    Args:
        path: a file holding one or more PEM public keys (Ed25519).
        max_ttl_seconds: tokens whose lifetime (``exp - iat``) is longer are refused.
        leeway_seconds: tolerated clock skew.

    A file that cannot be read or holds no valid key makes every token fail (fail closed).
    """

    def __init__(
        self, path: str | Path, *, max_ttl_seconds: float = 86400, leeway_seconds: float = 30
    ) -> None:
        self._file = _WatchedFile(path)
        self.max_ttl_seconds = max_ttl_seconds
        self.leeway_seconds = leeway_seconds
        self._keys: list[Ed25519PublicKey] = []
        self._problem = ""
        self._reload()

    def _reload(self) -> None:
        if not self._file.changed():
            return
        try:
            text = self._file.path.read_bytes()
            keys = _public_keys(text)
        except (OSError, ValueError) as exc:
            self._keys, self._problem = [], f"connector key file unusable: {exc}"
            log.error("%s", self._problem)
            return
        self._keys, self._problem = keys, ""

    def verify(self, token: str) -> ConnectorClaims:
        """The claims of a valid token.

        Raises:
            AuthenticationError: the token is malformed, signed by no known key, expired, not
                yet valid, for another audience, too long-lived, or names invalid routes.
        """
        self._reload()
        if not self._keys:
            raise AuthenticationError(self._problem or "no connector key configured")
        claims: dict[str, Any] | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["EdDSA"],
                    audience=AUDIENCE,
                    leeway=self.leeway_seconds,
                    options={"require": ["exp", "iat", "sub", "aud"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError as exc:
                raise AuthenticationError("connector token expired") from exc
            except jwt.PyJWTError as exc:
                raise AuthenticationError(f"invalid connector token: {exc}") from exc
        if claims is None:
            raise AuthenticationError("connector token not signed by a known key")
        issued, expires = float(claims["iat"]), float(claims["exp"])
        if expires - issued > self.max_ttl_seconds:
            raise AuthenticationError(
                f"connector token lives {expires - issued:.0f}s, longer than the edge allows "
                f"({self.max_ttl_seconds:.0f}s)"
            )
        routes = claims.get("routes")
        if (
            not isinstance(routes, list)
            or not routes
            or not all(isinstance(r, str) and valid_route_name(r) for r in routes)
        ):
            raise AuthenticationError("connector token names no valid routes")
        name = claims["sub"]
        if not isinstance(name, str) or not name:
            raise AuthenticationError("connector token names no connector")
        return ConnectorClaims(name=name, routes=frozenset(routes), expires=expires)


def _public_keys(text: bytes) -> list[Ed25519PublicKey]:
    blocks = re.findall(
        rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", text, flags=re.DOTALL
    )
    if not blocks:
        raise ValueError("no PEM public key found")
    keys = []
    for block in blocks:
        key = serialization.load_pem_public_key(block)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("connector keys must be Ed25519 public keys")
        keys.append(key)
    return keys


# -- callers ----------------------------------------------------------------------------------


def new_caller_token() -> str:
    """A fresh random caller token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest the callers file stores for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its name and the routes it may use (``None``: all)."""

    name: str
    routes: frozenset[str] | None = None

    def may_use(self, route: str) -> bool:
        """Whether this caller may reach ``route``."""
        return self.routes is None or route in self.routes


class CallerTokens:
    """The edge's caller authentication: a callers file (see the module doc), read on change.

    A file that cannot be read or parsed authenticates nobody (fail closed) and logs why.
    """

    def __init__(self, path: str | Path) -> None:
        self._file = _WatchedFile(path)
        self._callers: dict[str, Caller] = {}
        self._reload()

    def _reload(self) -> None:
        if not self._file.changed():
            return
        try:
            self._callers = _parse_callers(self._file.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self._callers = {}
            log.error("callers file %s unusable: %s", self._file.path, exc)

    def authenticate(self, token: str) -> Caller | None:
        """The caller holding ``token``, or ``None``."""
        self._reload()
        digest = hash_token(token)
        for known, caller in self._callers.items():
            if hmac.compare_digest(known, digest):
                return caller
        return None


def _parse_callers(text: str) -> dict[str, Caller]:
    callers: dict[str, Caller] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) not in (2, 3) or not re.fullmatch(r"[0-9a-f]{64}", fields[1]):
            raise ValueError(f"line {number}: expected NAME SHA256 [ROUTE,ROUTE...]")
        routes = None
        if len(fields) == 3:
            routes = frozenset(r for r in fields[2].split(",") if r)
            if not all(valid_route_name(r) for r in routes):
                raise ValueError(f"line {number}: invalid route name")
        callers[fields[1]] = Caller(name=fields[0], routes=routes)
    return callers
