// Subscription options: delta events applied transparently, the server-side
// options carried on every subscribe of their channel, RFC 7386 merge patch.
import { test } from "node:test";
import assert from "node:assert/strict";
import { applyCompactDelta, applyMergePatch } from "../odinws.js";
import { makeClient } from "./fakes.mjs";

const C = "odin.token.ABC.price";
const whole = (data, n) => ({type: "event", channel: C, data, ts: 1732600000000 + n,
                             pos: `p:0:e:${n}`});
const delta = (patch, n) => ({type: "event", channel: C, delta: patch, ts: 1732600000000 + n,
                              pos: `p:0:e:${n}`});

test("applyMergePatch follows RFC 7386's examples", () => {
  const cases = [
    [{a: "b"}, {a: "c"}, {a: "c"}], [{a: "b"}, {b: "c"}, {a: "b", b: "c"}],
    [{a: "b"}, {a: null}, {}], [{a: "b", b: "c"}, {a: null}, {b: "c"}],
    [{a: ["b"]}, {a: "c"}, {a: "c"}], [{a: "c"}, {a: ["b"]}, {a: ["b"]}],
    [{a: {b: "c"}}, {a: {b: "d", c: null}}, {a: {b: "d"}}], [{a: [{b: "c"}]}, {a: [1]}, {a: [1]}],
    [["a", "b"], ["c", "d"], ["c", "d"]], [{a: "b"}, ["c"], ["c"]], [{a: "foo"}, null, null],
    [{a: "foo"}, "bar", "bar"], [{e: null}, {a: 1}, {e: null, a: 1}], [[1, 2], {a: "b", c: null}, {a: "b"}],
    [{}, {a: {bb: {ccc: null}}}, {a: {bb: {}}}],
  ];
  for (const [target, patch, result] of cases) {
    assert.deepEqual(applyMergePatch(target, patch), result, JSON.stringify([target, patch]));
  }
});

test("a delta subscription asks for deltas and its handler gets whole data", () => {
  const {client, ws} = makeClient();
  const got = [];
  client.subscribe(C, {delta: true, recover: false}, (e) => got.push(e));
  client.connect();
  ws().open();
  const [sent] = ws().sent;
  assert.equal(sent.delta, "compact");
  ws().ackSubscribes();
  ws().receive(whole({price: "1.00", size: 3, name: "n"}, 1));
  ws().receive(delta({price: "1.01"}, 2));
  ws().receive(delta({size: null, book: {bid: 1}}, 3));
  assert.deepEqual(got.map((e) => e.data), [
    {price: "1.00", size: 3, name: "n"}, {price: "1.01", size: 3, name: "n"},
    {price: "1.01", name: "n", book: {bid: 1}}]);
  assert.ok(got.every((e) => !("delta" in e)), "no delta field left");
  assert.deepEqual(got.map((e) => e.pos), ["p:0:e:1", "p:0:e:2", "p:0:e:3"]);
});

test("after a reconnect the next whole event is the base; a delta without one is an error", () => {
  const {client, ws, errors, clock, WebSocket} = makeClient();
  const got = [];
  client.subscribe(C, {delta: true, recover: false}, (e) => got.push(e.data));
  client.connect();
  ws().open();
  ws().ackSubscribes();
  ws().receive(whole({a: 1, b: 2}, 1));
  ws().serverClose(1006);
  clock.advance(60_000);      // the reconnect's backoff
  assert.equal(WebSocket.sockets.length, 2);
  // The new connection must not patch its first events onto the old base.
  const second = ws();
  second.open();
  second.ackSubscribes();
  second.receive(delta({a: 5}, 2));
  assert.deepEqual(errors.map((e) => e.code), ["delta_without_base"]);
  second.receive(whole({a: 7, b: 2}, 3));
  second.receive(delta({a: 8}, 4));
  assert.deepEqual(got, [{a: 1, b: 2}, {a: 7, b: 2}, {a: 8, b: 2}]);
});

test("maxRate and filter go on every subscribe of their channel, recoveries included", () => {
  const {client, ws} = makeClient();
  client.subscribe(C, {maxRate: 2, filter: {size: {gte: 100}}, delta: "merge-patch"});
  client.subscribe("odin.token.ABC.trade", {});
  client.connect();
  ws().open();
  const sent = ws().take();
  const withOptions = sent.filter((m) => m.channels.includes(C));
  assert.equal(withOptions.length, 1);
  assert.deepEqual([withOptions[0].max_rate, withOptions[0].filter, withOptions[0].delta],
                   [2, {size: {gte: 100}}, "merge-patch"]);
  const plain = sent.find((m) => m.channels.includes("odin.token.ABC.trade"));
  assert.ok(!("max_rate" in plain) && !("filter" in plain) && !("delta" in plain));
  for (const m of sent) ws().receive({type: "subscribed", channels: m.channels, id: m.id});
  // A gap recovery resubscribes the channel: with its options again.
  ws().receive({type: "gap", reason: "too_old", streams: {"p:0:e": "p:0:e:5"}});
  const again = ws().take().filter((m) => m.channels.includes(C));
  assert.ok(again.length >= 1);
  for (const m of again) assert.deepEqual([m.max_rate, m.delta], [2, "merge-patch"]);
});

test("two subscriptions of one channel must ask for the same server-side options", () => {
  const {client} = makeClient();
  client.subscribe(C, {delta: true});
  client.subscribe(C, {delta: true, snapshot: true});     // same server options: fine
  assert.throws(() => client.subscribe(C, {maxRate: 1}), /other delta\/maxRate\/filter/);
});

test("compact deltas come out as whole events: data, ts and the exact pos", () => {
  const {client, ws, errors} = makeClient();
  const got = [];
  client.subscribe(C, {delta: true, recover: false}, (e) => got.push(e));
  client.connect();
  ws().open();
  ws().ackSubscribes();
  ws().receive({...whole({price: 1.5, seq: 1, name: "n"}, 9007199254740990), sid: 4,
                ts: 1000, pos: "p:0:e:9007199254740990"});
  ws().receive([4, 3, 50, {price: 1.6}, {seq: 1}]);
  ws().receive([4, 1, 25, {name: null}]);
  ws().receive([5, 1, 1, {}]);              // a stream no whole event started
  assert.deepEqual(got.map((e) => [e.channel, e.data, e.ts, e.pos]), [
    [C, {price: 1.5, seq: 1, name: "n"}, 1000, "p:0:e:9007199254740990"],
    [C, {price: 1.6, seq: 2, name: "n"}, 1050, "p:0:e:9007199254740993"],
    [C, {price: 1.6, seq: 2}, 1075, "p:0:e:9007199254740994"]]);
  assert.deepEqual(errors.map((e) => e.code), ["delta_without_base"]);
});

test("applyCompactDelta rebuilds from the previous event without changing it", () => {
  const last = {channel: C, data: {a: 1, b: {c: 2}}, ts: 5, pos: "t:1:e:10"};
  const next = applyCompactDelta(last, [2, 2, 3, {b: {c: 3}}, {a: 4}]);
  assert.deepEqual(next, {type: "event", channel: C, data: {a: 5, b: {c: 3}}, ts: 8,
                          pos: "t:1:e:12", sid: 2});
  assert.deepEqual(last.data, {a: 1, b: {c: 2}});
});
