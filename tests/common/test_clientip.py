"""Tests for L{odin_ws.common.clientip}: the one client-IP rule of the door and both transports."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from odin_ws.common.clientip import client_ip


class ClientIpTests(SynchronousTestCase):
    def test_untrusted_peer_is_the_client(self):
        """X-Forwarded-For from a peer not in trusted_proxies is ignored: anyone could send it."""
        self.assertEqual(client_ip("10.0.0.9", "1.2.3.4", ("10.0.0.1",)), "10.0.0.9")

    def test_trusted_proxy_names_the_client(self):
        """From a trusted proxy, the last X-Forwarded-For entry (the proxy's own) is the client."""
        self.assertEqual(client_ip("10.0.0.1", "6.6.6.6, 1.2.3.4 ", ("10.0.0.1",)), "1.2.3.4")

    def test_trusted_proxy_without_header(self):
        """A trusted proxy that names nobody (no header, or an empty last entry) is the client."""
        self.assertEqual(client_ip("10.0.0.1", None, ("10.0.0.1",)), "10.0.0.1")
        self.assertEqual(client_ip("10.0.0.1", "1.2.3.4, ", ("10.0.0.1",)), "10.0.0.1")
