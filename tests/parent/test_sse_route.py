"""The parent's route for Server-Sent Events (listen.sse_path): placed and handed over like an upgrade."""

from __future__ import annotations

from odin_ws.common.commands import Handoff
from tests.helpers import DispatcherTestCase, get
from tests.helpers.cases import Response


class SseRouteTests(DispatcherTestCase):
    def test_stream_request_handed_to_least_loaded_shard(self):
        """GET /sse?channels=... goes, with its head, to the shard with the fewest connections."""
        self.shards[0].connections = 2
        head = get("/sse?channels=odin.token.A.trade", extra="Accept: text/event-stream\r\n")
        proto, transport = self.request(head)
        command, kw, _ = self.shards[1].calls[0]
        self.assertIs(command, Handoff)
        self.assertEqual(kw["head"], head)
        self.assertEqual(transport.value(), b"")

    def test_full_node_503_retry_after(self):
        """With no shard room, a stream request gets 503 and Retry-After, as an upgrade does."""
        for shard in self.shards:
            shard.connections = shard.capacity
        _, transport = self.request(get("/sse?channels=odin.token.A.trade"))
        r = self.response(transport)
        self.assertEqual(r.status, 503)
        self.assertIn("retry-after", r.headers)

    def test_other_methods_405(self):
        """HEAD or POST on the SSE path: 405, nothing handed over."""
        for method in ("HEAD", "POST"):
            _, transport = self.request(get("/sse", method=method))
            self.assertEqual(Response(transport.value()).status, 405)
        self.assertEqual([s.calls for s in self.shards], [[], [], []])

    def test_empty_sse_path_turns_it_off(self):
        """listen.sse_path empty: /sse is a 404 like any unknown path."""
        self.config = self.config.replace(listen__sse_path="")
        dispatcher = self.make()
        _, transport = self.request(get("/sse?channels=odin.token.A.trade"), dispatcher)
        self.assertEqual(Response(transport.value()).status, 404)
