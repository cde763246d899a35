// Tokens: the bearer subprotocol, refresh before exp with getToken, and the
// 4001 close (docs/protocol.md, "refresh" and "Close codes").
import { test } from "node:test";
import assert from "node:assert/strict";
import { tokenExpiry } from "../odinws.js";
import { flush, jwt, makeClient } from "./fakes.mjs";

const NOW_S = 1_700_000_000;  // FakeClock's start, in seconds

test("tokenExpiry reads exp without verifying; null when there is none", () => {
  assert.equal(tokenExpiry(jwt({exp: 1234, sub: "ünïcødé"})), 1234);
  assert.equal(tokenExpiry(jwt({sub: "x"})), null);
  assert.equal(tokenExpiry("not a token"), null);
  assert.equal(tokenExpiry(null), null);
});

test("the token goes in the bearer subprotocol together with odinws", () => {
  const token = jwt({exp: NOW_S + 3600});
  const {client, ws} = makeClient({token});
  client.connect();
  assert.deepEqual(ws().protocols, ["odinws", "bearer." + token]);
});

test("refresh: getToken is called refreshMargin before exp, and the token sent with refresh", async () => {
  const fresh = jwt({exp: NOW_S + 7200});
  let calls = 0;
  const {client, clock, ws} = makeClient({
    token: jwt({exp: NOW_S + 3600}), refreshMargin: 60,
    getToken: async () => { calls++; return fresh; }});
  client.connect();
  ws().open();
  assert.deepEqual(clock.pending(), [3540_000]);
  clock.advance(3540_000 - 1);
  await flush();
  assert.equal(calls, 0);
  clock.advance(1);
  await flush();
  assert.equal(calls, 1);
  const [refresh] = ws().take();
  assert.deepEqual({type: refresh.type, token: refresh.token}, {type: "refresh", token: fresh});
  // The answer's expires schedules the next refresh.
  ws().receive({type: "refreshed", expires: NOW_S + 7200, id: refresh.id});
  assert.deepEqual(clock.pending(), [7200_000 - 3540_000 - 60_000]);
  assert.equal(client.state, "connected");
});

test("refresh: a token shorter-lived than twice the margin is refreshed halfway", async () => {
  const {client, clock, ws} = makeClient({
    token: jwt({exp: NOW_S + 10}), refreshMargin: 30, getToken: async () => "next"});
  client.connect();
  ws().open();
  assert.deepEqual(clock.pending(), [5000]);
});

test("refresh: no getToken, or a token without exp: nothing is scheduled", () => {
  for (const options of [{token: jwt({exp: NOW_S + 60})},
                         {token: jwt({sub: "x"}), getToken: async () => "t"}]) {
    const {client, clock, ws} = makeClient(options);
    client.connect();
    ws().open();
    assert.deepEqual(clock.pending(), []);
  }
});

test("refresh refused by the server: the error is reported and the connection stays", async () => {
  const {client, clock, ws, errors} = makeClient({
    token: jwt({exp: NOW_S + 100}), refreshMargin: 30, getToken: async () => "bad"});
  client.connect();
  ws().open();
  clock.advance(70_000);
  await flush();
  const [refresh] = ws().take();
  ws().receive({type: "error", code: "forbidden", message: "bad token", id: refresh.id});
  assert.deepEqual(errors, [{code: "forbidden", message: "bad token",
                             request: {type: "refresh", channels: undefined}}]);
  assert.equal(client.state, "connected");
});

test("getToken failing during a refresh is reported as get_token_failed", async () => {
  const {client, clock, ws, errors} = makeClient({
    token: jwt({exp: NOW_S + 100}), refreshMargin: 30,
    getToken: async () => { throw new Error("auth server down"); }});
  client.connect();
  ws().open();
  clock.advance(70_000);
  await flush();
  assert.deepEqual(errors, [{code: "get_token_failed", message: "auth server down"}]);
  assert.deepEqual(ws().take(), []);
});

test("refreshed with unsubscribed: those subscriptions fail as no longer granted", async () => {
  const {client, clock, ws, errors} = makeClient({
    token: jwt({exp: NOW_S + 100}), refreshMargin: 30, getToken: async () => "narrower"});
  const abc = client.subscribe("odin.token.ABC.trade", () => {});
  const xyz = client.subscribe("odin.token.XYZ.trade", () => {});
  client.connect();
  ws().open();
  ws().ackSubscribes();
  clock.advance(70_000);
  await flush();
  const [refresh] = ws().take();
  ws().receive({type: "refreshed", expires: NOW_S + 500, unsubscribed: ["odin.token.XYZ.trade"],
                id: refresh.id});
  assert.deepEqual([abc.state, xyz.state], ["subscribed", "failed"]);
  assert.equal(errors[0].code, "forbidden");
  ws().serverClose(1006);
  clock.advance(clock.pending()[0]);
  ws().open();
  assert.deepEqual(ws().take().map((m) => m.channels), [["odin.token.ABC.trade"]]);
});

test("4001: getToken gives a new token and the client reconnects with it", async () => {
  const tokens = [jwt({exp: NOW_S + 1000, n: 2})];
  const {client, clock, WebSocket, ws, states} = makeClient({
    token: jwt({exp: NOW_S + 1000, n: 1}), getToken: async () => tokens.shift()});
  client.subscribe("odin.token.ABC.*", () => {});
  client.connect();
  ws().open();
  ws().serverClose(4001, "token expired; reconnect with a fresh token");
  assert.deepEqual(states.at(-1).reason,
                   {code: 4001, text: "token expired; reconnect with a fresh token"});
  assert.ok(states.at(-1).retryIn >= 0);
  clock.advance(clock.pending()[0]);
  await flush();
  assert.equal(WebSocket.sockets.length, 2);
  assert.equal(tokens.length, 0, "getToken was called");
  assert.deepEqual(ws().protocols, ["odinws", "bearer." + jwt({exp: NOW_S + 1000, n: 2})]);
  ws().open();
  assert.deepEqual(ws().take().map((m) => m.channels), [["odin.token.ABC.*"]]);
});

test("4001 without getToken: no retry (the same token would be refused)", () => {
  const {client, clock, ws, states} = makeClient({token: jwt({exp: NOW_S + 1000})});
  client.subscribe("odin.token.ABC.*", () => {});
  client.connect();
  ws().open();
  ws().serverClose(4001, "token expired");
  assert.equal(states.at(-1).retryIn, null);
  assert.deepEqual(clock.pending(), []);
});

test("an expired token is replaced through getToken before connecting", async () => {
  const fresh = jwt({exp: NOW_S + 1000});
  const {client, WebSocket, ws} = makeClient({
    token: jwt({exp: NOW_S - 1}), getToken: async () => fresh});
  client.connect();
  assert.equal(WebSocket.sockets.length, 0);
  await flush();
  assert.deepEqual(ws().protocols, ["odinws", "bearer." + fresh]);
});

test("getToken failing before connecting counts as a failed attempt", async () => {
  let fail = true;
  const {client, clock, WebSocket, states, errors} = makeClient({
    getToken: async () => { if (fail) throw new Error("no"); return jwt({exp: NOW_S + 99}); }});
  client.connect();
  await flush();
  assert.equal(WebSocket.sockets.length, 0);
  assert.equal(states.at(-1).reason.text, "getToken failed: no");
  assert.deepEqual(errors, [{code: "get_token_failed", message: "no"}]);
  fail = false;
  clock.advance(clock.pending()[0]);
  await flush();
  assert.equal(WebSocket.sockets.length, 1);
});

test("a refused refresh token is not used for the next connection; an accepted one is", async () => {
  const good = jwt({exp: NOW_S + 1000, n: "good"});
  const tokens = [jwt({exp: NOW_S + 1000, n: "bad"}), good];
  const initial = jwt({exp: NOW_S + 100});
  const {client, clock, ws} = makeClient({
    token: initial, refreshMargin: 30, getToken: async () => tokens.shift()});
  client.connect();
  ws().open();
  clock.advance(70_000);
  await flush();
  let [refresh] = ws().take();
  ws().receive({type: "error", code: "forbidden", message: "bad", id: refresh.id});
  ws().serverClose(1006);
  clock.advance(clock.pending()[0]);
  await flush();
  assert.deepEqual(ws().protocols, ["odinws", "bearer." + initial]);
  ws().open();
  clock.advance(clock.pending()[0]);
  await flush();
  [refresh] = ws().take();
  assert.equal(refresh.token, good);
  ws().receive({type: "refreshed", expires: NOW_S + 1000, id: refresh.id});
  ws().serverClose(1006);
  clock.advance(clock.pending()[0]);
  await flush();
  assert.deepEqual(ws().protocols, ["odinws", "bearer." + good]);
});
