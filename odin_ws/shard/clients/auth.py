"""
JWT connection tokens (C{auth.mode: jwt}) with PyJWT: where a client may put
its token, which keys verify it, and what the C{channels} claim allows.

A token may come in (each allowed by C{auth.token_sources}):
  - the C{Sec-WebSocket-Protocol} header, as the offered subprotocol
    C{bearer.<JWT>} next to C{odinws} (the server selects C{odinws});
  - an C{Authorization: Bearer <JWT>} header;
  - a C{token} query parameter.

The token itself is never logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from odin_ws.common.channels import WILDCARD, InvalidChannel, parse_pattern
from odin_ws.common.config import ConfigError
from odin_ws.common.settings import AuthSettings
from odin_ws.shard.clients.jwks import PUBLIC_ALGORITHMS, JwksKey, check_url, load_jwks, trust_root

SUBPROTOCOL = "odinws"
SUBPROTOCOL_TOKEN_PREFIX = "bearer."

_HMAC = ("HS256", "HS384", "HS512")


class AuthError(Exception):
    """Why a token was refused; C{reason} is a short metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Grant:
    """What a verified token allows: channel patterns and when it expires."""

    patterns: tuple[tuple[str, str], ...]
    expires: float | None
    subject: str | None

    def allows(self, token: str, event_type: str) -> bool:
        """Is the subscription pattern (token, event_type) inside one of the granted patterns?"""
        for gt, ge in self.patterns:
            if (gt == WILDCARD or gt == token) and (ge == WILDCARD or ge == event_type):
                return True
        return False


OPEN = Grant(((WILDCARD, WILDCARD),), None, None)


def token_from_request(headers: Mapping[str, str], query: Mapping[str, Any],
                       sources: Iterable[str]) -> str | None:
    """Find the token in the handshake; C{headers} keys are lower-case."""
    for source in sources:
        if source == "subprotocol":
            for proto in (headers.get("sec-websocket-protocol") or "").split(","):
                proto = proto.strip()
                if proto.startswith(SUBPROTOCOL_TOKEN_PREFIX):
                    return proto[len(SUBPROTOCOL_TOKEN_PREFIX):]
        elif source == "header":
            header = headers.get("authorization") or ""
            if header[:7].lower() == "bearer ":
                return header[7:].strip()
        elif source == "query":
            value = query.get("token")
            if isinstance(value, list):
                value = value[0] if value else None
            if value:
                return str(value)
    return None


def subprotocol(offered: Iterable[str]) -> str | None:
    """
    The subprotocol a handshake selects: C{odinws} whenever it is offered,
    auth on or off (a browser fails the handshake when it offered some and
    none is selected), and never a C{bearer.} one, which holds a token.
    """
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


class KeySource(Protocol):
    """Keys that change under a verifier: a JWKS URL's (L{odin_ws.shard.clients.jwks.RemoteJwks})."""

    @property
    def keys(self) -> tuple[JwksKey, ...]: ...

    def unknown_kid(self) -> None:
        """A token named a key not among L{keys} (a reason to fetch them again)."""


class Verifier:
    """
    Checks tokens against the configured keys and claims; rebuilt on reload.

    @param remote: the keys of C{auth.jwks_url} (kept by the shard across
        reloads); None where tokens are not verified (the parent checks the
        configuration only).
    """

    def __init__(self, settings: AuthSettings, remote: KeySource | None = None):
        self.settings = settings
        self._remote = remote
        self.enabled = settings.mode == "jwt"
        self.claim = settings.channels_claim
        self.max_bytes = settings.max_token_bytes
        self.leeway = settings.leeway
        self.audience = settings.audience or None
        self.issuer = settings.issuer or None
        self.sources = tuple(settings.token_sources)
        self._secret: bytes | None = None
        self._pem: bytes | None = None
        self._jwks: tuple[JwksKey, ...] | None = None
        if self.enabled:
            self._load_keys()

    def _read(self, name: str) -> bytes:
        path = getattr(self.settings, name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(f"auth.{name}: cannot read {path}: {e.strerror}") from None

    def _load_keys(self) -> None:
        c = self.settings
        if c.secret_file:
            self._secret = self._read("secret_file").strip()
        elif c.secret:
            self._secret = c.secret.encode()
        if c.public_key_file:
            self._pem = self._read("public_key_file")
        if c.jwks_file:
            try:
                self._jwks = load_jwks(self._read("jwks_file").decode())
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise ConfigError(f"auth.jwks_file: not a usable JWKS: {e}") from None
        if c.jwks_url:
            if c.jwks_file:
                raise ConfigError("auth.jwks_url: set auth.jwks_url or auth.jwks_file, "
                                  "not both")
            check_url(c.jwks_url)
            trust_root(c.jwks_ca_file)
        if not (self._secret or self._pem or self._jwks or c.jwks_url):
            raise ConfigError("auth.mode: jwt needs auth.secret, auth.secret_file, "
                              "auth.public_key_file, auth.jwks_file or auth.jwks_url")

    def _key_for(self, header: dict) -> tuple[Any, list[str]]:
        alg = header.get("alg")
        if alg in _HMAC and self._secret:
            return self._secret, [alg]
        if alg in PUBLIC_ALGORITHMS:
            remote = self._remote if self.settings.jwks_url else None
            jwks = remote.keys if remote is not None else self._jwks
            if jwks is not None:
                kid = header.get("kid")
                for k in jwks:
                    if kid is None or k.kid == kid:
                        if alg not in k.by_alg:
                            raise AuthError("bad_algorithm", "token algorithm does not fit "
                                            "the key")
                        return k.by_alg[alg], [alg]
                if remote is not None:
                    # A key the provider published since the last fetch: the
                    # next attempt may find it (jwks.py: bounded, never waited for).
                    remote.unknown_kid()
                raise AuthError("unknown_key", "no key with this kid")
            if self._pem:
                return self._pem, [alg]
        raise AuthError("bad_algorithm", "token algorithm not accepted")

    def verify(self, token: str | None) -> Grant:
        """
        Verify a token and return what it grants.

        @raise AuthError: missing, oversized, malformed, badly signed,
            expired, not yet valid, wrong audience/issuer, bad claim.
        """
        if not self.enabled:
            return OPEN
        if not token:
            raise AuthError("missing", "a token is required")
        if len(token) > self.max_bytes:
            raise AuthError("too_large", "token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed", "token is not a JWT") from None
        key, algorithms = self._key_for(header)
        options: jwt.types.Options = {"require": ["exp"]}
        try:
            claims = jwt.decode(token, key, algorithms=algorithms, audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway, options=options)
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("not_yet_valid", "token not valid yet") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise AuthError("wrong_audience", "token audience or issuer not accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "token signature invalid") from None
        except jwt.PyJWTError:
            raise AuthError("invalid", "token invalid") from None
        return Grant(self._patterns(claims.get(self.claim)), float(claims["exp"]),
                     claims.get("sub") if isinstance(claims.get("sub"), str) else None)

    def _patterns(self, value: Any) -> tuple[tuple[str, str], ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise AuthError("bad_claim", f"claim {self.claim!r} must list channel patterns")
        out = []
        for item in value:
            try:
                out.append(parse_pattern(item, 256))
            except InvalidChannel:
                raise AuthError("bad_claim", f"claim {self.claim!r} holds an invalid "
                                "channel pattern") from None
        return tuple(out)


def describe(settings: AuthSettings) -> str:
    """A log-safe summary of the auth setup (never secrets)."""
    if settings.mode != "jwt":
        return "auth: none"
    keys = [f"auth.{k}" for k in ("secret_file", "public_key_file", "jwks_file", "jwks_url")
            if getattr(settings, k)] or (["auth.secret"] if settings.secret else [])
    return "auth: jwt, keys from " + ", ".join(keys) + ", sources " + json.dumps(
        list(settings.token_sources))
