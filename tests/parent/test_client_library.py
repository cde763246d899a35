"""
The JavaScript client served by every node at C{/odinws.js} on the public
port, whether or not the demo page is enabled (docs/protocol.md,
"JavaScript client").
"""

from __future__ import annotations

import os

from odin_ws.parent import staticfiles
from tests.helpers.cases import DispatcherTestCase, get
from tests.helpers.node import ROOT

LIBRARY = os.path.join(ROOT, "odin_ws", "static", "odinws.js")


class ClientLibraryTests(DispatcherTestCase):
    def fetch(self, path: str = "/odinws.js", method: str = "GET", dispatcher=None):
        return self.response(self.request(get(path, method), dispatcher)[1])

    def test_served_with_demo_off(self):
        """
        With demo mode off and no static directory, GET /odinws.js answers the
        library, byte for byte, as JavaScript that pages on other origins may
        import (module scripts are fetched with CORS).
        """
        self.assertFalse(self.config["demo.enabled"])
        r = self.fetch()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "text/javascript; charset=utf-8")
        self.assertEqual(r.headers["access-control-allow-origin"], "*")
        with open(LIBRARY, "rb") as f:
            self.assertEqual(r.body, f.read())
        self.assertIn(b"export class OdinWS", r.body)
        # The demo's other files stay off.
        self.assertEqual(self.fetch("/app.js").status, 404)

    def test_head(self):
        """HEAD answers the same headers without the body."""
        r = self.fetch(method="HEAD")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(int(r.headers["content-length"]), os.path.getsize(LIBRARY))

    def test_not_on_admin_port(self):
        """The admin listener serves only /health and /metrics."""
        self.assertEqual(self.fetch(dispatcher=self.make(admin=True)).status, 404)

    def test_one_source(self):
        """
        The package's file is the one the dispatcher reads (it ships in the
        wheel and the Debian package), and clients/js/odinws.js (the npm
        package's) is that same file.
        """
        self.assertEqual(os.path.realpath(staticfiles.CLIENT_LIBRARY), os.path.realpath(LIBRARY))
        self.assertEqual(os.path.realpath(os.path.join(ROOT, "clients", "js", "odinws.js")),
                         os.path.realpath(LIBRARY))
