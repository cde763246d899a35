"""
Tests for L{odin_ws.shard.clients.jwks}: the keys of C{auth.jwks_url} fetched over
real HTTPS on loopback from a Twisted server with a certificate of a CA made
up for the test, on the real reactor; and how the verifier uses them
(L{odin_ws.shard.clients.auth.Verifier} with a remote key source).
"""

from __future__ import annotations

import os
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from odin_ws.common import config as configmod
from odin_ws.common import metrics
from odin_ws.common.settings import Settings
from odin_ws.shard.clients import auth, jwks
from tests.helpers.certs import TestCA
from tests.helpers.jwks_server import JwksResource, jwks_document, listen


def fetches(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("odinws_jwks_fetches_total",
                                             {"result": result}) or 0.0


def make_token(key, kid: str | None) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode({"exp": int(time.time() + 300), "channels": ["odin.token.*.*"]}, key,
                      algorithm="ES256", headers=headers)


class Silent(protocol.Protocol):
    """A server that accepts and never answers (a stalled provider)."""


class RemoteJwksTests(unittest.TestCase):
    """A shard's L{jwks.RemoteJwks} and L{auth.Verifier} against a local HTTPS provider."""

    def setUp(self):
        self.ca = TestCA("odinws test JWKS CA")
        _, cert, key = self.ca.issue()
        self.ca_file = self.mktemp()
        with open(self.ca_file, "wb") as f:
            f.write(self.ca.pem)
        self.keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("old", "new")}
        self.published = ["old"]
        self.server = JwksResource(
            lambda: jwks_document({k: self.keys[k] for k in self.published}))
        self.port = listen(reactor, self.server, cert, key)
        self.addCleanup(self.port.stopListening)
        self.url = f"https://localhost:{self.port.getHost().port}/jwks.json"

    def settings(self, **auth_changes) -> Settings:
        changes = {"auth.mode": "jwt", "auth.jwks_url": self.url,
                   "auth.jwks_ca_file": self.ca_file, "auth.jwks_min_refresh": 60.0,
                   "auth.jwks_timeout": 5.0}
        changes.update(auth_changes)
        return Settings.from_config(configmod.load(None, environ={}).replace(
            **{k.replace(".", "__"): v for k, v in changes.items()}))

    def remote(self, settings: Settings | None = None) -> tuple[jwks.RemoteJwks, auth.Verifier]:
        settings = settings or self.settings()
        remote = jwks.RemoteJwks(reactor, settings.auth)
        self.addCleanup(remote.stop)
        return remote, auth.Verifier(settings.auth, remote)

    def refused(self, verifier: auth.Verifier, kid: str) -> str | None:
        """The reason a token of key C{kid} is refused, or None if it is accepted."""
        try:
            verifier.verify(make_token(self.keys[kid], kid))
        except auth.AuthError as e:
            return e.reason
        return None

    @defer.inlineCallbacks
    def test_fetched_at_start(self):
        """
        start() fetches the keys: a token of the published key verifies,
        the fetch is counted as ok and the key count exported.
        """
        remote, verifier = self.remote()
        ok = fetches("ok")
        remote.start()
        yield remote.fetch()
        self.assertEqual([k.kid for k in remote.keys], ["old"])
        self.assertIsNone(self.refused(verifier, "old"))
        self.assertEqual(fetches("ok"), ok + 1)
        self.assertEqual(metrics.REGISTRY.get_sample_value("odinws_jwks_keys"), 1)
        self.assertEqual(self.server.requests, 1)

    @defer.inlineCallbacks
    def test_unknown_kid_fetches_again_bounded(self):
        """
        After the provider rotates, a token with the new kid is refused
        (unknown_key) and makes the shard fetch again; once that fetch is
        in, the token verifies (no restart). Further unknown kids within
        auth.jwks_min_refresh do not fetch again.
        """
        remote, verifier = self.remote()
        remote.start()
        yield remote.fetch()
        self.published = ["old", "new"]
        self.assertEqual(self.refused(verifier, "new"), "unknown_key")
        yield remote.fetch()                         # joins the fetch under way
        self.assertEqual(self.server.requests, 2)
        self.assertIsNone(self.refused(verifier, "new"))
        self.assertIsNone(self.refused(verifier, "old"))
        self.keys["other"] = ec.generate_private_key(ec.SECP256R1())
        for _ in range(5):
            self.assertEqual(self.refused(verifier, "other"), "unknown_key")
        yield remote.fetch()                         # one more, by hand
        self.assertEqual(self.server.requests, 3)

    @defer.inlineCallbacks
    def test_unreachable_keeps_known_keys(self):
        """
        With the provider gone, a fetch fails, is counted and logged, and
        the keys fetched before keep verifying tokens.
        """
        remote, verifier = self.remote(self.settings(**{"auth.jwks_min_refresh": 0.1}))
        remote.start()
        yield remote.fetch()
        yield self.port.stopListening()
        failed = fetches("failed")
        yield remote.fetch()
        self.assertEqual(fetches("failed"), failed + 1)
        self.assertIsNone(self.refused(verifier, "old"))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_timeout(self):
        """A provider that never answers fails the fetch after auth.jwks_timeout (counted)."""
        factory = protocol.Factory.forProtocol(Silent)
        silent = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        url = f"https://localhost:{silent.getHost().port}/jwks.json"
        remote, _ = self.remote(self.settings(**{"auth.jwks_url": url,
                                                 "auth.jwks_timeout": 0.3}))
        failed = fetches("failed")
        yield remote.fetch()
        self.assertEqual(fetches("failed"), failed + 1)
        self.assertEqual(remote.keys, ())

    @defer.inlineCallbacks
    def test_untrusted_certificate(self):
        """
        A server whose certificate the configured CA did not issue gives no
        keys (the fetch fails): keys never come from an unverified server.
        """
        other = self.mktemp()
        with open(other, "wb") as f:
            f.write(TestCA("stranger").pem)
        remote, _ = self.remote(self.settings(**{"auth.jwks_ca_file": other}))
        failed = fetches("failed")
        yield remote.fetch()
        self.assertEqual((fetches("failed"), remote.keys), (failed + 1, ()))

    @defer.inlineCallbacks
    def test_bad_documents_keep_known_keys(self):
        """
        An answer that is not a usable JWKS (not JSON, no signing key,
        larger than MAX_BYTES, an HTTP error) fails the fetch and leaves the
        known keys in place.
        """
        remote, verifier = self.remote()
        yield remote.fetch()
        for body in (b"<html>", b'{"keys": []}', b" " * (jwks.MAX_BYTES + 1)):
            self.server.read = lambda body=body: body
            failed = fetches("failed")
            yield remote.fetch()
            self.assertEqual(fetches("failed"), failed + 1, body[:20])
            self.assertIsNone(self.refused(verifier, "old"))
        self.server.read = lambda: b"not here"
        self.server.code = 404
        failed = fetches("failed")
        yield remote.fetch()
        self.assertEqual(fetches("failed"), failed + 1)
        self.assertEqual([k.kid for k in remote.keys], ["old"])

    @defer.inlineCallbacks
    def test_reconfigure_to_another_url(self):
        """A reload naming another URL drops the old URL's keys and fetches the new one now."""
        remote, _ = self.remote()
        remote.start()
        yield remote.fetch()
        requests = self.server.requests
        settings = self.settings(**{"auth.jwks_url": self.url + "?v=2"})
        remote.reconfigure(settings.auth)
        self.assertEqual(remote.keys, ())
        yield remote.fetch()
        self.assertEqual(self.server.requests, requests + 1)
        self.assertEqual([k.kid for k in remote.keys], ["old"])


class ConfigTests(unittest.SynchronousTestCase):
    """auth.jwks_url as the verifier checks it at start and on reload."""

    def check(self, **changes):
        cfg = configmod.load(None, environ={}).replace(auth__mode="jwt", **changes)
        return auth.Verifier(Settings.from_config(cfg).auth)

    def test_https_only(self):
        """A URL that is not https:// (keys over plain HTTP could be swapped) is a config error."""
        for url in ("http://localhost/jwks.json", "localhost/jwks.json", "https:///x",
                    "https://exämple.org/jwks.json"):
            e = self.assertRaises(configmod.ConfigError, self.check, auth__jwks_url=url)
            self.assertIn("auth.jwks_url", str(e))

    def test_not_with_jwks_file(self):
        """auth.jwks_url and auth.jwks_file exclude each other."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(jwks_document({"k": ec.generate_private_key(ec.SECP256R1())}))
        e = self.assertRaises(configmod.ConfigError, self.check,
                              auth__jwks_url="https://localhost/jwks.json", auth__jwks_file=path)
        self.assertIn("not both", str(e))

    def test_ca_file_checked(self):
        """An unreadable or certificate-less auth.jwks_ca_file is a config error naming it."""
        empty = self.mktemp()
        with open(empty, "w") as f:
            f.write("nothing")
        for path in (empty, os.path.join(self.mktemp(), "missing.pem")):
            e = self.assertRaises(configmod.ConfigError, self.check,
                                  auth__jwks_url="https://localhost/jwks.json",
                                  auth__jwks_ca_file=path)
            self.assertIn("auth.jwks_ca_file", str(e))

    def test_url_alone_is_enough(self):
        """jwt with only auth.jwks_url set is a valid setup (the keys come later, from the URL)."""
        self.assertTrue(self.check(auth__jwks_url="https://localhost/jwks.json").enabled)
