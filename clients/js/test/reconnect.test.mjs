// Backoff, the connection state machine and close-code handling
// (docs/protocol.md, "Close codes" and "Reconnect contract").
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, OdinWS, TRANSPORTS } from "../odinws.js";
import { makeClient } from "./fakes.mjs";

test("backoff: full jitter between 0 and min(30, 0.5 * 2^attempt) seconds", () => {
  assert.equal(backoffDelay(0, 0.5, 30, () => 0), 0);
  const top = (n) => backoffDelay(n, 0.5, 30, () => 1);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 20].map(top),
                   [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoffDelay(3, 0.5, 30, () => 0.25), 1000);
  // Math.random by default: always within the range.
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(2);
    assert.ok(d >= 0 && d < 2000, String(d));
  }
});

test("states: connecting, connected, disconnected with the close code and text", () => {
  const {client, ws, states} = makeClient();
  assert.equal(client.state, "disconnected");
  client.connect();
  assert.deepEqual(states, [{state: "connecting"}]);
  assert.equal(ws().url, "ws://node.test/ws");
  assert.equal(ws().protocols, undefined, "no subprotocol without a token");
  ws().open();
  assert.equal(client.state, "connected");
  ws().serverClose(4000, "server restarting");
  assert.deepEqual(states.slice(1).map((s) => s.state), ["connected", "disconnected"]);
  assert.deepEqual(states[2].reason, {code: 4000, text: "server restarting"});
  assert.equal(typeof states[2].retryIn, "number");
});

test("retries with growing delays while attempts fail, from 0 again after a stable connection", () => {
  const {client, clock, WebSocket, ws, states} = makeClient({stableAfter: 10});
  client.connect();
  const delays = [];
  for (let i = 0; i < 8; i++) {
    ws().serverClose(1006);  // refused before opening
    delays.push(clock.pending()[0]);
    assert.equal(Math.round(states.at(-1).retryIn), Math.round(delays.at(-1)));
    clock.advance(delays.at(-1));
    assert.equal(client.state, "connecting");
  }
  assert.deepEqual(delays.map(Math.round), [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  assert.equal(WebSocket.sockets.length, 9);
  // A connection that drops at once does not reset the backoff...
  ws().open();
  clock.advance(9000);
  ws().serverClose(1006);
  assert.equal(Math.round(clock.pending()[0]), 30000);
  clock.advance(30000);
  // ...one that stayed up stableAfter seconds does.
  ws().open();
  clock.advance(10000);
  ws().serverClose(1001);
  assert.equal(Math.round(clock.pending()[0]), 500);
});

test("jitter: the delay is random() times the ceiling", () => {
  const {client, clock, ws} = makeClient({}, () => 0.5);
  client.connect();
  ws().serverClose(1006);
  assert.deepEqual(clock.pending(), [250]);
  clock.advance(250);
  ws().serverClose(1006);
  assert.deepEqual(clock.pending(), [500]);
});

for (const code of [1001, 1006, 1011, 4000, 4008]) {
  test(`close ${code}: reconnects after the backoff delay`, () => {
    const {client, clock, WebSocket, ws, states} = makeClient();
    client.subscribe("odin.token.ABC.trade", () => {});
    client.connect();
    ws().open();
    ws().serverClose(code, "bye");
    assert.equal(client.state, "disconnected");
    assert.ok(states.at(-1).retryIn > 0);
    clock.advance(states.at(-1).retryIn);
    assert.equal(WebSocket.sockets.length, 2);
    assert.equal(client.state, "connecting");
  });
}

for (const code of [1007, 1008, 1009]) {
  test(`close ${code}: no retry (the client must change first)`, () => {
    const {client, clock, WebSocket, ws, states} = makeClient();
    client.subscribe("odin.token.ABC.trade", () => {});
    client.connect();
    ws().open();
    ws().serverClose(code, "policy");
    assert.deepEqual(states.at(-1), {state: "disconnected", reason: {code, text: "policy"},
                                     retryIn: null});
    assert.deepEqual(clock.pending(), []);
    clock.advance(120000);
    client.subscribe("odin.token.XYZ.trade", () => {});
    assert.equal(WebSocket.sockets.length, 1, "a subscribe does not bring it back either");
    client.connect();
    assert.equal(WebSocket.sockets.length, 2, "connect() does");
  });
}

test("close 1000 without subscriptions (idle): waits for the next subscribe", () => {
  const {client, clock, WebSocket, ws, states} = makeClient();
  client.connect();
  ws().open();
  ws().serverClose(1000, "idle");
  assert.equal(states.at(-1).retryIn, null);
  clock.advance(120000);
  assert.equal(WebSocket.sockets.length, 1);
  client.subscribe("odin.token.ABC.trade", () => {});
  assert.equal(WebSocket.sockets.length, 2);
  ws().open();
  assert.deepEqual(ws().take().map((m) => m.channels), [["odin.token.ABC.trade"]]);
});

test("close 1000 with subscriptions: reconnects", () => {
  const {client, clock, WebSocket, ws} = makeClient();
  client.subscribe("odin.token.ABC.trade", () => {});
  client.connect();
  ws().open();
  ws().serverClose(1000, "");
  clock.advance(clock.pending()[0]);
  assert.equal(WebSocket.sockets.length, 2);
});

test("close(): closes with 1000, stops retrying, and connect() resumes", () => {
  const {client, clock, WebSocket, ws, states} = makeClient();
  client.subscribe("odin.token.ABC.trade", () => {});
  client.connect();
  ws().open();
  const first = ws();
  client.close();
  assert.deepEqual(first.closedWith, {code: 1000, reason: "closed by the client"});
  assert.deepEqual(states.at(-1), {state: "disconnected",
    reason: {code: 1000, text: "closed by the client"}, retryIn: null});
  first.serverClose(1000);  // the socket's own close event changes nothing
  assert.equal(states.at(-1).reason.text, "closed by the client");
  clock.advance(60000);
  assert.equal(WebSocket.sockets.length, 1);
  client.connect();
  ws().open();
  assert.deepEqual(ws().take().map((m) => m.type), ["subscribe"]);
});

test("close() while waiting to retry cancels the retry", () => {
  const {client, clock, WebSocket, ws} = makeClient();
  client.connect();
  ws().serverClose(1006);
  client.close();
  assert.deepEqual(clock.pending(), []);
  clock.advance(60000);
  assert.equal(WebSocket.sockets.length, 1);
});

test("transports: the next one is tried at once when one fails to open; a retry hint is a lower bound",
  (t) => {
  // A transport that can see a retry hint (a WebSocket cannot: see README).
  const opened = [];
  TRANSPORTS.hinting = (url, {token}, on) => {
    opened.push({url, token, on});
    return {send() {}, close() {}};
  };
  t.after(() => { delete TRANSPORTS.hinting; });
  const {client, clock, WebSocket, ws} = makeClient(
    {token: "t0", transports: ["hinting", "websocket"]}, () => 0.5);
  client.connect();
  assert.equal(opened.length, 1);
  assert.equal(opened[0].token, "t0");
  opened[0].on.close({code: 1006, text: "", retryAfter: 5});
  assert.deepEqual(clock.pending(), [5000], "the fallback has no backoff, but the hint holds");
  clock.advance(5000);
  assert.equal(WebSocket.sockets.length, 1, "the next transport in the list");
  ws().serverClose(1006);
  clock.advance(clock.pending()[0]);
  assert.equal(opened.length, 2, "and round again");
  opened[1].on.close({code: 1006, text: ""});
  assert.deepEqual(clock.pending(), [0]);
  clock.advance(0);
  ws().open();
  ws().serverClose(4000);
  clock.advance(clock.pending()[0]);
  assert.equal(WebSocket.sockets.length, 3, "a transport that opened is kept");
  assert.equal(opened.length, 2);
});

test("an unknown transport name is refused at construction", () => {
  assert.throws(() => new OdinWS("ws://x/ws", {transports: ["carrier-pigeon"]}), TypeError);
});

test("events from an old connection are ignored after it closed", () => {
  const {client, WebSocket, ws, clock} = makeClient();
  const got = [];
  client.subscribe("odin.token.*.trade", (e) => got.push(e.data));
  client.connect();
  const old = ws();
  old.open();
  old.ackSubscribes();
  old.serverClose(1006);
  old.receive({type: "event", channel: "odin.token.A.trade", data: 1, ts: 1});
  old.open();
  assert.equal(client.state, "disconnected");
  clock.advance(clock.pending()[0]);
  assert.equal(WebSocket.sockets.length, 2);
  assert.deepEqual(got, []);
});

test("an error with no close after it (Node 20's WebSocket) counts as a close: the retry follows", () => {
  const {client, clock, WebSocket, ws, states} = makeClient();
  client.connect();
  ws().fail();  // refused, or a 503: no close event will come
  clock.advance(0);
  assert.equal(client.state, "disconnected");
  assert.deepEqual(states.at(-1).reason, {code: 1006, text: "connection failed"});
  assert.equal(clock.pending().length, 1, "one retry scheduled");
  clock.advance(clock.pending()[0]);
  assert.equal(WebSocket.sockets.length, 2, "a new attempt");
  assert.equal(client.state, "connecting");
  ws().open();
  assert.equal(client.state, "connected");
});

test("an error then its close (a browser) is one close, with the close's code", () => {
  const {client, clock, WebSocket, ws, states} = makeClient();
  client.connect();
  ws().open();
  ws().fail();
  ws().serverClose(1006, "");
  clock.advance(0);
  const closes = states.filter((s) => s.state === "disconnected");
  assert.deepEqual(closes.map((s) => s.reason), [{code: 1006, text: ""}]);
  assert.equal(clock.pending().length, 1, "one retry, not two");
  clock.advance(clock.pending()[0]);
  assert.equal(WebSocket.sockets.length, 2);
  // A late close of the first socket (after the error counted) changes nothing.
  WebSocket.sockets[0].serverClose(1006);
  assert.equal(client.state, "connecting");
  assert.equal(clock.pending().length, 0);
});
