// Subscriptions: pattern matching, dispatch, acks and refusals, and the
// batched resubscription after a reconnect.
import { test } from "node:test";
import assert from "node:assert/strict";
import { matches } from "../odinws.js";
import { makeClient } from "./fakes.mjs";

const event = (channel, data = 1) => ({type: "event", channel, data, ts: 1732600000000});

test("matches: a lone * segment matches any value of that segment, nothing else does", () => {
  const c = "odin.token.ABC.trade";
  for (const p of ["odin.token.ABC.trade", "odin.token.ABC.*", "odin.token.*.trade",
                   "odin.token.*.*"]) {
    assert.ok(matches(p, c), p);
  }
  for (const p of ["odin.token.ABC.price", "odin.token.AB*.trade", "odin.token.*",
                   "odin.token.ABC.trade.x", "odin.*", "*"]) {
    assert.ok(!matches(p, c), p);
  }
});

test("each event goes to every subscription whose pattern matches, once", () => {
  const {client, ws} = makeClient();
  const got = {a: [], b: [], c: [], d: []};
  client.subscribe("odin.token.ABC.trade", {}, (e) => got.a.push(e.data));
  client.subscribe("odin.token.*.trade", {}, (e) => got.b.push(e.data));
  client.subscribe("odin.token.ABC.*", (e) => got.c.push(e.data));  // options may be left out
  client.subscribe("odin.token.XYZ.price", {}, (e) => got.d.push(e.data));
  client.connect();
  ws().open();
  ws().ackSubscribes();
  ws().receive(event("odin.token.ABC.trade", 1));
  ws().receive(event("odin.token.XYZ.trade", 2));
  ws().receive(event("odin.token.ABC.price", 3));
  assert.deepEqual(got, {a: [1], b: [1, 2], c: [1, 3], d: []});
});

test("the handler gets the event message as sent; a throwing handler does not stop the others",
  (t) => {
    const {client, ws} = makeClient();
    const got = [];
    // The client rethrows handler errors in a microtask, where the runtime reports them.
    const rethrown = [];
    t.mock.method(globalThis, "queueMicrotask", (fn) => {
      try { fn(); } catch (e) { rethrown.push(e.message); }
    });
    client.subscribe("odin.token.*.*", () => { throw new Error("app bug"); });
    client.subscribe("odin.token.ABC.*", (e) => got.push(e));
    client.connect();
    ws().open();
    ws().ackSubscribes();
    ws().receive({...event("odin.token.ABC.trade"), extra: "kept"});
    assert.deepEqual(got, [{...event("odin.token.ABC.trade"), extra: "kept"}]);
    assert.deepEqual(rethrown, ["app bug"], "reported, not swallowed");
  });

test("subscribe while connected sends one message; the ack makes the subscription subscribed", () => {
  const {client, ws} = makeClient();
  client.connect();
  ws().open();
  const sub = client.subscribe("odin.token.ABC.trade", () => {});
  const states = [];
  sub.on("state", (s) => states.push(s.state));
  const [msg] = ws().sent;
  assert.deepEqual({type: msg.type, channels: msg.channels}, {type: "subscribe",
                                                              channels: ["odin.token.ABC.trade"]});
  assert.equal(sub.state, "pending");
  ws().ackSubscribes();
  assert.equal(sub.state, "subscribed");
  assert.deepEqual(states, ["subscribed"]);
});

test("two subscriptions of one pattern share the server subscription until the last goes", () => {
  const {client, ws} = makeClient();
  client.connect();
  ws().open();
  const got = [];
  const one = client.subscribe("odin.token.ABC.*", () => got.push("one"));
  ws().ackSubscribes();
  const two = client.subscribe("odin.token.ABC.*", () => got.push("two"));
  assert.deepEqual(ws().take(), [], "no second subscribe");
  assert.equal(two.state, "subscribed");
  one.unsubscribe();
  assert.equal(one.state, "unsubscribed");
  assert.deepEqual(ws().take(), [], "still held by the other");
  ws().receive(event("odin.token.ABC.trade"));
  assert.deepEqual(got, ["two"]);
  two.unsubscribe();
  const [msg] = ws().take();
  assert.deepEqual({type: msg.type, channels: msg.channels},
                   {type: "unsubscribe", channels: ["odin.token.ABC.*"]});
  ws().receive(event("odin.token.ABC.trade"));  // in flight before the unsubscribe
  assert.deepEqual(got, ["two"]);
});

test("a refused subscribe fails its subscription, reports the error and is not retried", () => {
  const {client, clock, ws, errors} = makeClient();
  client.connect();
  ws().open();
  const sub = client.subscribe("odin.token.SECRET.trade", () => {});
  const [msg] = ws().take();
  ws().receive({type: "error", code: "forbidden", message: "not granted", id: msg.id});
  assert.equal(sub.state, "failed");
  assert.deepEqual(sub.error, {code: "forbidden", message: "not granted"});
  assert.deepEqual(errors, [{code: "forbidden", message: "not granted",
                             request: {type: "subscribe", channels: ["odin.token.SECRET.trade"]}}]);
  ws().serverClose(1006);
  clock.advance(clock.pending()[0]);
  ws().open();
  assert.deepEqual(ws().take(), [], "nothing to subscribe again");
});

test("after a reconnect everything is subscribed again in one message", () => {
  const {client, clock, ws} = makeClient();
  const subs = ["odin.token.A.trade", "odin.token.B.*", "odin.token.*.price"]
    .map((c) => client.subscribe(c, () => {}));
  client.connect();
  ws().open();
  const first = ws().take();
  assert.deepEqual(first.map((m) => m.channels),
                   [["odin.token.A.trade", "odin.token.B.*", "odin.token.*.price"]]);
  ws().receive({type: "subscribed", channels: first[0].channels, id: first[0].id});
  assert.deepEqual(subs.map((s) => s.state), ["subscribed", "subscribed", "subscribed"]);
  ws().serverClose(4000, "server restarting");
  assert.deepEqual(subs.map((s) => s.state), ["pending", "pending", "pending"]);
  clock.advance(clock.pending()[0]);
  ws().open();
  const again = ws().take();
  assert.deepEqual(again.map((m) => [m.type, m.channels]),
                   [["subscribe", ["odin.token.A.trade", "odin.token.B.*", "odin.token.*.price"]]]);
  ws().receive({type: "subscribed", channels: again[0].channels, id: again[0].id});
  assert.deepEqual(subs.map((s) => s.state), ["subscribed", "subscribed", "subscribed"]);
});

test("resubscription respects maxChannelsPerMessage (default 100)", () => {
  const {client, ws} = makeClient();
  for (let i = 0; i < 250; i++) client.subscribe(`odin.token.T${i}.trade`, () => {});
  client.connect();
  ws().open();
  assert.deepEqual(ws().take().map((m) => m.channels.length), [100, 100, 50]);
  const small = makeClient({maxChannelsPerMessage: 2});
  for (let i = 0; i < 5; i++) small.client.subscribe(`odin.token.T${i}.trade`, () => {});
  small.client.connect();
  small.ws().open();
  assert.deepEqual(small.ws().take().map((m) => m.channels.length), [2, 2, 1]);
});

test("a refused batch is split so one bad channel does not sink the others", () => {
  const {client, ws, errors} = makeClient();
  const good = client.subscribe("odin.token.A.trade", () => {});
  const bad = client.subscribe("odin.token.NOPE.trade", () => {});
  client.connect();
  ws().open();
  const [batch] = ws().take();
  ws().receive({type: "error", code: "forbidden", message: "no", id: batch.id});
  assert.deepEqual(errors, [], "not reported yet: asked again one by one");
  const [a, b] = ws().take();
  assert.deepEqual([a.channels, b.channels], [["odin.token.A.trade"], ["odin.token.NOPE.trade"]]);
  ws().receive({type: "subscribed", channels: a.channels, id: a.id});
  ws().receive({type: "error", code: "forbidden", message: "no", id: b.id});
  assert.deepEqual([good.state, bad.state], ["subscribed", "failed"]);
  assert.equal(errors.length, 1);
});

test("a rate-limited subscribe is sent again later, not failed", () => {
  const {client, clock, ws, errors} = makeClient({rateLimitedRetry: 1});
  client.connect();
  ws().open();
  const sub = client.subscribe("odin.token.A.trade", () => {});
  const [msg] = ws().take();
  ws().receive({type: "error", code: "rate_limited", message: "slow down", id: msg.id});
  assert.equal(sub.state, "pending");
  assert.equal(errors[0].code, "rate_limited");
  clock.advance(999);
  assert.deepEqual(ws().take(), []);
  clock.advance(1);
  assert.deepEqual(ws().take().map((m) => m.channels), [["odin.token.A.trade"]]);
});

test("ping resolves with the round trip; rejects when the connection goes", async () => {
  const {client, clock, ws} = makeClient();
  await assert.rejects(client.ping(), /not connected/);
  client.connect();
  ws().open();
  const rtt = client.ping();
  const [ping] = ws().take();
  assert.equal(ping.type, "ping");
  clock.advance(42);
  ws().receive({type: "pong", id: ping.id});
  assert.equal(await rtt, 42);
  const lost = client.ping();
  ws().serverClose(1006);
  await assert.rejects(lost, /connection closed/);
});

test("a subscribe before connect() waits for connect()", () => {
  const {client, WebSocket} = makeClient();
  client.subscribe("odin.token.A.trade", () => {});
  assert.equal(WebSocket.sockets.length, 0);
});
