"""
The Python client library (C{clients/python}, C{odinws_client}) against the
real broker and real C{twistd odinws} nodes with real shard processes: the
shard holding its connection killed while events flow, snapshots, token
refresh and 4001, positions handed back after a restart of the bot (and
recovered false past the history window), a node restart.

Each test drives the client in an asyncio loop of its own (C{asyncio.run});
what the library does on its own (reconnect, resubscribe, recover, refresh)
is never helped by the test. Blocking steps (producing, killing, starting
nodes) run in a thread, except where the test means to hold the client off.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import jwt

from odinws_client import Client, ConnectionState, Event, Gap, ServerError, StateChange, Subscription
from tests.helpers.node import Node, wait_for
from tests.helpers.topics import TopicNodeCase

SECRET = "python-client-secret-of-32-bytes!"
ALL = "odin.token.*.*"


class Received:
    """What one subscription yielded, read by a task of its own."""

    def __init__(self, sub: Subscription):
        #: Live (and replayed) events' seqs per partition, in arrival order.
        self.seqs: dict[int, list[int]] = {}
        self.snapshots: list[Event] = []
        self.gaps: list[Gap] = []
        self.items: list[Event | Gap] = []
        self._changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._read(sub))

    async def _read(self, sub: Subscription) -> None:
        async for item in sub:
            self.items.append(item)
            if isinstance(item, Gap):
                self.gaps.append(item)
            elif item.snapshot:
                self.snapshots.append(item)
            else:
                partition = int(item.pos.split(":")[1])
                self.seqs.setdefault(partition, []).append(item.data["seq"])
            self._changed.set()

    def count(self) -> int:
        return sum(map(len, self.seqs.values()))

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        """Wait until C{predicate()} holds; fail after C{timeout} (or if the iterator failed)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.task.done():
                self.task.result()          # the iterator's exception, if any
                raise AssertionError(f"the iterator ended waiting for {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}: got {self.seqs}, "
                                     f"gaps {self.gaps}")
            self._changed.clear()
            waiter = asyncio.ensure_future(self._changed.wait())
            await asyncio.wait([waiter, self.task], timeout=min(left, 0.5),
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll C{predicate} on the loop until it holds; fail after C{timeout}."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class PythonClientCase(TopicNodeCase):
    prefix = "py"
    shards = 1

    def setUp(self):
        super().setUp()
        self.states: list[StateChange] = []
        self.errors: list[ServerError] = []

    def drive(self, scenario: Coroutine[Any, Any, None], timeout: float = 240) -> None:
        asyncio.run(asyncio.wait_for(scenario, timeout))

    def client(self, node: Node, **kw: Any) -> Client:
        kw.setdefault("backoff_cap", 2.0)
        return Client(node.url(), on_state=self.states.append, on_error=self.errors.append, **kw)

    def closes(self) -> list[int | None]:
        """The close codes (or HTTP statuses) the client saw, in order."""
        return [s.code or s.status for s in self.states
                if s.state is ConnectionState.DISCONNECTED]

    def pour(self, every: float = 0.02) -> Callable[[], None]:
        """Produce events from a thread until the returned stop() is called (it joins)."""
        stop = threading.Event()

        def run():
            while not stop.wait(every):
                self.produce(1)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def finish():
            stop.set()
            thread.join(30)
        self.addCleanup(finish)
        return finish

    async def reading(self, client: Client) -> tuple[Subscription, Received]:
        """Subscribe to everything; 12 events produced after the ack (every partition) read."""
        sub = client.subscribe(ALL)
        got = Received(sub)
        await sub.wait_subscribed()
        await asyncio.to_thread(self.produce, 12)
        await got.until(lambda: got.count() >= 12, "12 events")
        return sub, got


class ShardKillTests(PythonClientCase):
    shards = 2

    def test_shard_killed_while_events_flow(self):
        """
        The shard holding the client's connection is SIGKILLed while events
        are produced every 20 ms: the client sees 1006, reconnects on its own,
        subscribes again with its positions and yields every event exactly
        once, in order per partition, then live events; no gap.
        """
        # The default placement hold keeps the reconnect on the surviving
        # shard (a fair share each), which has every event the client saw;
        # the restarted one may not have read them back yet (a gap, rightly).
        node = self.node(**{"listen.restart_hold": 5.0})

        async def scenario():
            async with self.client(node) as client:
                _, got = await self.reading(client)
                stop = self.pour()
                await got.until(lambda: got.count() >= 40, "40 events")
                await asyncio.to_thread(node.kill_holder)
                await until(lambda: 1006 in self.closes(), "the 1006")
                at_kill = self.seq
                await got.until(lambda: got.count() >= at_kill + 40, "40 events after the kill")
                await asyncio.to_thread(stop)
                await asyncio.to_thread(self.produce, 6)
                await got.until(lambda: got.count() >= self.seq, "every event")
                self.assertEqual(got.seqs, self.produced)
                self.assertEqual(got.gaps, [])
        self.drive(scenario())
        self.assertEqual(self.closes()[0], 1006)


class SnapshotTests(PythonClientCase):
    def test_snapshot_then_live(self):
        """
        subscribe(snapshot=True) yields the latest event of each matching
        channel first, marked snapshot (a wildcard and an exact pattern, each
        its own), then live events.
        """
        node = self.node()
        self.produce(9)                                 # T0, T1, T2 three times each
        self.wait_consumed(node)

        async def scenario():
            async with self.client(node) as client:
                wild = Received(client.subscribe("odin.token.*.trade", snapshot=True))
                await wild.until(lambda: len(wild.snapshots) == 3, "three snapshot events")
                exact = Received(client.subscribe("odin.token.T1.trade", snapshot=True))
                await exact.until(lambda: len(exact.snapshots) == 1, "the T1 snapshot")
                await asyncio.to_thread(self.produce, 3)    # seq 9, 10, 11: T1 gets 10
                await wild.until(lambda: wild.count() == 3, "three live events")
                await exact.until(lambda: exact.count() == 1, "T1's live event")
                self.assertEqual(sorted((e.channel, e.data["seq"]) for e in wild.snapshots),
                                 [("odin.token.T0.trade", 6), ("odin.token.T1.trade", 7),
                                  ("odin.token.T2.trade", 8)])
                self.assertEqual([(e.data["seq"], e.snapshot) for e in exact.items],
                                 [(7, True), (10, False)])
                self.assertEqual(sorted(s for seqs in wild.seqs.values() for s in seqs),
                                 [9, 10, 11])
                self.assertEqual(len(wild.items), 6)   # nothing of the exact one's snapshot
        self.drive(scenario())


class UndecodableTests(PythonClientCase):
    def test_undecodable_record_is_a_gap_item_in_place(self):
        """
        Good, undecodable, good on one channel: the subscription yields the
        event, a Gap("undecodable") naming the channel and the record's
        position, the event; the client does not try to recover it, and a
        fourth event follows with nothing in between.
        """
        node = self.node()

        async def scenario():
            async with self.client(node) as client:
                sub = client.subscribe("odin.token.T0.trade")
                got = Received(sub)
                await sub.wait_subscribed()

                def good_bad_good():
                    for value in (b'{"seq": 0}', b'{"seq": 1', b'{"seq": 2}'):
                        self.broker.produce(self.topic, b"T0", value, partition=0)
                    self.broker.flush()
                await asyncio.to_thread(good_bad_good)
                await got.until(lambda: got.count() == 2 and len(got.gaps) == 1,
                                "two events and a gap")
                first, gap, last = got.items
                self.assertEqual((first.data, last.data), ({"seq": 0}, {"seq": 2}))
                self.assertIsInstance(gap, Gap)
                self.assertEqual((gap.reason, gap.channel), ("undecodable", "odin.token.T0.trade"))
                self.assertEqual(gap.pos.rpartition(":")[::2], (first.pos.rpartition(":")[0], "1"))
                await asyncio.to_thread(self.broker.produce, self.topic, b"T0", b'{"seq": 3}',
                                        None, 0)
                await asyncio.to_thread(self.broker.flush)
                await got.until(lambda: got.count() == 3, "the next event")
                self.assertEqual(len(got.items), 4)
        self.drive(scenario())


class DeltaTests(PythonClientCase):
    def test_deltas_give_the_same_events_as_whole_ones(self):
        """
        subscribe(delta=True) (compact deltas) and subscribe(delta="merge-patch")
        yield the same events, event for event (channel, data, ts and pos),
        as a plain subscription on another connection; the node did send
        deltas of both kinds (the events carry none: the library made them
        whole).
        """
        node = self.node()

        async def scenario():
            async with self.client(node) as plain_client, self.client(node) as compact_client, \
                    self.client(node) as merge_client:
                subs = [plain_client.subscribe(ALL), compact_client.subscribe(ALL, delta=True),
                        merge_client.subscribe(ALL, delta="merge-patch")]
                got = [Received(sub) for sub in subs]
                compacts: list[list[Any]] = []
                merges: list[dict[str, Any]] = []
                spied = compact_client._session.received_compact
                compact_client._session.received_compact = lambda frame: (
                    compacts.append(frame), spied(frame))
                spied_merge = merge_client._session.received
                merge_client._session.received = lambda msg: (merges.append(msg),
                                                              spied_merge(msg))
                for sub in subs:
                    await sub.wait_subscribed()
                await asyncio.to_thread(self.produce, 60, 40)
                for r in got:
                    await r.until(lambda r=r: r.count() >= 60, "60 events")
                plain = {e.pos: (e.channel, e.data, e.ts) for e in got[0].items
                         if isinstance(e, Event)}
                for r in got[1:]:
                    events = [e for e in r.items if isinstance(e, Event)]
                    self.assertEqual([(e.channel, e.data, e.ts) for e in events],
                                     [plain[e.pos] for e in events])
                    self.assertFalse(any("delta" in e.raw for e in events))
                self.assertGreater(len(compacts), 20)
                self.assertGreater(sum("delta" in m for m in merges), 20)
        self.drive(scenario())


class BotRestartTests(PythonClientCase):
    async def first_run(self, node: Node) -> tuple[list[str], dict[int, list[int]]]:
        """A bot reads the warm-up and 10 more, stores its positions and exits."""
        async with self.client(node) as client:
            sub, got = await self.reading(client)
            return sub.positions, got.seqs

    def test_positions_handed_back_recover_exactly(self):
        """
        Positions stored from sub.positions and handed back as since= after a
        restart of the bot recover exactly the events it missed, then live.
        """
        node = self.node()

        async def scenario():
            stored, before = await self.first_run(node)
            await asyncio.to_thread(self.produce, 10)     # while the bot is down
            await asyncio.to_thread(self.wait_consumed, node)
            async with self.client(node) as client:
                got = Received(client.subscribe(ALL, since=stored))
                await got.until(lambda: got.count() >= 10, "the 10 missed")
                await asyncio.to_thread(self.produce, 4)
                await got.until(lambda: got.count() >= 14, "4 live")
                self.assertEqual(got.gaps, [])
                both = {p: before.get(p, []) + got.seqs.get(p, []) for p in self.produced}
                self.assertEqual(both, self.produced)
        self.drive(scenario())

    def test_gap_after_the_history_window(self):
        """
        Positions older than what the node keeps (history of 5 events per
        partition, 30 missed): the iterator yields a Gap (too_old), not an
        exception, and goes on with live events.
        """
        node = self.node(**{"history.max_events_per_partition": 5})

        async def scenario():
            stored, _ = await self.first_run(node)
            await asyncio.to_thread(self.produce, 30)
            await asyncio.to_thread(self.wait_consumed, node)
            async with self.client(node) as client:
                got = Received(client.subscribe(ALL, since=stored))
                await got.until(lambda: bool(got.gaps), "the gap")
                await asyncio.to_thread(self.produce, 2)
                await got.until(lambda: got.count() >= 2, "live events after the gap")
                self.assertEqual((got.items[0], got.count()), (Gap("too_old"), 2))
                self.assertEqual(sorted(s for seqs in got.seqs.values() for s in seqs),
                                 [self.seq - 2, self.seq - 1])
        self.drive(scenario())


class TokenTests(PythonClientCase):
    def node_with_auth(self) -> Node:
        secret = os.path.join(self.workdir, "jwt.secret")
        with open(secret, "w") as f:
            f.write(SECRET)
        return self.node(**{"auth.mode": "jwt", "auth.secret_file": secret, "auth.leeway": 0})

    @staticmethod
    def token(lifetime: float) -> str:
        return jwt.encode({"exp": int(time.time() + lifetime), "channels": [ALL]}, SECRET,
                          algorithm="HS256")

    def test_refresh_keeps_the_connection_past_exp(self):
        """
        With 4 s tokens from an async token provider, the client refreshes
        each before it expires (refresh message), so one connection outlives
        several tokens (the server would close it with 4001 at exp) and every
        event arrives once, in order.
        """
        node = self.node_with_auth()
        calls = itertools.count(1)
        issued: list[int] = []

        async def provider() -> str:
            issued.append(next(calls))
            return self.token(4)

        async def scenario():
            async with self.client(node, token_provider=provider) as client:
                sub = client.subscribe(ALL)
                got = Received(sub)
                await sub.wait_subscribed()     # events from here on are owed
                stop = self.pour(0.05)
                await got.until(lambda: len(issued) >= 5, "four refreshes", timeout=60)
                await asyncio.to_thread(stop)
                await got.until(lambda: got.count() >= self.seq, "every event")
                self.assertEqual(got.seqs, self.produced)
        self.drive(scenario())
        opened = [s for s in self.states if s.state is ConnectionState.CONNECTED]
        self.assertEqual((len(opened), self.closes(), self.errors), (1, [1000], []))

    def test_4001_gets_a_new_token_and_recovers(self):
        """
        The refresh fails (the sync token provider raises once): the error is
        reported, the server closes with 4001 at exp, the client gets a new
        token from the provider, reconnects with it and recovers every event
        of the outage, once, in order.
        """
        node = self.node_with_auth()
        calls = itertools.count(1)

        def provider() -> str:
            call = next(calls)
            if call == 2:
                raise RuntimeError("identity service down")
            return self.token(3 if call == 1 else 300)

        async def scenario():
            # No jitter: the outage lasts the whole first backoff (0.5 s,
            # about 10 events), so the client must recover them.
            async with self.client(node, token_provider=provider, rand=lambda: 1.0) as client:
                sub = client.subscribe(ALL)
                got = Received(sub)
                await sub.wait_subscribed()
                stop = self.pour(0.05)
                await until(lambda: 4001 in self.closes(), "the 4001")
                await until(lambda: self.states[-1].state is ConnectionState.CONNECTED,
                            "the reconnect")
                at = self.seq
                await got.until(lambda: got.count() >= at + 10, "10 events after it")
                await asyncio.to_thread(stop)
                await got.until(lambda: got.count() >= self.seq, "every event")
                self.assertEqual((got.seqs, got.gaps), (self.produced, []))
        self.drive(scenario())
        self.assertEqual([e.code for e in self.errors], ["get_token_failed"])
        self.assertEqual(self.closes(), [4001, 1000])


class NodeRestartTests(PythonClientCase):
    def test_node_restart(self):
        """
        The node stops (SIGTERM: the client is closed with 4000) and a new
        node process starts on its address while events are produced; the
        client keeps retrying (refused connections) with backoff, reconnects
        to the new node on its own, recovers every event it missed from its
        positions, once, in order, then live.
        """
        first = self.node()

        async def scenario():
            async with self.client(first) as client:
                _, got = await self.reading(client)
                await asyncio.to_thread(first.stop)
                await until(lambda: 4000 in self.closes(), "the 4000")
                # The loop is held while the new node starts and reads the
                # past back (a client that came back earlier would rightly
                # get a gap: unknown_partition). The client's retries wait.
                self.produce(20)
                second = self.node(port=first.port, **{"node_id": f"second{first.port}"})
                wait_for(lambda: all((s.get("warmup") or {}).get("state") == "done"
                                     for s in second.health()[1]["shards"]),
                         60, 0.2, "the new node's warm-up")
                self.wait_consumed(second)
                await got.until(lambda: got.count() >= 32, "the 20 missed")
                await asyncio.to_thread(self.produce, 6)
                await got.until(lambda: got.count() >= 38, "6 live")
                self.assertEqual((got.seqs, got.gaps), (self.produced, []))
        self.drive(scenario())
        self.assertEqual(self.closes()[0], 4000)
