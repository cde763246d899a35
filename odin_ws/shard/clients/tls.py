"""
TLS for the shards (wss://). The parent hands TLS connections over before
reading a byte; each shard terminates TLS on the adopted socket with the
context built here. Re-read on SIGHUP: new connections get the new
certificate, existing ones keep the one they negotiated.
"""

from __future__ import annotations

from OpenSSL import crypto
from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

from odin_ws.common.config import ConfigError
from odin_ws.common.settings import TlsSettings
from odin_ws.common.twisted_internals import PromptCloseTLS


def _read(settings: TlsSettings, name: str) -> bytes:
    path = getattr(settings, name)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"tls.{name}: cannot read {path}: {e.strerror}") from None


def enabled(settings: TlsSettings) -> bool:
    """Is TLS configured (a certificate named)?"""
    return bool(settings.certificate)


def server_options(settings: TlsSettings) -> ssl.CertificateOptions:
    """
    Certificate chain + key from PEM files; TLS 1.2 at least; the library's
    default ciphers.

    @raise ConfigError: unreadable or mismatched files, named by key.
    """
    chain = _read(settings, "certificate")
    key_pem = _read(settings, "private_key") if settings.private_key else chain
    try:
        certs = [crypto.load_certificate(crypto.FILETYPE_PEM, block)
                 for block in _pem_blocks(chain, b"CERTIFICATE")]
    except crypto.Error:
        raise ConfigError("tls.certificate: not a PEM certificate chain") from None
    if not certs:
        raise ConfigError("tls.certificate: no certificate found")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise ConfigError("tls.private_key: not a PEM private key") from None
    options = ssl.CertificateOptions(
        privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    try:
        options.getContext()
    except Exception as e:  # OpenSSL's own wording says which part is wrong.
        raise ConfigError(f"tls.private_key: does not match tls.certificate ({e})") from None
    return options


def _pem_blocks(data: bytes, kind: bytes) -> list[bytes]:
    begin = b"-----BEGIN " + kind + b"-----"
    end = b"-----END " + kind + b"-----"
    blocks = []
    pos = 0
    while (start := data.find(begin, pos)) != -1:
        stop = data.find(end, start)
        if stop == -1:
            break
        stop += len(end)
        blocks.append(data[start:stop] + b"\n")
        pos = stop
    return blocks


def wrap(options: ssl.CertificateOptions, factory) -> TLSMemoryBIOFactory:
    """
    A server-side TLS factory around C{factory}, whose connections stop
    reading once they close (L{PromptCloseTLS}).
    """
    tls = TLSMemoryBIOFactory(options, False, factory)
    tls.protocol = PromptCloseTLS
    return tls
