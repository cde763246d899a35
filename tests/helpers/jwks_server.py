"""
A JWKS provider for tests: Twisted serving a key set over HTTPS on
loopback, with a server certificate issued by a L{TestCA} made up for the
test. In-process (L{listen}, for trial tests on the real reactor) or as a
process of its own (L{JwksProvider}, for tests whose body blocks while a
real node fetches from it; C{python -m tests.helpers.jwks_server}). The
keys are read at each request, so a test rotates them by rewriting them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import jwt
from twisted.internet import ssl
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.helpers.certs import TestCA
from tests.helpers.node import ROOT, free_port, wait_for


def jwks_document(keys: dict[str, Any]) -> bytes:
    """The JWKS of the public halves of C{keys} (kid -> EC or RSA private key)."""
    out = []
    for kid, key in keys.items():
        algorithm = (jwt.algorithms.ECAlgorithm if hasattr(key, "curve")
                     else jwt.algorithms.RSAAlgorithm)
        jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
        jwk.update({"kid": kid, "use": "sig"})
        out.append(jwk)
    return json.dumps({"keys": out}).encode()


class JwksResource(Resource):
    """Answers every GET with C{read()}, as C{application/json}, status C{code}; counts them."""

    isLeaf = True

    def __init__(self, read: Callable[[], bytes]):
        super().__init__()
        self.read = read
        self.code = 200
        self.requests = 0

    def render_GET(self, request: Any) -> bytes:
        self.requests += 1
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        return self.read()


def listen(reactor: Any, resource: Resource, cert_pem: bytes, key_pem: bytes,
           port: int = 0) -> Any:
    """Serve C{resource} over HTTPS on 127.0.0.1 (C{port} 0: any free one)."""
    options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    return reactor.listenSSL(port, Site(resource), options, interface="127.0.0.1")


class JwksProvider:
    """
    The provider as a process of its own, serving the file L{publish}
    writes. C{url} names it by C{localhost}, which its certificate (from
    C{ca}) is issued for; C{ca_file} is the CA a client must trust.
    """

    def __init__(self, workdir: str, ca: TestCA):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"https://localhost:{self.port}/.well-known/jwks.json"
        self.ca_file = os.path.join(workdir, "jwks-ca.pem")
        self.jwks_path = os.path.join(workdir, "jwks.json")
        _, cert, key = ca.issue()
        self._cert = os.path.join(workdir, "jwks-server.pem")
        with open(self.ca_file, "wb") as f:
            f.write(ca.pem)
        with open(self._cert, "wb") as f:
            f.write(cert + key)
        self.proc: subprocess.Popen | None = None

    def publish(self, keys: dict[str, Any]) -> None:
        """Serve these keys from now on (the file is replaced in one step)."""
        tmp = self.jwks_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(jwks_document(keys))
        os.replace(tmp, self.jwks_path)

    def start(self) -> JwksProvider:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.jwks_server", "--port", str(self.port),
             "--certificate", self._cert, "--jwks", self.jwks_path],
            cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the JWKS server exited with {self.proc.returncode}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        wait_for(listening, 20, 0.05, "the JWKS server listening")
        return self

    def stop(self) -> None:
        """Stop the server (by its pid); fetches fail from now on."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certificate", required=True, help="PEM: certificate and key")
    parser.add_argument("--jwks", required=True, help="the JWKS file, read at each request")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    def read() -> bytes:
        with open(args.jwks, "rb") as f:
            return f.read()
    with open(args.certificate, "rb") as f:
        pem = f.read()
    listen(reactor, JwksResource(read), pem, b"", args.port)
    reactor.run()


if __name__ == "__main__":
    main()
