// Recovery and snapshots (docs/protocol.md, "Positions, recovery and
// snapshots"): the positions each subscription keeps, `since` after a
// reconnect, `recovered: false` reaching the app, snapshot events.
import { test } from "node:test";
import assert from "node:assert/strict";
import { isNewer, parsePosition } from "../odinws.js";
import { makeClient } from "./fakes.mjs";

const T = "odin.trades";
const pos = (partition, offset, epoch = "ep1") => `${T}:${partition}:${epoch}:${offset}`;
const event = (channel, partition, offset, extra = {}) =>
  ({type: "event", channel, data: {o: offset}, ts: 1, pos: pos(partition, offset), ...extra});

// Connect with `subs` ([channel, options]) and answer the first subscribes.
function connected(subs, clientOptions = {}) {
  const c = makeClient(clientOptions);
  const got = new Map();
  c.subs = subs.map(([channel, options]) => {
    const list = [];
    const sub = c.client.subscribe(channel, options, (e) => list.push(e));
    got.set(sub, list);
    sub.results = [];
    sub.on("recovered", (r) => sub.results.push(r));
    return sub;
  });
  c.got = (sub) => got.get(sub).map((e) => (e.snapshot ? `s${e.data.o}` : e.data.o));
  c.client.connect();
  c.ws().open();
  return c;
}

function reconnect({clock, ws}) {
  ws().serverClose(1006);
  clock.advance(clock.pending()[0]);
  ws().open();
  return ws().take();
}

test("positions: parsed only to compare offsets of one partition", () => {
  assert.deepEqual(parsePosition("odin.trades:3:1k9x2f:12345"),
                   {partition: "odin.trades:3", stream: "odin.trades:3:1k9x2f", offset: "12345"});
  assert.equal(parsePosition("nope"), null);
  assert.equal(parsePosition(undefined), null);
  const last = new Map([["odin.trades:3", "odin.trades:3:e:99"]]);
  assert.ok(isNewer(last, "odin.trades:3:e:100"));
  assert.ok(!isNewer(last, "odin.trades:3:e:99"));
  assert.ok(!isNewer(last, "odin.trades:3:e:7"));
  assert.ok(isNewer(last, "odin.trades:3:other:1"), "a recreated topic starts over");
  assert.ok(isNewer(last, "odin.trades:4:e:1"), "another partition");
  // Offsets beyond 2^53 compare exactly.
  const big = new Map([["t:0", "t:0:e:9007199254740993"]]);
  assert.ok(isNewer(big, "t:0:e:9007199254740994"));
  assert.ok(!isNewer(big, "t:0:e:9007199254740992"));
});

test("the first subscribe asks for the current positions (since: []); recover: false does not", () => {
  const {ws} = connected([["odin.token.A.trade", {}], ["odin.token.B.trade", {recover: false}]]);
  const sent = ws().take().map(({type, channels, since, snapshot}) => ({type, channels, since, snapshot}));
  assert.deepEqual(sent, [
    {type: "subscribe", channels: ["odin.token.A.trade"], since: [], snapshot: undefined},
    {type: "subscribe", channels: ["odin.token.B.trade"], since: undefined, snapshot: undefined}]);
});

test("positions come from the ack and from events; a reconnect recovers from them", () => {
  const c = connected([["odin.token.A.*", {}]]);
  const [sub] = c.subs;
  const [first] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: first.channels, id: first.id, recovered: true,
                  replayed: 0, positions: [pos(0, 10), pos(1, 20)]});
  assert.deepEqual(sub.positions, [pos(0, 10), pos(1, 20)]);
  c.ws().receive(event("odin.token.A.trade", 1, 21));
  c.ws().receive(event("odin.token.A.price", 1, 25));
  assert.deepEqual(sub.positions, [pos(0, 10), pos(1, 25)]);
  const [again] = reconnect(c);
  assert.deepEqual(again.since, [pos(0, 10), pos(1, 25)]);
  assert.equal(sub.state, "pending");
  // The replay follows the ack; the tops count once an event past them came.
  c.ws().receive({type: "subscribed", channels: again.channels, id: again.id, recovered: true,
                  replayed: 2, positions: [pos(0, 14), pos(1, 30), pos(2, 5)]});
  assert.deepEqual(sub.positions, [pos(0, 10), pos(1, 25), pos(2, 5)], "a new partition at once");
  c.ws().receive(event("odin.token.A.trade", 0, 12));
  c.ws().receive(event("odin.token.A.trade", 1, 27));
  assert.deepEqual(sub.positions, [pos(0, 12), pos(1, 27), pos(2, 5)]);
  c.ws().receive(event("odin.token.A.trade", 0, 15));
  assert.deepEqual(c.got(sub), [21, 25, 12, 27, 15]);
  assert.deepEqual(sub.positions, [pos(0, 15), pos(1, 30), pos(2, 5)]);
  assert.deepEqual(sub.results, [{recovered: true, reason: null, replayed: 2, snapshot: 0}]);
});

test("recovered: false reaches the app; the positions start over from the ack's", () => {
  const c = connected([["odin.token.A.trade", {}]]);
  const [sub] = c.subs;
  const [first] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: first.channels, id: first.id, recovered: true,
                  replayed: 0, positions: [pos(0, 10)]});
  c.ws().receive(event("odin.token.A.trade", 0, 11));
  const [again] = reconnect(c);
  assert.deepEqual(again.since, [pos(0, 11)]);
  c.ws().receive({type: "subscribed", channels: again.channels, id: again.id, recovered: false,
                  reason: "too_old", positions: [pos(0, 90000)]});
  assert.deepEqual(sub.results, [{recovered: false, reason: "too_old", replayed: 0, snapshot: 0}]);
  assert.equal(sub.state, "subscribed");
  assert.deepEqual(sub.positions, [pos(0, 90000)]);
  c.ws().receive(event("odin.token.A.trade", 0, 90001));
  assert.deepEqual(c.got(sub), [11, 90001]);
  assert.deepEqual(reconnect(c)[0].since, [pos(0, 90001)]);
});

test("recovered: false, ahead (a node behind): the live events the client has are dropped", () => {
  const c = connected([["odin.token.A.trade", {}]]);
  const [sub] = c.subs;
  c.ws().ackSubscribes();
  for (const [p, o] of [[0, 50], [1, 20], [2, 3]]) c.ws().receive(event("odin.token.A.trade", p, o));
  const [again] = reconnect(c);
  assert.deepEqual(again.since, [pos(0, 50), pos(1, 20), pos(2, 3)]);
  // Partition 0 is ahead of this node; 1 is behind it (too old to replay);
  // 2 was recreated (another epoch).
  c.ws().receive({type: "subscribed", channels: again.channels, id: again.id, recovered: false,
                  reason: "ahead", positions: [pos(0, 40), pos(1, 30), pos(2, 1, "ep2")]});
  assert.deepEqual(sub.results, [{recovered: false, reason: "ahead", replayed: 0, snapshot: 0}]);
  assert.deepEqual(sub.positions, [pos(0, 50), pos(1, 30), pos(2, 1, "ep2")]);
  for (const o of [41, 49, 50, 51]) c.ws().receive(event("odin.token.A.trade", 0, o));
  c.ws().receive(event("odin.token.A.trade", 1, 31));
  c.ws().receive({...event("odin.token.A.trade", 2, 2), pos: pos(2, 2, "ep2")});
  assert.deepEqual(c.got(sub), [50, 20, 3, 51, 31, 2]);
  assert.deepEqual(reconnect(c)[0].since, [pos(0, 51), pos(1, 31), pos(2, 2, "ep2")]);
});

test("an event not newer than the subscription's last of its partition is not delivered", () => {
  const c = connected([["odin.token.A.trade", {}]]);
  const [sub] = c.subs;
  c.ws().ackSubscribes();
  for (const o of [5, 6, 6, 4, 7]) c.ws().receive(event("odin.token.A.trade", 0, o));
  c.ws().receive(event("odin.token.A.trade", 1, 2));
  c.ws().receive({type: "event", channel: "odin.token.A.trade", data: {o: "nopos"}, ts: 1});
  assert.deepEqual(c.got(sub), [5, 6, 7, 2, "nopos"]);
});

test("subscriptions with different positions recover in separate messages, the same ones share", () => {
  const c = connected([["odin.token.A.trade", {}], ["odin.token.B.trade", {}],
                       ["odin.token.C.trade", {}]]);
  const [first] = c.ws().take();
  assert.deepEqual(first.channels, ["odin.token.A.trade", "odin.token.B.trade", "odin.token.C.trade"]);
  c.ws().receive({type: "subscribed", channels: first.channels, id: first.id, recovered: true,
                  replayed: 0, positions: [pos(0, 10)]});
  c.ws().receive(event("odin.token.A.trade", 0, 11));
  const again = reconnect(c);
  assert.deepEqual(again.map((m) => [m.channels, m.since]), [
    [["odin.token.A.trade"], [pos(0, 11)]],
    [["odin.token.B.trade", "odin.token.C.trade"], [pos(0, 10)]]]);
});

test("a replay asked by one subscription does not reach another that had those events", () => {
  const c = connected([["odin.token.*.trade", {}], ["odin.token.A.*", {}]]);
  const [wide, narrow] = c.subs;
  const [first] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: first.channels, id: first.id, recovered: true,
                  replayed: 0, positions: [pos(0, 10)]});
  c.ws().receive(event("odin.token.A.trade", 0, 11));
  c.ws().receive(event("odin.token.B.trade", 0, 12));
  const again = reconnect(c);
  assert.deepEqual(again.map((m) => m.since), [[pos(0, 12)], [pos(0, 11)]]);
  // The wide one first: nothing missed. Then the narrow one: A.trade 13, missed,
  // came live to the wide one before the narrow one's ack (not to the narrow one).
  c.ws().receive({type: "subscribed", channels: again[0].channels, id: again[0].id,
                  recovered: true, replayed: 0, positions: [pos(0, 12)]});
  c.ws().receive(event("odin.token.A.trade", 0, 13));
  c.ws().receive({type: "subscribed", channels: again[1].channels, id: again[1].id,
                  recovered: true, replayed: 1, positions: [pos(0, 13)]});
  c.ws().receive(event("odin.token.A.trade", 0, 13));  // the narrow one's replay
  c.ws().receive(event("odin.token.A.price", 0, 14));  // live
  assert.deepEqual(c.got(wide), [11, 12, 13]);
  assert.deepEqual(c.got(narrow), [11, 13, 14]);
});

test("snapshot: the first subscribe asks for it, then for the positions; events marked snapshot", () => {
  const c = connected([["odin.token.*.price", {snapshot: true}], ["odin.token.A.trade", {}]]);
  const [prices, trades] = c.subs;
  const sent = c.ws().take();
  assert.deepEqual(sent.map(({channels, since, snapshot}) => ({channels, since, snapshot})), [
    {channels: ["odin.token.*.price"], since: undefined, snapshot: true},
    {channels: ["odin.token.A.trade"], since: [], snapshot: undefined},
    {channels: ["odin.token.*.price"], since: [], snapshot: undefined}]);
  c.ws().receive({type: "subscribed", channels: sent[0].channels, id: sent[0].id, snapshot: 2});
  c.ws().receive(event("odin.token.A.price", 0, 3, {snapshot: true}));
  c.ws().receive(event("odin.token.B.price", 0, 8, {snapshot: true}));
  c.ws().receive({type: "subscribed", channels: sent[1].channels, id: sent[1].id,
                  recovered: true, replayed: 0, positions: [pos(0, 9)]});
  c.ws().receive({type: "subscribed", channels: sent[2].channels, id: sent[2].id,
                  recovered: true, replayed: 0, positions: [pos(0, 9)]});
  c.ws().receive(event("odin.token.A.price", 0, 10));
  assert.deepEqual(c.got(prices), ["s3", "s8", 10]);
  assert.deepEqual(c.got(trades), []);
  assert.deepEqual(prices.positions, [pos(0, 10)]);
});

test("snapshot on reconnect: asked with since; the server sends it only when not recovered", () => {
  const c = connected([["odin.token.A.price", {snapshot: true}]]);
  const [sub] = c.subs;
  const [snap, since] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: snap.channels, id: snap.id, snapshot: 0});
  c.ws().receive({type: "subscribed", channels: since.channels, id: since.id, recovered: true,
                  replayed: 0, positions: [pos(0, 5)]});
  const [again] = reconnect(c);
  assert.deepEqual([again.since, again.snapshot], [[pos(0, 5)], true]);
  c.ws().receive({type: "subscribed", channels: again.channels, id: again.id, recovered: false,
                  reason: "too_old", snapshot: 1, positions: [pos(0, 900)]});
  c.ws().receive(event("odin.token.A.price", 0, 899, {snapshot: true}));
  c.ws().receive(event("odin.token.A.price", 0, 901));
  assert.deepEqual(c.got(sub), ["s899", 901]);
  assert.deepEqual(sub.results, [{recovered: false, reason: "too_old", replayed: 0, snapshot: 1}]);
});

test("a second subscription of a held channel asks for its own snapshot; only it gets it", () => {
  const c = connected([["odin.token.A.price", {}]]);
  const [plain] = c.subs;
  c.ws().ackSubscribes();
  const got = [];
  const later = c.client.subscribe("odin.token.A.price", {snapshot: true}, (e) => got.push(e.data.o));
  assert.equal(later.state, "subscribed");
  const [msg] = c.ws().take();
  assert.deepEqual([msg.channels, msg.snapshot, msg.since], [["odin.token.A.price"], true, undefined]);
  c.ws().receive({type: "subscribed", channels: msg.channels, id: msg.id, snapshot: 1});
  c.ws().receive(event("odin.token.A.price", 0, 4, {snapshot: true}));
  c.ws().receive(event("odin.token.A.price", 0, 5));
  assert.deepEqual(got, [4, 5]);
  assert.deepEqual(c.got(plain), [5]);
});

test("positions a server cannot use: not recovered, subscribed again from the current ones", () => {
  const c = connected([["odin.token.A.trade", {snapshot: true}]]);
  const [sub] = c.subs;
  c.ws().take();
  c.client.subscribe("odin.token.B.trade", {since: [pos(0, 3)]}, () => {});
  const [withSince] = c.ws().take();
  assert.deepEqual(withSince.since, [pos(0, 3)], "since given at subscribe");
  c.ws().receive({type: "error", code: "unknown_position", message: "no", id: withSince.id});
  const [retry] = c.ws().take();
  assert.deepEqual([retry.channels, retry.since], [["odin.token.B.trade"], []]);
  assert.equal(sub.state, "pending");
  assert.deepEqual(c.errors, []);
});

test("every positionsRefresh seconds the held channels ask for the current positions", () => {
  const c = connected([["odin.token.A.trade", {}]], {positionsRefresh: 60});
  const [sub] = c.subs;
  const [first] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: first.channels, id: first.id, recovered: true,
                  replayed: 0, positions: [pos(0, 10), pos(1, 10)]});
  c.ws().receive(event("odin.token.A.trade", 0, 11));
  c.clock.advance(60000);
  const [ask] = c.ws().take();
  assert.deepEqual([ask.channels, ask.since, ask.snapshot], [["odin.token.A.trade"], [], undefined]);
  c.ws().receive({type: "subscribed", channels: ask.channels, id: ask.id, recovered: true,
                  replayed: 0, positions: [pos(0, 40), pos(1, 80)]});
  // Events queued before the ack may still come (acks overtake them): the
  // tops count after an event past them, or at the next ack if none came.
  assert.deepEqual(sub.positions, [pos(0, 11), pos(1, 10)]);
  c.ws().receive(event("odin.token.A.trade", 0, 39));
  assert.deepEqual(c.got(sub), [11, 39]);
  c.ws().receive(event("odin.token.A.trade", 0, 41));
  assert.deepEqual(sub.positions, [pos(0, 41), pos(1, 80)]);
  assert.deepEqual(sub.results, [], "no recovery to report");
  c.clock.advance(60000);
  const [next] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: next.channels, id: next.id, recovered: true,
                  replayed: 0, positions: [pos(0, 50), pos(1, 90)]});
  assert.deepEqual(sub.positions, [pos(0, 41), pos(1, 80)]);
  c.clock.advance(60000);
  const [third] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: third.channels, id: third.id, recovered: true,
                  replayed: 0, positions: [pos(0, 50), pos(1, 95)]});
  assert.deepEqual(sub.positions, [pos(0, 50), pos(1, 90)], "no event since the last ack");
});

test("acks may overtake queued events: a replay is collected and handed over in order, once", () => {
  // What a real node does: the second subscribe's ack is written before the
  // first one's replay, and the second one's replay repeats events of the
  // first one's that match both.
  const c = connected([["odin.token.*.trade", {}], ["odin.token.A.*", {}]]);
  const [trades, a] = c.subs;
  const [first] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: first.channels, id: first.id, recovered: true,
                  replayed: 0, positions: [pos(0, 10), pos(1, 10)]});
  c.ws().receive(event("odin.token.A.trade", 0, 11));
  c.ws().receive(event("odin.token.B.trade", 1, 11));
  c.ws().receive(event("odin.token.A.price", 0, 12));
  const again = reconnect(c);
  assert.deepEqual(again.map((m) => m.since), [[pos(0, 11), pos(1, 11)], [pos(0, 12), pos(1, 10)]]);
  c.ws().receive({type: "subscribed", channels: again[0].channels, id: again[0].id,
                  recovered: true, replayed: 3, positions: [pos(0, 16), pos(1, 14)]});
  c.ws().receive({type: "subscribed", channels: again[1].channels, id: again[1].id,
                  recovered: true, replayed: 3, positions: [pos(0, 16), pos(1, 14)]});
  // The first replay: A.trade 13 and 15 (partition 0), B.trade 14 (partition 1).
  c.ws().receive(event("odin.token.A.trade", 0, 13));
  c.ws().receive(event("odin.token.A.trade", 0, 15));
  c.ws().receive(event("odin.token.B.trade", 1, 14));
  assert.deepEqual(c.got(a), [11, 12], "A.* waits for its own replay");
  // The second replay: A.trade 13 and 15 again, A.price 16.
  c.ws().receive(event("odin.token.A.trade", 0, 13));
  c.ws().receive(event("odin.token.A.trade", 0, 15));
  assert.equal(c.got(a).length, 2);
  c.ws().receive(event("odin.token.A.price", 0, 16));
  c.ws().receive(event("odin.token.A.trade", 0, 17));  // live
  assert.deepEqual(c.got(trades), [11, 11, 13, 15, 14, 17]);
  assert.deepEqual(c.got(a), [11, 12, 13, 15, 16, 17]);
});

test("a replay ends at the first event past its tops, however many came", () => {
  const c = connected([["odin.token.A.trade", {}]]);
  const [sub] = c.subs;
  const [first] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: first.channels, id: first.id, recovered: true,
                  replayed: 0, positions: [pos(0, 10)]});
  const [again] = reconnect(c);
  c.ws().receive({type: "subscribed", channels: again.channels, id: again.id, recovered: true,
                  replayed: 3, positions: [pos(0, 20)]});
  c.ws().receive(event("odin.token.A.trade", 0, 12));
  c.ws().receive(event("odin.token.A.trade", 0, 21));  // one replayed event never came
  assert.deepEqual(c.got(sub), [12, 21]);
});

// Gap notices (docs/protocol.md, "Slow clients: catch-up and gaps").
function liveAt(c, positions) {
  const [first] = c.ws().take();
  c.ws().receive({type: "subscribed", channels: first.channels, id: first.id, recovered: true,
                  replayed: 0, positions});
}

test("a gap notice recovers the stream: held live events and the replay in order, once", () => {
  const c = connected([["odin.token.*.*", {}], ["odin.token.B.*", {recover: false}]]);
  const [sub, plain] = c.subs;
  liveAt(c, [pos(0, 10)]);
  c.ws().take();
  c.ws().receive(event("odin.token.A.trade", 0, 11));
  c.ws().receive({type: "gap", reason: "too_old", streams: {[`${T}:0:ep1`]: pos(0, 11)}});
  const [again] = c.ws().take();
  assert.deepEqual([again.channels, again.since], [["odin.token.*.*"], [pos(0, 11)]]);
  c.ws().receive(event("odin.token.A.trade", 0, 15));     // live, after the gap: held
  assert.deepEqual(c.got(sub), [11]);
  c.ws().receive({type: "subscribed", channels: again.channels, id: again.id, recovered: true,
                  replayed: 3, positions: [pos(0, 15)]});
  for (const o of [12, 14, 15]) c.ws().receive(event("odin.token.A.trade", 0, o));
  c.ws().receive(event("odin.token.A.trade", 0, 16));
  assert.deepEqual(c.got(sub), [11, 12, 14, 15, 16]);
  assert.deepEqual(c.got(plain), []);
  assert.deepEqual(sub.results, [{recovered: true, reason: null, replayed: 3, snapshot: 0}]);
});

test("a gap that cannot be recovered surfaces recovered: false; live goes on", () => {
  const c = connected([["odin.token.A.trade", {}]]);
  const [sub] = c.subs;
  liveAt(c, [pos(0, 10)]);
  c.ws().receive({type: "gap", reason: "too_old", streams: {[`${T}:0:ep1`]: pos(0, 10)}});
  const [again] = c.ws().take();
  c.ws().receive(event("odin.token.A.trade", 0, 40));
  c.ws().receive({type: "subscribed", channels: again.channels, id: again.id, recovered: false,
                  reason: "too_old", positions: [pos(0, 40)]});
  c.ws().receive(event("odin.token.A.trade", 0, 41));
  assert.deepEqual(c.got(sub), [40, 41]);
  assert.deepEqual(sub.results, [{recovered: false, reason: "too_old", replayed: 0, snapshot: 0}]);
  c.ws().receive({type: "gap", reason: "undecodable", streams: {[`${T}:0:ep1`]: null}});
  assert.deepEqual(c.ws().take(), []);
  assert.equal(sub.results.at(-1).recovered, false);
  c.ws().receive({type: "gap", reason: "conflated", streams: {[`${T}:0:ep1`]: pos(0, 41)}});
  assert.deepEqual([c.ws().take(), sub.results.length], [[], 2]);
});

test("an undecodable gap is told in place to its channel, never recovered, never twice", () => {
  const c = connected([["odin.token.A.trade", {}], ["odin.token.B.*", {}]]);
  const [sub, other] = c.subs;
  liveAt(c, [pos(0, 10)]);
  c.ws().take();
  const told = [];
  sub.on("gap", (g) => told.push([c.got(sub).length, g]));
  other.on("gap", (g) => told.push(["other", g]));
  const hole = {type: "gap", reason: "undecodable", detail: "invalid_json",
                channel: "odin.token.A.trade", streams: {[`${T}:0:ep1`]: pos(0, 12)}};
  c.ws().receive(event("odin.token.A.trade", 0, 11));
  c.ws().receive(hole);
  c.ws().receive(event("odin.token.A.trade", 0, 13));
  c.ws().receive(hole);                                    // replayed again: already seen
  assert.deepEqual(c.ws().take(), []);                     // no resubscription: nothing to recover
  assert.deepEqual(c.got(sub), [11, 13]);
  assert.deepEqual(told, [[1, {reason: "undecodable", detail: "invalid_json",
                               channel: "odin.token.A.trade", position: pos(0, 12)}]]);
  assert.deepEqual(sub.positions, [pos(0, 13)]);
});
