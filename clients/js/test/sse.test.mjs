// The "sse" transport (docs/protocol.md, "Server-Sent Events"): URLs, the
// fallback from WebSocket, a new stream per subscription change, acks and
// close events, positions from the stream's ids.
import { test } from "node:test";
import assert from "node:assert/strict";
import { OdinWS, sseStreamUrl, sseUrlOf, vectorPositions } from "../odinws.js";
import { FakeClock, fakeWebSocketClass, flush } from "./fakes.mjs";

/** An EventSource whose server side the test plays; every instance kept in `streams`. */
function fakeEventSourceClass() {
  const streams = [];
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.query = Object.fromEntries(new URL(url).searchParams);
      this.listeners = {};
      this.closed = false;
      streams.push(this);
    }
    addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
    close() { this.closed = true; }
    // -- the server's side
    open() { this.onopen?.({}); }
    named(type, data, lastEventId = "") {
      for (const fn of this.listeners[type] || []) fn({data: JSON.stringify(data), lastEventId});
    }
    send(data, lastEventId = "") { this.onmessage?.({data: JSON.stringify(data), lastEventId}); }
    error() { this.onerror?.({}); }
  }
  FakeEventSource.streams = streams;
  FakeEventSource.last = () => streams[streams.length - 1];
  return FakeEventSource;
}

// A client on a fake clock, a fake WebSocket and a fake EventSource.
function client(options = {}, url = "wss://node.test/ws") {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocketClass();
  const EventSource = fakeEventSourceClass();
  const states = [];
  const c = new OdinWS(url, {transports: ["sse"], positionsRefresh: 0, ...options,
    env: {WebSocket, EventSource, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout,
          now: clock.now, random: () => 0.999999}});
  c.on("state", (s) => states.push(s));
  return {client: c, clock, WebSocket, EventSource, states, es: () => EventSource.last()};
}

const T = "odin.trades";
const pos = (p, o) => `${T}:${p}:ep1:${o}`;
const ev = (channel, p, o, extra = {}) =>
  ({type: "event", channel, data: {o}, ts: 1, pos: pos(p, o), ...extra});

test("the SSE URL of a WebSocket URL; a stream's query", () => {
  assert.equal(sseUrlOf("wss://odin.example/ws"), "https://odin.example/sse");
  assert.equal(sseUrlOf("ws://127.0.0.1:3005/ws"), "http://127.0.0.1:3005/sse");
  assert.equal(sseUrlOf("wss://odin.example/feeds/ws?x=1"), "https://odin.example/feeds/sse");
  assert.equal(sseUrlOf("wss://odin.example/socket"), "https://odin.example/sse");
  const url = new URL(sseStreamUrl("https://odin.example/sse",
    {channels: ["odin.token.*.trade", "odin.token.A.price"], since: [pos(0, 5), pos(1, 7)],
     snapshot: true}, "a.b.c"));
  assert.deepEqual(Object.fromEntries(url.searchParams), {
    channels: "odin.token.*.trade,odin.token.A.price", since: `${pos(0, 5)},${pos(1, 7)}`,
    snapshot: "1", token: "a.b.c"});
  const bare = new URL(sseStreamUrl("https://odin.example/sse", {channels: ["a.b.c.d"]}, null));
  assert.deepEqual([...bare.searchParams.keys()], ["channels"]);
});

test("an SSE id is the shard's vector: its positions", () => {
  assert.deepEqual(vectorPositions("odin.trades~1k9x2f~0:1041,1:988;odin.prices~zz~3:7"),
                   ["odin.trades:0:1k9x2f:1041", "odin.trades:1:1k9x2f:988", "odin.prices:3:zz:7"]);
  assert.deepEqual(vectorPositions(""), []);
  assert.deepEqual(vectorPositions("garbage"), []);
  assert.deepEqual(vectorPositions("t~e~0:x"), []);
});

test("websocket first; when it fails to open, sse at once, with the same subscriptions", async () => {
  const c = client({transports: ["websocket", "sse"], sseUrl: "https://other.test/events"});
  const fallbacks = [];
  c.client.on("fallback", (f) => fallbacks.push(f));
  c.client.subscribe("odin.token.A.trade", {snapshot: true}, () => {});
  c.client.connect();
  assert.equal(c.WebSocket.sockets.length, 1);
  assert.equal(c.client.transport, "websocket");
  c.WebSocket.last().serverClose(1006);
  assert.deepEqual(fallbacks, [{from: "websocket", to: "sse", reason: {code: 1006, text: ""},
    message: "odinws: websocket did not open (close 1006); trying sse"}],
    "the fallback is said, with why");
  assert.deepEqual(c.clock.pending(), [0], "no backoff before the fallback");
  c.clock.advance(0);
  await flush();
  assert.equal(c.client.transport, "sse");
  assert.equal(c.EventSource.streams.length, 1);
  assert.equal(c.es().url.split("?")[0], "https://other.test/events");
  assert.deepEqual(c.es().query, {channels: "odin.token.A.trade", snapshot: "1"});
  // It fails too: the backoff applies, then websocket again.
  c.es().error();
  assert.equal(c.es().closed, true, "closed: the library retries, not the browser");
  assert.ok(c.clock.pending()[0] > 0);
  c.clock.advance(c.clock.pending()[0]);
  assert.equal(c.WebSocket.sockets.length, 2);
  assert.equal(fallbacks.length, 1, "back to the first transport is a retry, not a fallback");
});

test("a transport that opened and dropped is retried, no fallback said", async () => {
  const c = client({transports: ["websocket", "sse"]});
  const fallbacks = [];
  c.client.on("fallback", (f) => fallbacks.push(f));
  c.client.connect();
  c.WebSocket.last().open();
  c.WebSocket.last().serverClose(1006);
  c.clock.advance(c.clock.pending()[0]);
  assert.equal(c.client.transport, "websocket");
  assert.deepEqual(fallbacks, []);
});

test("events and acks over SSE; positions from ids; a reconnect recovers with since", async () => {
  const c = client({token: "tok"});
  const got = [];
  const results = [];
  const sub = c.client.subscribe("odin.token.*.trade", {}, (e) => got.push(e.data.o));
  sub.on("recovered", (r) => results.push(r));
  c.client.connect();
  await flush();
  assert.deepEqual(c.es().query, {channels: "odin.token.*.trade", token: "tok"});
  c.es().open();
  assert.equal(c.client.state, "connected");
  c.es().named("subscribed", {type: "subscribed", channels: ["odin.token.*.trade"]},
               "odin.trades~ep1~0:10,1:20");
  assert.equal(sub.state, "subscribed");
  assert.deepEqual(sub.positions, [pos(0, 10), pos(1, 20)]);
  c.es().send(ev("odin.token.A.trade", 0, 11), "odin.trades~ep1~0:11,1:20");
  c.es().send(ev("odin.token.B.trade", 1, 21), "odin.trades~ep1~0:13,1:21");
  assert.deepEqual(got, [11, 21]);
  assert.deepEqual(sub.positions, [pos(0, 13), pos(1, 21)]);
  const ping = c.client.ping();
  assert.equal(typeof await ping, "number", "answered by the transport");
  // The server's close event: 4000 reconnects with backoff.
  c.es().named("close", {code: 4000, reason: "server restarting"});
  assert.equal(c.states.at(-1).reason.code, 4000);
  c.clock.advance(c.clock.pending()[0]);
  await flush();
  assert.deepEqual(c.es().query, {channels: "odin.token.*.trade", since: `${pos(0, 13)},${pos(1, 21)}`,
                                  token: "tok"});
  c.es().open();
  c.es().named("subscribed", {type: "subscribed", channels: ["odin.token.*.trade"], recovered: true,
                              replayed: 1, positions: [pos(0, 15), pos(1, 21)]});
  c.es().send(ev("odin.token.A.trade", 0, 14), "odin.trades~ep1~0:15,1:21");
  assert.deepEqual(got, [11, 21, 14]);
  assert.deepEqual(results, [{recovered: true, reason: null, replayed: 1, snapshot: 0}]);
  assert.deepEqual(sub.positions, [pos(0, 15), pos(1, 21)]);
});

test("a subscription change opens one new stream with every channel, since and snapshot", async () => {
  const c = client();
  const one = c.client.subscribe("odin.token.A.trade", {}, () => {});
  c.client.connect();
  await flush();
  const first = c.es();
  first.open();
  first.named("subscribed", {type: "subscribed", channels: ["odin.token.A.trade"]},
              "odin.trades~ep1~0:10");
  const prices = [];
  c.client.subscribe("odin.token.B.price", {snapshot: true}, (e) => prices.push(e.data.o));
  c.client.subscribe("odin.token.C.price", {recover: false}, () => {});
  await flush();
  assert.equal(c.EventSource.streams.length, 2, "one new stream for both");
  assert.equal(first.closed, true);
  assert.deepEqual(c.es().query, {channels: "odin.token.A.trade,odin.token.B.price,odin.token.C.price",
                                  since: pos(0, 10), snapshot: "1"});
  c.es().open();
  c.es().named("subscribed", {type: "subscribed", channels: c.es().query.channels.split(","),
                              recovered: true, replayed: 0});
  assert.equal(one.state, "subscribed");
  one.unsubscribe();
  await flush();
  assert.deepEqual(c.es().query.channels, "odin.token.B.price,odin.token.C.price");
});

test("a snapshot over SSE reaches the subscriptions that asked for it", async () => {
  const c = client();
  const snap = [], plain = [];
  c.client.subscribe("odin.token.*.price", {snapshot: true}, (e) => snap.push([e.data.o, !!e.snapshot]));
  c.client.subscribe("odin.token.A.price", {}, (e) => plain.push(e.data.o));
  c.client.connect();
  await flush();
  c.es().open();
  c.es().named("subscribed", {type: "subscribed", channels: ["odin.token.*.price", "odin.token.A.price"],
                              snapshot: 2});
  c.es().send(ev("odin.token.A.price", 0, 3, {snapshot: true}));
  c.es().send(ev("odin.token.B.price", 0, 5, {snapshot: true}), "odin.trades~ep1~0:9");
  c.es().send(ev("odin.token.A.price", 0, 10), "odin.trades~ep1~0:10");
  assert.deepEqual(snap, [[3, true], [5, true], [10, false]]);
  assert.deepEqual(plain, [10]);
});

test("4001 over SSE asks getToken and reconnects with the new token in the query", async () => {
  let n = 0;
  const c = client({token: "old", getToken: async () => `new${++n}`});
  c.client.subscribe("odin.token.A.trade", {}, () => {});
  c.client.connect();
  await flush();
  c.es().open();
  c.es().named("close", {code: 4001, reason: "token expired"});
  c.clock.advance(c.clock.pending()[0]);
  await flush();
  await flush();
  assert.equal(c.es().query.token, "new1");
});

// A client connected over SSE with one subscription that has seen
// partition 0 up to 11 and partition 1 up to 21.
async function streaming(reason) {
  const c = client();
  const got = [], results = [], gaps = [];
  const sub = c.client.subscribe("odin.token.*.trade", {}, (e) => got.push([e.pos, e.data.o]));
  sub.on("recovered", (r) => results.push(r));
  c.client.on("gap", (g) => gaps.push(g.reason));
  c.client.connect();
  await flush();
  const first = c.es();
  first.open();
  first.named("subscribed", {type: "subscribed", channels: ["odin.token.*.trade"]},
              "odin.trades~ep1~0:10,1:20");
  first.send(ev("odin.token.A.trade", 0, 11), "odin.trades~ep1~0:11,1:20");
  first.send(ev("odin.token.A.trade", 1, 21), "odin.trades~ep1~0:11,1:21");
  first.named("gap", {type: "gap", reason, streams: {[`${T}:0:ep1`]: pos(0, 11)},
                      since: "odin.trades~ep1~0:11,1:21"});
  await flush();
  return {c, got, results, gaps, first};
}

for (const reason of ["dropped", "stale"]) {
  test(`a ${reason} gap over SSE opens a new stream from the gap's positions`, async () => {
    const {c, got, results, gaps, first} = await streaming(reason);
    assert.deepEqual(gaps, [reason]);
    assert.equal(first.closed, true, "the stream that lost events is closed");
    assert.equal(c.EventSource.streams.length, 2);
    assert.deepEqual(c.es().query, {channels: "odin.token.*.trade", since: `${pos(0, 11)},${pos(1, 21)}`});
    c.es().open();
    c.es().named("subscribed", {type: "subscribed", channels: ["odin.token.*.trade"], recovered: true,
                                replayed: 3, positions: [pos(0, 14), pos(1, 21)]});
    // The events it lost, then one it had (comes again: dropped as seen).
    c.es().send(ev("odin.token.A.trade", 0, 12), "odin.trades~ep1~0:12,1:21");
    c.es().send(ev("odin.token.A.trade", 1, 21), "odin.trades~ep1~0:12,1:21");
    c.es().send(ev("odin.token.A.trade", 0, 14), "odin.trades~ep1~0:14,1:21");
    assert.deepEqual(got.map(([, o]) => o), [11, 21, 12, 14]);
    assert.deepEqual(results, [{recovered: true, reason: null, replayed: 3, snapshot: 0}]);
    assert.equal(c.client.state, "connected");
  });
}

test("a gap over SSE the new stream cannot recover says recovered: false", async () => {
  const {c, results} = await streaming("dropped");
  c.es().open();
  c.es().named("subscribed", {type: "subscribed", channels: ["odin.token.*.trade"], recovered: false,
                              reason: "too_old", positions: [pos(0, 90), pos(1, 21)]});
  assert.deepEqual(results, [{recovered: false, reason: "too_old", replayed: 0, snapshot: 0}]);
});

test("a stream asks for its subscriptions' maxRate and filter, never for delta", async () => {
  const c = client();
  const filter = {price: {gte: 10}};
  c.client.subscribe("odin.token.A.price", {maxRate: 2, filter, delta: true}, () => {});
  c.client.subscribe("odin.token.B.price", {maxRate: 2, filter}, () => {});
  c.client.connect();
  await flush();
  const query = c.es().query;
  assert.equal(query.max_rate, "2");
  assert.deepEqual(JSON.parse(query.filter), filter);
  assert.equal(query.delta, undefined);
});

test("channels with different options cannot share a stream: an error, no options asked", async () => {
  const c = client();
  const errors = [];
  c.client.on("error", (e) => errors.push(e.code));
  c.client.subscribe("odin.token.A.price", {maxRate: 2}, () => {});
  c.client.subscribe("odin.token.B.price", {filter: {price: {gte: 1}}}, () => {});
  c.client.connect();
  await flush();
  assert.equal(c.es().query.max_rate, undefined);
  assert.equal(c.es().query.filter, undefined);
  assert.deepEqual(errors, ["options_conflict"]);
});
