"""
JSON Web Key Sets: the signing keys of a JWKS document (L{load_jwks}, for
C{auth.jwks_file} and C{auth.jwks_url}), and those of a JWKS URL as one
shard keeps them (L{RemoteJwks}).

Identity providers publish their keys at such a URL and rotate them: a new
key (new C{kid}) appears, tokens start being signed with it, the old key
goes later. So the shard fetches the document at start, every
C{auth.jwks_refresh} seconds, and again when a token names a C{kid} it does
not know (at most once per C{auth.jwks_min_refresh}, so tokens with made-up
C{kid}s cannot make it hammer the provider). Verification never waits for a
fetch (it runs inside the handshake, on the reactor): a token whose key is
not known yet is refused (C{unknown_key}, 401) and its client gets in when
it retries once the fetch has brought the key.

Fetching is Twisted's HTTP client on the shard's reactor: HTTPS only, the
server's certificate verified (C{auth.jwks_ca_file}, else the system's
trust store) with its host name, bounded in time (C{auth.jwks_timeout}) and
size (L{MAX_BYTES}). A failed fetch (unreachable, timeout, TLS, HTTP status,
not a usable JWKS) is logged, counted in C{odinws_jwks_fetches_total} and
changes nothing: the keys fetched before keep verifying tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import jwt
from twisted.internet import defer, protocol, ssl, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

import odin_ws
from odin_ws.common import metrics
from odin_ws.common.config import ConfigError
from odin_ws.common.settings import AuthSettings

log = Logger()

#: The public-key token algorithms odinws verifies (docs/security.md).
PUBLIC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256")

#: The token algorithms a JWKS key without C{alg} verifies, by its C{kty}
#: (and C{crv}): those of L{PUBLIC_ALGORITHMS} its key type can check, as
#: docs/security.md lists them. (PyJWT alone binds such a key to RS256 or
#: ES256 and refuses RS384, RS512 and PS256 tokens.) A key with C{alg}
#: verifies that algorithm only.
_JWK_ALGORITHMS: dict[tuple[str | None, str | None], tuple[str, ...]] = {
    ("RSA", None): ("RS256", "RS384", "RS512", "PS256"),
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("EC", "P-521"): ("ES512",),
}

#: A JWKS larger than this is refused (a provider's has a few keys, a few KB).
MAX_BYTES = 1 << 20

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class JwksKey:
    """One usable key of a JWKS: its C{kid} and a PyJWK per token algorithm it verifies."""

    kid: str | None
    by_alg: Mapping[str, jwt.PyJWK]


def load_jwks(text: str) -> tuple[JwksKey, ...]:
    """
    The signing keys of a JWKS document, in its order; keys of other kinds
    (HMAC, unknown curves, algorithms outside L{PUBLIC_ALGORITHMS}) are left out.

    @raise ValueError: not a JWKS, or no usable key in it.
    """
    doc = json.loads(text)
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError('expected {"keys": [...]}')
    keys = []
    for data in entries:
        if not isinstance(data, dict):
            continue
        kty = data.get("kty")
        alg = data.get("alg")
        algorithms: tuple[str, ...]
        if alg:
            algorithms = (alg,) if alg in PUBLIC_ALGORITHMS else ()
        else:
            algorithms = _JWK_ALGORITHMS.get((kty, data.get("crv") if kty == "EC" else None), ())
        by_alg = {}
        for name in algorithms:
            try:
                by_alg[name] = jwt.PyJWK(data, algorithm=name)
            except jwt.PyJWTError:
                pass
        if by_alg:
            kid = data.get("kid")
            keys.append(JwksKey(kid if isinstance(kid, str) else None, by_alg))
    if not keys:
        raise ValueError("no usable RSA or EC signing key")
    return tuple(keys)


class FetchError(Exception):
    """Why a fetch of the JWKS URL brought no keys."""


def check_url(url: str) -> None:
    """
    @raise ConfigError: C{url} is not an https:// URL with a host (keys
        fetched over plain HTTP could be swapped on the way).
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or not url.isascii():
        raise ConfigError(f"auth.jwks_url: expected an https:// URL (ASCII, IDNA host "
                          f"names), got {url!r}")


def trust_root(ca_file: str) -> Any:
    """
    The certificates that verify the JWKS server: those of C{ca_file}, or
    the system's trust store when it is empty.

    @raise ConfigError: the file cannot be read or holds no PEM certificate.
    """
    if not ca_file:
        return None     # BrowserLikePolicyForHTTPS: the platform's trust store
    try:
        with open(ca_file, "rb") as f:
            pems = _PEM_CERT.findall(f.read())
        certificates = [ssl.Certificate.loadPEM(pem) for pem in pems]
    except OSError as e:
        raise ConfigError(f"auth.jwks_ca_file: cannot read {ca_file}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - pyOpenSSL's errors name nothing useful
        raise ConfigError(f"auth.jwks_ca_file: not a PEM certificate in {ca_file}: {e}") from None
    if not certificates:
        raise ConfigError(f"auth.jwks_ca_file: no PEM certificate in {ca_file}")
    return ssl.trustRootFromCertificates(certificates)


class _Discard(protocol.Protocol):
    """Takes a response body nobody reads: stops it at once, so the connection closes."""

    def connectionMade(self) -> None:
        cast(IPushProducer, self.transport).stopProducing()


class _Body(protocol.Protocol):
    """Collects a response body of at most L{MAX_BYTES}."""

    def __init__(self, done: defer.Deferred):
        self._done = done
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_BYTES:
            if not self._done.called:
                self._done.errback(FetchError(f"larger than {MAX_BYTES} bytes"))
            cast(IPushProducer, self.transport).stopProducing()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._done.called:
            return
        if reason.check(ResponseDone):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(FetchError(f"answer cut short: {reason.getErrorMessage()}"))


class RemoteJwks:
    """
    The keys of C{auth.jwks_url} for one shard's L{odin_ws.shard.clients.auth.Verifier}:
    idle without a URL. Started and stopped with the shard; a reload hands
    it the new settings (L{reconfigure}).
    """

    def __init__(self, reactor: Any, settings: AuthSettings):
        self._reactor = reactor
        self._settings = settings
        self._keys: tuple[JwksKey, ...] = ()
        self._fetching: defer.Deferred | None = None
        #: When a token's unknown kid last made us fetch.
        self._last_unknown: float | None = None
        self._failing = False
        self._running = False
        self._loop: task.LoopingCall | None = None
        self._agent: Agent | None = None
        self._pool: HTTPConnectionPool | None = None

    @property
    def keys(self) -> tuple[JwksKey, ...]:
        """The keys of the last good fetch (empty before the first)."""
        return self._keys

    @property
    def url(self) -> str:
        return self._settings.jwks_url

    def start(self) -> None:
        """Fetch now and every C{auth.jwks_refresh} seconds (nothing without a URL)."""
        self._running = True
        self._schedule()

    def stop(self) -> defer.Deferred:
        """No more fetches; fires when the one in flight (if any) is abandoned."""
        self._running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._fetching is not None:
            self._fetching.cancel()
        pool, self._pool = self._pool, None
        return pool.closeCachedConnections() if pool is not None else defer.succeed(None)

    def reconfigure(self, settings: AuthSettings) -> None:
        """
        A reload. Another URL or trust store: the keys of the old URL are
        dropped and the new one fetched now; another interval: the timer
        follows it.
        """
        old, self._settings = self._settings, settings
        if (old.jwks_url, old.jwks_ca_file) != (settings.jwks_url, settings.jwks_ca_file):
            self._keys = ()
            metrics.JWKS_KEYS.set(0)
            self._agent = None
            self._last_unknown = None
            if self._fetching is not None:
                self._fetching.cancel()
        else:
            if old.jwks_timeout != settings.jwks_timeout:
                self._agent = None      # its connect timeout is the old one
            if old.jwks_refresh == settings.jwks_refresh:
                return
        if self._running:
            self._schedule()

    def unknown_kid(self) -> None:
        """
        A token named a key not among L{keys}: fetch again, unless a fetch
        is under way or an unknown kid made us fetch less than
        C{auth.jwks_min_refresh} seconds ago (the scheduled fetches do not
        count: a key published just after one is fetched at its first use).
        """
        if not self._running or not self.url or self._fetching is not None:
            return
        now = self._reactor.seconds()
        if (self._last_unknown is not None
                and now - self._last_unknown < self._settings.jwks_min_refresh):
            return
        self._last_unknown = now
        self.fetch()

    def _schedule(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if not self.url:
            return
        self._loop = task.LoopingCall(self.fetch)
        self._loop.clock = self._reactor
        self._loop.start(self._settings.jwks_refresh, now=True)

    def fetch(self) -> defer.Deferred:
        """
        Fetch the URL now (or join the fetch under way). Fires with None
        once it is done, whatever the outcome (a failure is logged and
        counted; the keys stay as they were).
        """
        if self._fetching is not None:
            joined: defer.Deferred[None] = defer.Deferred()

            def relay(result: Any) -> Any:
                joined.callback(None)
                return result
            self._fetching.addBoth(relay)
            return joined
        url = self.url
        try:
            d = self._request(url)
        except ConfigError as e:
            d = defer.fail(FetchError(str(e)))
        d.addTimeout(self._settings.jwks_timeout, self._reactor)
        self._fetching = d
        d.addCallback(lambda body: self._fetched(url, body))
        d.addErrback(lambda f: self._failed(url, f))
        d.addBoth(self._done)
        return d

    def _request(self, url: str) -> defer.Deferred:
        if self._agent is None:
            self._pool = self._pool or HTTPConnectionPool(self._reactor, persistent=False)
            self._agent = Agent(self._reactor,
                                contextFactory=BrowserLikePolicyForHTTPS(
                                    trust_root(self._settings.jwks_ca_file)),
                                connectTimeout=self._settings.jwks_timeout, pool=self._pool)
        headers = Headers({b"Accept": [b"application/json, application/jwk-set+json"],
                           b"User-Agent": [f"odinws/{odin_ws.__version__}".encode()]})
        d = self._agent.request(b"GET", url.encode("ascii"), headers)

        def body(response: Any) -> defer.Deferred:
            if response.code != 200:
                response.deliverBody(_Discard())
                raise FetchError(f"HTTP {response.code}")
            if response.length is not None and response.length > MAX_BYTES:
                response.deliverBody(_Discard())
                raise FetchError(f"larger than {MAX_BYTES} bytes")
            done: defer.Deferred = defer.Deferred()
            response.deliverBody(_Body(done))
            return done
        return d.addCallback(body)

    def _fetched(self, url: str, body: bytes) -> None:
        if url != self.url:
            return      # reconfigured to another URL meanwhile
        try:
            keys = load_jwks(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise FetchError(f"not a usable JWKS: {e}") from None
        before = {k.kid for k in self._keys}
        self._keys = keys
        metrics.JWKS_KEYS.set(len(keys))
        metrics.JWKS_FETCHES.labels(result="ok").inc()
        if self._failing or {k.kid for k in keys} != before:
            log.info("auth.jwks_url: {n} keys ({kids})", n=len(keys),
                     kids=", ".join(str(k.kid) for k in keys))
        self._failing = False

    def _failed(self, url: str, failure: Failure) -> None:
        if failure.check(defer.CancelledError) or url != self.url:
            return      # stopped, or reconfigured to another URL: nobody failed
        metrics.JWKS_FETCHES.labels(result="failed").inc()
        reason = ("no answer within auth.jwks_timeout" if failure.check(defer.TimeoutError)
                  else failure.getErrorMessage() or failure.type.__name__)
        log.warn("auth.jwks_url {url}: fetch failed ({reason}); {n} keys fetched before "
                 "stay in use", url=url, reason=reason, n=len(self._keys))
        self._failing = True

    def _done(self, result: Any) -> None:
        self._fetching = None
        if isinstance(result, Failure):
            # Only a bug in _fetched/_failed gets here: logged, not raised
            # into the timer (which would stop it).
            log.failure("auth.jwks_url: fetch handling", result)
