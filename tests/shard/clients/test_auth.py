"""Tests for L{odin_ws.shard.clients.auth}: token validation, key sources, channel claims."""

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial import unittest

from odin_ws.common import config
from odin_ws.common.settings import AuthSettings, Settings
from odin_ws.shard.clients import auth

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def make_auth(**settings) -> AuthSettings:
    """The typed auth section of jwt mode with the test secret, C{settings} on top."""
    base = {"auth.mode": "jwt", "auth.secret": SECRET}
    base.update(settings)
    return Settings.from_config(config.Config(config.validate(base))).auth


def hs(claims: dict, secret: str = SECRET, **headers) -> str:
    payload = {"exp": time.time() + 300, "channels": ["odin.token.*.trade"]}
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


class VerifyTests(unittest.TestCase):
    def setUp(self):
        self.v = auth.Verifier(make_auth(**{"auth.audience": "odin", "auth.leeway": 0}))

    def assertRefused(self, token, reason):
        e = self.assertRaises(auth.AuthError, self.v.verify, token)
        self.assertEqual(e.reason, reason)
        if token:
            self.assertNotIn(token, e.message)

    def test_valid(self):
        """A valid HS256 token grants its channels claim."""
        grant = self.v.verify(hs({"aud": "odin", "sub": "alice"}))
        self.assertEqual(grant.patterns, (("*", "trade"),))
        self.assertEqual(grant.subject, "alice")

    def test_expired(self):
        """An expired token is refused as expired."""
        self.assertRefused(hs({"aud": "odin", "exp": time.time() - 10}), "expired")

    def test_not_yet_valid(self):
        """A token whose nbf is in the future is refused."""
        self.assertRefused(hs({"aud": "odin", "nbf": time.time() + 100}), "not_yet_valid")

    def test_wrong_signature(self):
        """A token signed with another secret is refused."""
        self.assertRefused(hs({"aud": "odin"}, secret="another-secret-0123456789abcdefgh"),
                           "bad_signature")

    def test_wrong_audience(self):
        """A token for another audience is refused."""
        self.assertRefused(hs({"aud": "someone-else"}), "wrong_audience")

    def test_alg_none(self):
        """An unsigned token (alg none) is refused."""
        header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        body = base64.urlsafe_b64encode(json.dumps(
            {"exp": time.time() + 300, "aud": "odin", "channels": ["odin.token.*.*"]}).encode())
        token = (header.rstrip(b"=") + b"." + body.rstrip(b"=") + b".").decode()
        self.assertRefused(token, "bad_algorithm")

    def test_oversized(self):
        """A token above auth.max_token_bytes is refused before parsing."""
        self.assertRefused("a" * 9000, "too_large")

    def test_garbage(self):
        """Garbage and missing tokens are refused with their own reasons."""
        self.assertRefused("not-a-jwt", "malformed")
        self.assertRefused("", "missing")
        self.assertRefused(None, "missing")

    def test_missing_exp(self):
        """Tokens must expire."""
        token = jwt.encode({"aud": "odin", "channels": ["odin.token.*.*"]}, SECRET,
                           algorithm="HS256")
        self.assertRefused(token, "invalid")

    def test_bad_claim(self):
        """A channels claim that is missing or invalid is refused."""
        self.assertRefused(hs({"aud": "odin", "channels": []}), "bad_claim")
        self.assertRefused(hs({"aud": "odin", "channels": ["nope"]}), "bad_claim")

    def test_disabled(self):
        """With auth.mode none every connection gets everything."""
        v = auth.Verifier(Settings.from_config(config.Config(config.validate({}))).auth)
        self.assertTrue(v.verify(None).allows("X", "trade"))

    def test_no_keys_is_config_error(self):
        """jwt mode without any key is a configuration error naming auth.mode."""
        e = self.assertRaises(config.ConfigError, auth.Verifier,
                              make_auth(**{"auth.secret": ""}))
        self.assertIn("auth.mode", str(e))


class SettingsTests(unittest.TestCase):
    def test_typed_section(self):
        """A Verifier reads the typed auth section: its audience and token sources."""
        typed = auth.Verifier(make_auth(**{"auth.audience": "odin"}))
        self.assertEqual((typed.audience, typed.sources),
                         ("odin", ("subprotocol", "header", "query")))

    def test_unreadable_file_names_the_key(self):
        """A key file that cannot be read is a configuration error naming its key."""
        e = self.assertRaises(config.ConfigError, auth.Verifier,
                              make_auth(**{"auth.secret_file": self.mktemp()}))
        self.assertIn("auth.secret_file: cannot read", str(e))

    def test_describe_names_key_sources_never_secrets(self):
        """describe() names where keys come from and never the secret itself."""
        text = auth.describe(make_auth())
        self.assertIn("auth: jwt, keys from auth.secret", text)
        self.assertNotIn(SECRET, text)
        self.assertEqual(auth.describe(Settings.from_config(
            config.Config(config.validate({}))).auth), "auth: none")


class PublicKeyTests(unittest.TestCase):
    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_rs256_pem(self):
        """RS256 tokens verify against a PEM public key file."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        v = auth.Verifier(make_auth(**{"auth.secret": "",
                                         "auth.public_key_file": self.write(pem)}))
        token = jwt.encode({"exp": time.time() + 60, "channels": ["odin.token.A.*"]}, key,
                           algorithm="RS256")
        self.assertEqual(v.verify(token).patterns, (("A", "*"),))
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode({"exp": time.time() + 60, "channels": ["odin.token.*.*"]}, other,
                            algorithm="RS256")
        self.assertEqual(self.assertRaises(auth.AuthError, v.verify, forged).reason,
                         "bad_signature")

    def test_hs_token_against_public_key(self):
        """An HS256 token 'signed' with the public key text is refused (key confusion)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        v = auth.Verifier(make_auth(**{"auth.secret": "",
                                         "auth.public_key_file": self.write(pem)}))
        # PyJWT refuses to HMAC-sign with a PEM key, so build the confusion token by hand.
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(
            {"exp": time.time() + 60, "channels": ["odin.token.*.*"]}).encode()).rstrip(b"=")
        sig = base64.urlsafe_b64encode(hmac.new(pem, header + b"." + body, hashlib.sha256)
                                       .digest()).rstrip(b"=")
        token = (header + b"." + body + b"." + sig).decode()
        self.assertEqual(self.assertRaises(auth.AuthError, v.verify, token).reason,
                         "bad_algorithm")

    def test_es256_jwks(self):
        """ES256 tokens verify against the JWKS key named by kid."""
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": "k1", "alg": "ES256", "use": "sig"})
        path = self.write(json.dumps({"keys": [jwk]}).encode())
        v = auth.Verifier(make_auth(**{"auth.secret": "", "auth.jwks_file": path}))
        token = jwt.encode({"exp": time.time() + 60, "channels": ["odin.token.*.*"]}, key,
                           algorithm="ES256", headers={"kid": "k1"})
        self.assertTrue(v.verify(token).allows("Z", "price"))
        unknown = jwt.encode({"exp": time.time() + 60, "channels": ["odin.token.*.*"]}, key,
                             algorithm="ES256", headers={"kid": "k2"})
        self.assertEqual(self.assertRaises(auth.AuthError, v.verify, unknown).reason,
                         "unknown_key")

    def test_jwks_keys_without_alg_verify_what_the_docs_list(self):
        """
        A JWKS key without "alg" verifies, by its kty and crv, every algorithm
        docs/security.md lists for it: an RSA key RS256, RS384, RS512 and
        PS256 tokens (before, PyJWT bound it to RS256 alone and refused the
        rest), an EC P-384 key ES384; a token whose algorithm the key cannot
        check, or other than the key's own "alg", is refused as bad_algorithm.
        """
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP384R1())
        pinned = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        keys = [json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())),
                json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())),
                json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(pinned.public_key()))]
        for jwk, kid in zip(keys, ("rsa", "ec", "pinned")):
            jwk["kid"] = kid
        keys[2]["alg"] = "RS256"
        self.assertNotIn("alg", keys[0])
        path = self.write(json.dumps({"keys": keys}).encode())
        v = auth.Verifier(make_auth(**{"auth.secret": "", "auth.jwks_file": path}))

        def token(key, alg, kid):
            return jwt.encode({"exp": time.time() + 60, "channels": ["odin.token.*.*"]}, key,
                              algorithm=alg, headers={"kid": kid})

        for alg in ("RS256", "RS384", "RS512", "PS256"):
            self.assertTrue(v.verify(token(rsa_key, alg, "rsa")).allows("A", "trade"), alg)
        self.assertTrue(v.verify(token(ec_key, "ES384", "ec")).allows("A", "trade"))
        self.assertTrue(v.verify(token(pinned, "RS256", "pinned")).allows("A", "trade"))
        for key, alg, kid in ((ec_key, "ES384", "rsa"), (rsa_key, "RS256", "ec"),
                              (pinned, "RS384", "pinned")):
            self.assertEqual(self.assertRaises(auth.AuthError, v.verify,
                                               token(key, alg, kid)).reason,
                             "bad_algorithm", (alg, kid))
        forged = token(pinned, "RS384", "rsa")
        self.assertEqual(self.assertRaises(auth.AuthError, v.verify, forged).reason,
                         "bad_signature")

    def test_jwks_without_a_signing_key_is_a_config_error(self):
        """A JWKS holding no usable RSA or EC key fails start-up naming auth.jwks_file."""
        path = self.write(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).encode())
        e = self.assertRaises(config.ConfigError, auth.Verifier,
                              make_auth(**{"auth.secret": "", "auth.jwks_file": path}))
        self.assertIn("auth.jwks_file", str(e))


class GrantTests(unittest.TestCase):
    def test_wildcards(self):
        """Granted wildcards cover any segment; exact grants cover only themselves."""
        g = auth.Grant((("*", "trade"), ("ABC", "*")), None, None)
        self.assertTrue(g.allows("XYZ", "trade"))
        self.assertTrue(g.allows("ABC", "price"))
        self.assertTrue(g.allows("ABC", "*"))
        self.assertFalse(g.allows("XYZ", "price"))
        self.assertFalse(g.allows("*", "price"))
        self.assertFalse(g.allows("*", "*"))
        self.assertTrue(g.allows("*", "trade"))


class SourceTests(unittest.TestCase):
    def test_sources(self):
        """Tokens are found in the subprotocol, Authorization header or query, as allowed."""
        headers = {"sec-websocket-protocol": "odinws, bearer.T1", "authorization": "Bearer T2"}
        query = {"token": ["T3"]}
        self.assertEqual(auth.token_from_request(headers, query, ["subprotocol"]), "T1")
        self.assertEqual(auth.token_from_request(headers, query, ["header"]), "T2")
        self.assertEqual(auth.token_from_request(headers, query, ["query"]), "T3")
        self.assertIsNone(auth.token_from_request({}, {}, ["subprotocol", "header", "query"]))
        self.assertIsNone(auth.token_from_request(headers, query, []))
