// odinws JavaScript client: one dependency-free ES module for browsers (and
// any runtime with a WebSocket). docs/protocol.md, "JavaScript client", has
// the API; its "Reconnect contract" is what the reconnect logic implements.
//
//   import { OdinWS } from "https://odin.example/odinws.js";
//   const client = new OdinWS("wss://odin.example/ws", { token, getToken });
//   client.subscribe("odin.token.*.trade", {}, (event) => console.log(event.data));
//   client.connect();
//
// This file (clients/js/odinws.js, the npm package's) is the only copy:
// odin_ws/static/odinws.js is a symlink to it (npm packs no symlinks; the
// wheel, the sdist and the Debian build copy the file behind one), and every
// node serves it at /odinws.js.

/** Settings a client starts with; every one can be given to the constructor. */
export const DEFAULTS = Object.freeze({
  transports: ["websocket", "sse"],
  backoffBase: 0.5,           // seconds: the reconnect contract's base and cap
  backoffCap: 30,
  stableAfter: 10,            // seconds up after which the backoff starts over
  refreshMargin: 30,          // seconds before the token's exp to refresh it
  maxChannelsPerMessage: 100, // the server's limits.max_channels_per_message default
  rateLimitedRetry: 1,        // seconds before a rate-limited subscribe is sent again
  positionsRefresh: 60,       // seconds between asking for the current positions (0: never)
});

// Retrying after these fails the same way: the client has to change first.
const FINAL_CODES = new Set([1007, 1008, 1009]);
const NORMAL = 1000, ABNORMAL = 1006, TOKEN_EXPIRED = 4001;
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Delay in ms before reconnect attempt `attempt` (0, 1, …): full jitter. */
export function backoffDelay(attempt, base = DEFAULTS.backoffBase, cap = DEFAULTS.backoffCap,
                             random = Math.random) {
  return random() * Math.min(cap, base * 2 ** attempt) * 1000;
}

/** Does channel `channel` match subscription `pattern` (a lone `*` segment matches any)? */
export function matches(pattern, channel) {
  return segmentsMatch(pattern.split("."), channel.split("."));
}

function segmentsMatch(pattern, channel) {
  if (pattern.length !== channel.length) return false;
  for (let i = 0; i < pattern.length; i++) {
    if (pattern[i] !== "*" && pattern[i] !== channel[i]) return false;
  }
  return true;
}

/** The `exp` claim (seconds) of a JWT, read without verifying it; null if none. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")),
                                  (c) => c.charCodeAt(0));
    const exp = JSON.parse(new TextDecoder().decode(bytes)).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

// ---- positions ------------------------------------------------------------------
//
// Every event carries "pos": "<topic>:<partition>:<epoch>:<offset>". Clients
// treat it as opaque, except for what recovery needs: everything before the
// last ":" is the event's stream, the offset after it grows within a stream.
// The library keeps, per subscription, the last position seen per partition
// (a partition's stream changes only when its topic is recreated: the new
// epoch's positions replace the old ones).

/** `{partition, stream, offset}` of a position (offset as a decimal string), or null. */
export function parsePosition(pos) {
  if (typeof pos !== "string") return null;
  const cut = pos.lastIndexOf(":");
  const offset = pos.slice(cut + 1);
  if (cut <= 0 || !/^\d{1,30}$/.test(offset)) return null;
  const stream = pos.slice(0, cut);
  const epoch = stream.lastIndexOf(":");
  return {partition: epoch > 0 ? stream.slice(0, epoch) : stream, stream,
          offset: offset.replace(/^0+(?=\d)/, "")};
}

// Decimal strings without leading zeros: exact beyond 2^53.
function offsetAfter(a, b) {
  return a.length !== b.length ? a.length > b.length : a > b;
}

// Is `pos` after `than`? True unless both are of one stream and it is not.
function newerThan(pos, than) {
  const p = parsePosition(pos), q = parsePosition(than);
  return !p || !q || q.stream !== p.stream || offsetAfter(p.offset, q.offset);
}

/**
 * Is position `pos` newer than the last one `last` (a Map partition ->
 * position) holds for its partition? True when `last` has none, when it is
 * of another stream (a recreated topic), or when either is not a position.
 */
export function isNewer(last, pos) {
  const p = parsePosition(pos);
  return !p || newerThan(pos, last.get(p.partition));
}

// Order of positions: by partition, then offset.
function comparePositions(a, b) {
  const p = parsePosition(a), q = parsePosition(b);
  if (!p || !q) return 0;
  if (p.partition !== q.partition) return p.partition < q.partition ? -1 : 1;
  if (p.offset === q.offset) return 0;
  return offsetAfter(p.offset, q.offset) ? 1 : -1;
}

// partition -> position of a list of positions (the later of two for one partition).
function positionMap(list) {
  const map = new Map();
  for (const pos of Array.isArray(list) ? list : []) advance(map, pos);
  return map;
}

// Is `pos` one a replay brings: after its since, up to its tops (a gap's
// recovery before its ack has none yet: everything after its since)?
function inReplay(replay, pos) {
  const p = parsePosition(pos);
  if (!p) return false;
  const from = replay.from.get(p.partition);
  if (from === undefined || !newerThan(pos, from)) return false;
  if (!replay.until) return true;
  const until = replay.until.get(p.partition);
  return until !== undefined && !newerThan(pos, until);
}

// What a subscription keeps of its positions `last` after `recovered:
// false`, given the node's positions `tops`: those past the node's position
// of their stream, or of a partition the node has none of (`ahead`,
// `unknown_partition`: a node behind the one the client came from), so that
// the live events it sends which the client has already are dropped. The
// others are of no more use: the ack's positions take their place.
function keptAfterGap(last, tops) {
  const kept = new Map();
  for (const [partition, pos] of last) {
    const top = tops.get(partition);
    if (top === undefined || !newerThan(top, pos)) kept.set(partition, pos);
  }
  return kept;
}

// Record `pos` in `last` if it is newer.
function advance(last, pos) {
  const p = parsePosition(pos);
  if (p && isNewer(last, pos)) last.set(p.partition, pos);
}

// Record `pos` in `last` unless `last` holds an older one of its stream
// (a recovery must start there).
function lowerTo(last, pos) {
  const p = parsePosition(pos);
  const have = p && last.get(p.partition);
  if (p && (have === undefined || newerThan(have, pos))) last.set(p.partition, pos);
}

// Handler exceptions must not break the client; rethrow them where the
// runtime reports uncaught errors.
/**
 * RFC 7386 JSON Merge Patch: what `patch` makes of `target` (the server's
 * `delta` events, docs/protocol.md "Deltas"). A null member removes it, an
 * object merges into the member recursively, anything else replaces it.
 */
export function applyMergePatch(target, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const result = target !== null && typeof target === "object" && !Array.isArray(target)
    ? {...target} : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = applyMergePatch(result[key], value);
  }
  return result;
}

/**
 * A compact delta (docs/protocol.md, "Compact deltas"), `[sid, dpos, dts,
 * patch]` or `[sid, dpos, dts, patch, adds]`, made the whole event it stands
 * for against `last`, its stream's previous event ({channel, data, ts, pos}):
 * the data merge-patched and `adds` added to their members, `ts` and the
 * offset of `pos` advanced (as a BigInt: offsets may pass 2**53).
 */
export function applyCompactDelta(last, frame) {
  const [sid, dpos, dts, patch, adds] = frame;
  const data = applyMergePatch(last.data, patch);
  if (adds) for (const [key, step] of Object.entries(adds)) data[key] = last.data[key] + step;
  const cut = last.pos.lastIndexOf(":");
  const offset = BigInt(last.pos.slice(cut + 1)) + BigInt(dpos);
  return {type: "event", channel: last.channel, data, ts: last.ts + dts,
          pos: `${last.pos.slice(0, cut)}:${offset}`, sid};
}

function isCompactDelta(frame) {
  return frame.length >= 4 && frame.length <= 5
    && frame.slice(0, 3).every(Number.isInteger)
    && frame.slice(3).every((x) => x !== null && typeof x === "object" && !Array.isArray(x));
}

// The subscription options the server applies (docs/protocol.md,
// "Subscription options"), as the subscribe message carries them. Deltas:
// `true` asks for the smallest format the library applies ("compact").
function serverOptions(options) {
  const out = {};
  if (options.delta) out.delta = options.delta === true ? "compact" : options.delta;
  if (options.maxRate !== undefined && options.maxRate !== null) out.max_rate = options.maxRate;
  if (options.filter !== undefined && options.filter !== null) out.filter = options.filter;
  return out;
}

function report(error) {
  queueMicrotask(() => { throw error; });
}

class Emitter {
  #handlers = new Map();

  /** Call `fn(value)` on each `event`; returns a function that stops it. */
  on(event, fn) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#handlers.get(event)?.delete(fn);
  }

  emit(event, value) {
    for (const fn of [...(this.#handlers.get(event) || [])]) {
      try { fn(value); } catch (e) { report(e); }
    }
  }
}

// ---- transports -------------------------------------------------------------
//
// A transport carries protocol messages (plain objects, docs/protocol.md) both
// ways over one connection. It is made by a factory
//   factory(url, {token, env}, {open(), message(msg), close({code, text, retryAfter})})
// returning {send(msg), close(code, text)}; `close` is reported once, also
// when the connection never opened (code 1006), and not after close() was
// called. `retryAfter` (seconds) is a server hint the transport may see.
// The client only speaks messages, so a transport without client->server
// frames (SSE) can map subscribe/unsubscribe onto its own requests and answer
// with the same acks.

function webSocketTransport(url, {token, env}, on) {
  const WS = env.WebSocket || globalThis.WebSocket;
  // The token travels as a subprotocol: the only way a browser can send one.
  const ws = token ? new WS(url, ["odinws", "bearer." + token]) : new WS(url);
  ws.onopen = () => on.open();
  ws.onmessage = (m) => {
    if (typeof m.data !== "string") return;
    let msg;
    try { msg = JSON.parse(m.data); } catch { return; }
    if (msg && typeof msg === "object") on.message(msg);
  };
  let done = false;  // close reported (or asked for): once per socket
  const finish = (why) => {
    if (done) return;
    done = true;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    on.close(why);
  };
  ws.onclose = (ev) => finish({code: ev.code || ABNORMAL, text: ev.reason || ""});
  // A browser follows an error with a close, in the same task. Node 20's
  // WebSocket (undici, --experimental-websocket) fires only `error` after a
  // refused connection or a non-101 answer and stays CONNECTING for good:
  // an error with no close by the next task counts as a close (1006).
  ws.onerror = () => env.setTimeout(() => finish({code: ABNORMAL, text: "connection failed"}), 0);
  return {
    send: (msg) => ws.send(JSON.stringify(msg)),
    close(code, text) {
      done = true;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close(code, text);
    },
  };
}

// Server-Sent Events (docs/protocol.md, "Server-Sent Events"): one
// EventSource per subscription list, fixed for its life; the client sends
// nothing, so a change of subscriptions (or of token) opens a new stream
// with the new list and recovers from the positions seen (`since`), and the
// transport answers subscribe/unsubscribe/ping/refresh itself. The stream's
// parameters come from the client: `plan()` gives {channels, since,
// snapshot, id} and registers the request the stream's `subscribed` answers.
// EventSource cannot set headers: the token travels as `?token=`.
//
// An EventSource retries on its own after a network error; this transport
// closes it instead and reports 1006, so the client's backoff, state events
// and recovery from its own positions apply as for WebSocket.

/** The SSE URL of a node's WebSocket URL: same host, http(s), path …/ws -> …/sse. */
export function sseUrlOf(url) {
  const u = new URL(url);
  u.protocol = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol;
  u.pathname = /\/ws$/.test(u.pathname) ? u.pathname.replace(/\/ws$/, "/sse") : "/sse";
  u.search = "";
  return u.toString();
}

/**
 * The URL of one SSE stream: `channels`, `since`, `snapshot`, the stream's
 * options (`max_rate`, `filter` as JSON; docs/protocol.md, "Subscription
 * options") and `token` in the query.
 */
export function sseStreamUrl(base, {channels, since, snapshot, options}, token) {
  const u = new URL(base);
  u.searchParams.set("channels", channels.join(","));
  if (since?.length) u.searchParams.set("since", since.join(","));
  if (snapshot) u.searchParams.set("snapshot", "1");
  if (options?.max_rate !== undefined) u.searchParams.set("max_rate", String(options.max_rate));
  if (options?.filter !== undefined) u.searchParams.set("filter", JSON.stringify(options.filter));
  if (token) u.searchParams.set("token", token);
  return u.toString();
}

/**
 * The positions of an SSE event id (the shard's vector
 * `<topic>~<epoch>~<partition>:<offset>,…;<topic2>~…`); [] if it is none.
 */
export function vectorPositions(id) {
  const out = [];
  if (typeof id !== "string" || !id) return out;
  for (const group of id.split(";")) {
    const [topic, epoch, parts, extra] = group.split("~");
    if (!topic || !epoch || parts === undefined || extra !== undefined) return [];
    for (const part of parts.split(",")) {
      const m = /^(\d+):(\d+)$/.exec(part);
      if (!m) return [];
      out.push(`${topic}:${m[1]}:${epoch}:${m[2]}`);
    }
  }
  return out;
}

function sseTransport(url, {token, env, options, plan}, on) {
  const ES = env.EventSource || globalThis.EventSource;
  if (!ES) throw new Error("no EventSource in this runtime");
  const base = options.sseUrl || sseUrlOf(url);
  let es = null;
  let opened = false;
  let closed = false;
  let reopenQueued = false;
  let refreshing = [];       // refresh ids answered when the new stream is acknowledged

  const stop = () => {
    if (!es) return;
    es.onopen = es.onmessage = es.onerror = null;
    es.close();
    es = null;
  };
  const fail = (why) => {
    if (closed) return;
    closed = true;
    stop();
    on.close(why);
  };
  const parse = (m) => {
    try {
      const msg = JSON.parse(m.data);
      return msg && typeof msg === "object" ? msg : null;
    } catch {
      return null;
    }
  };
  const open = () => {
    reopenQueued = false;
    if (closed) return;
    stop();
    const p = plan();
    if (!p) return;  // the client moved on to another connection
    if (!p.channels.length) {
      // Nothing to stream: no request to make (a subscribe opens one).
      if (!opened) { opened = true; on.open(); }
      for (const id of refreshing.splice(0)) {
        on.message({type: "refreshed", expires: tokenExpiry(token), id});
      }
      return;
    }
    const stream = es = new ES(sseStreamUrl(base, p, token));
    stream.onopen = () => {
      if (!opened) { opened = true; on.open(); }
    };
    stream.addEventListener("subscribed", (m) => {
      if (stream !== es) return;
      const msg = parse(m);
      if (!msg) return;
      on.message({...msg, id: p.id}, {vector: m.lastEventId});
      for (const id of refreshing.splice(0)) {
        on.message({type: "refreshed", expires: tokenExpiry(token), id});
      }
    });
    stream.onmessage = (m) => {
      const msg = stream === es && parse(m);
      if (msg) on.message(msg, {vector: m.lastEventId});
    };
    // Named gaps: an undecodable record's (with an id past it: nothing to
    // recover); a dropped or stale one (no id: later ids pass the lost
    // events) makes the client open a new stream from the positions it
    // names (its `#gap`).
    stream.addEventListener("gap", (m) => {
      const msg = stream === es && parse(m);
      if (msg) on.message(msg, msg.reason === "undecodable" ? {vector: m.lastEventId} : undefined);
    });
    stream.addEventListener("close", (m) => {
      if (stream !== es) return;
      const msg = parse(m) || {};
      fail({code: Number(msg.code) || ABNORMAL, text: String(msg.reason || "")});
    });
    // A refused request (any non-200: 400, 401, 403, 503) or a dropped
    // stream: the browser shows neither status nor body.
    stream.onerror = () => stream === es && fail({code: ABNORMAL, text: "event stream failed"});
  };
  const reopen = () => {
    if (reopenQueued || closed) return;
    reopenQueued = true;  // one new stream for all of this turn's changes
    Promise.resolve().then(open);
  };
  Promise.resolve().then(open);
  return {
    unidirectional: true,
    // The client calls this when its subscriptions change.
    update: reopen,
    send(msg) {
      if (msg.type === "ping") {
        // Nothing goes to the server: the round trip is not measured.
        Promise.resolve().then(() => !closed && on.message({type: "pong", id: msg.id}));
      } else if (msg.type === "refresh") {
        token = msg.token;
        refreshing.push(msg.id);
        reopen();
      }
    },
    close() {
      closed = true;
      stop();
    },
  };
}

/** Transport factories by name, in the order a client may try them. */
export const TRANSPORTS = {websocket: webSocketTransport, sse: sseTransport};

// ---- subscriptions ------------------------------------------------------------

const SET_STATE = Symbol("setState");
const DELIVER = Symbol("deliver");
const RECOVERED = Symbol("recovered");
// Marks an undecodable record's gap, handed along like an event at its position.
const HOLE = Symbol("hole");

/**
 * One `client.subscribe()` call. `state`: "pending" (waiting for the
 * server; again after each reconnect), "subscribed", "failed" (the server
 * refused it: `error` says why; it is not retried) or "unsubscribed".
 * Emits "state" ({state, error}) and, after each resubscription that tried
 * to recover, "recovered" ({recovered, reason, replayed, snapshot}).
 */
export class Subscription extends Emitter {
  #onEvent;
  #remove;
  #positions;

  constructor(channel, options, onEvent, remove, positions) {
    super();
    this.channel = channel;
    this.options = options;
    this.state = "pending";
    this.error = null;
    this.#onEvent = onEvent;
    this.#remove = remove;
    this.#positions = positions;
  }

  /**
   * The last position seen per partition (sorted): what the next recovery
   * sends as `since`. Store it to recover across page loads
   * (`subscribe(channel, {since})`).
   */
  get positions() {
    return this.#positions();
  }

  /** Stop receiving events; the server subscription ends with the last one on it. */
  unsubscribe() {
    this.#remove(this);
  }

  [SET_STATE](state, error = null) {
    if (this.state === state || this.state === "unsubscribed" || this.state === "failed") return;
    this.state = state;
    this.error = error;
    this.emit("state", {state, error});
  }

  [DELIVER](event) {
    if (event[HOLE]) {
      this.emit("gap", {reason: event.reason, detail: event.detail ?? null,
                        channel: event.channel, position: event.pos});
      return;
    }
    if (!this.#onEvent) return;
    try { this.#onEvent(event); } catch (e) { report(e); }
  }

  [RECOVERED](result) {
    if (this.state !== "unsubscribed" && this.state !== "failed") this.emit("recovered", result);
  }
}

// A subscribe refused for its positions: start over from the current ones.
const POSITION_ERRORS = new Set(["invalid_position", "unknown_position", "too_many_positions"]);

// ---- the client ----------------------------------------------------------------

/**
 * A connection to an odinws node that stays up: reconnects with backoff,
 * subscribes again (recovering what it missed), refreshes its token. Emits
 * "state" ({state, reason, retryIn}), "error" ({code, message, request}) and
 * "fallback" ({from, to, reason, message}) when a transport did not open and
 * the next one in `transports` (Server-Sent Events after WebSocket) is tried.
 */
export class OdinWS extends Emitter {
  #options;
  #env;
  #token;
  #getToken;
  #needToken = false;     // a 4001 came: ask getToken before the next attempt
  #wanted = false;        // connect() was called and no close() or final close since
  #gen = 0;               // connection generation: callbacks of older ones are ignored
  #transport = null;
  #transportIndex = 0;
  #openedAt = null;
  #attempt = 0;
  #retryTimer = null;
  #refreshTimer = null;
  #positionsTimer = null;
  #nextId = 0;
  #planId = null;
  // The next stream recovers from a gap (its "recovered" is news).
  #gapStream = false;
  #pending = new Map();   // request id -> {type, channels, since, snapshotFor, resolve, reject}
  // channel or pattern -> {segments, subs: Set<Subscription>, live, last: Map partition -> pos}
  #channels = new Map();
  #replays = new Set();   // replays under way: {entries, from, until, left, buffer}
  #snapshots = [];        // snapshots under way, in ack order: {subs, left}
  #eventsSeen = 0;        // events received (tops with none after them count at once)
  #bases = new Map();     // channel -> the data of its last event (what a delta applies to)
  #streams = new Map();   // compact stream id -> its last event (what a compact delta applies to)
  #deltas = 0;            // channels held with delta: true

  /**
   * @param url  ws:// or wss:// URL of the node's WebSocket path.
   * @param options  {token, getToken, transports, sseUrl, backoffBase,
   *   backoffCap, stableAfter, refreshMargin, maxChannelsPerMessage,
   *   rateLimitedRetry, positionsRefresh, env: {WebSocket, EventSource,
   *   setTimeout, clearTimeout, now, random}} (env: for tests and runtimes
   *   without those globals).
   */
  constructor(url, options = {}) {
    super();
    const {token, getToken, env, ...settings} = options;
    this.url = url;
    this.#options = {...DEFAULTS, ...settings};
    for (const name of this.#options.transports) {
      if (!TRANSPORTS[name]) throw new TypeError(`odinws: unknown transport "${name}"`);
    }
    if (!this.#options.transports.length) throw new TypeError("odinws: no transports");
    this.#env = {
      setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
      clearTimeout: (t) => globalThis.clearTimeout(t),
      now: () => Date.now(),
      random: Math.random,
      ...env,
    };
    this.#token = token || null;
    this.#getToken = getToken || null;
    /** "connecting", "connected" or "disconnected". */
    this.state = "disconnected";
    /** The transport of the current (or last) connection: "websocket" or "sse". */
    this.transport = null;
  }

  /** Open the connection (and keep it open until close()). */
  connect() {
    this.#wanted = true;
    if (this.state !== "disconnected") return;
    this.#cancelRetry();
    this.#open();
  }

  /** Close the connection and stop reconnecting; subscriptions are kept for connect(). */
  close() {
    this.#wanted = false;
    this.#cancelRetry();
    const transport = this.#transport;
    this.#drop();
    transport?.close(NORMAL, "closed by the client");
    if (this.state !== "disconnected") {
      this.#setState("disconnected", {code: NORMAL, text: "closed by the client"}, null);
    }
  }

  /**
   * Receive the events of `channel` (a channel or a pattern with `*`
   * segments): `onEvent(event)` gets each event message as the server sent
   * it ({type: "event", channel, data, ts, pos, …}).
   *
   * options: `recover` (default true: after a reconnect, get the events
   * missed meanwhile; "recovered" says when that was impossible),
   * `snapshot` (first the latest event of each matching channel, marked
   * `snapshot: true`; again after a reconnect that could not recover),
   * `since` (positions to recover from, e.g. a stored `sub.positions`);
   * and the server-side options (docs/protocol.md, "Subscription
   * options"): `delta` (true: the server may send deltas, which the
   * client applies: `onEvent` always gets whole `data`), `maxRate` (at
   * most so many events a second per channel, ending on the latest) and
   * `filter` (only events whose data passes it). Every subscription of
   * one channel (pattern) must ask for the same server-side options.
   */
  subscribe(channel, options = {}, onEvent = undefined) {
    if (typeof options === "function") [options, onEvent] = [{}, options];
    if (typeof channel !== "string" || !channel) {
      throw new TypeError("odinws: channel must be a non-empty string");
    }
    options = options || {};
    let entry = this.#channels.get(channel);
    const server = serverOptions(options);
    if (entry && JSON.stringify(entry.server) !== JSON.stringify(server)) {
      throw new TypeError(`odinws: ${channel} is subscribed with other delta/maxRate/filter options`);
    }
    const positions = () => this.#sinceOf(this.#channels.get(channel) || entry);
    const sub = new Subscription(channel, options, onEvent, (s) => this.#unsubscribe(s), positions);
    if (entry) {
      entry.subs.add(sub);
      if (entry.live) sub[SET_STATE]("subscribed");
      // The server holds the channel already: ask it for this one's snapshot.
      if (options.snapshot && this.state === "connected" && !this.#transport.unidirectional) {
        this.#send({type: "subscribe", channels: [channel], snapshot: true, ...entry.server},
                   {channels: [channel], snapshotFor: [sub]});
      }
      return sub;
    }
    entry = {channel, segments: channel.split("."), subs: new Set([sub]), live: false,
             last: new Map(), tops: null, topsSeen: -1, replay: null, server};
    if (server.delta) this.#deltas++;
    for (const pos of Array.isArray(options.since) ? options.since : []) advance(entry.last, pos);
    this.#channels.set(channel, entry);
    if (this.#transport?.unidirectional) this.#transport.update();
    else if (this.state === "connected") this.#subscribeChannels([channel]);
    else if (this.#wanted && this.state === "disconnected" && !this.#retryTimer) this.#open();
    return sub;
  }

  /** Application-level ping: a Promise of the round trip in ms. */
  ping() {
    return new Promise((resolve, reject) => {
      if (this.state !== "connected") return reject(new Error("odinws: not connected"));
      const sent = this.#env.now();
      this.#send({type: "ping"}, {resolve: () => resolve(this.#env.now() - sent), reject});
    });
  }

  // -- connection lifecycle

  #open() {
    const gen = ++this.#gen;
    this.#setState("connecting");
    const expired = (tokenExpiry(this.#token) ?? Infinity) * 1000 <= this.#env.now();
    if (this.#getToken && (this.#needToken || !this.#token || expired)) {
      this.#fetchToken().then(
        (token) => {
          if (gen !== this.#gen) return;
          this.#token = token;
          this.#needToken = false;
          this.#start(gen);
        },
        (error) => {
          if (gen !== this.#gen) return;
          const message = String(error?.message ?? error);
          this.emit("error", {code: "get_token_failed", message});
          this.#lost({code: ABNORMAL, text: `getToken failed: ${message}`});
        });
    } else {
      this.#start(gen);
    }
  }

  #start(gen) {
    const name = this.#options.transports[this.#transportIndex];
    this.transport = name;
    const on = {
      open: () => gen === this.#gen && this.#opened(),
      message: (msg, meta) => gen === this.#gen && this.#received(msg, meta),
      close: (why) => gen === this.#gen && this.#lost(why),
    };
    try {
      const transport = TRANSPORTS[name](this.url, {token: this.#token, env: this.#env,
        options: this.#options, plan: () => gen === this.#gen && this.#plan()}, on);
      if (gen === this.#gen) this.#transport = transport;  // unless it closed already
    } catch (error) {
      if (gen === this.#gen) this.#lost({code: ABNORMAL, text: String(error?.message ?? error)});
    }
  }

  #opened() {
    this.#openedAt = this.#env.now();
    this.#setState("connected");
    this.#scheduleRefresh(tokenExpiry(this.#token));
    // A unidirectional transport's stream carries the subscriptions already.
    if (this.#transport?.unidirectional) return;
    // Subscriptions belong to a connection: ask for all of them again.
    if (this.#channels.size) this.#subscribeChannels([...this.#channels.keys()]);
    this.#schedulePositions();
  }

  // Forget the current connection (its callbacks are ignored from now on).
  #drop() {
    this.#gen++;
    this.#transport = null;
    for (const timer of [this.#refreshTimer, this.#positionsTimer]) this.#env.clearTimeout(timer);
    this.#refreshTimer = this.#positionsTimer = null;
    for (const req of this.#pending.values()) req.reject?.(new Error("odinws: connection closed"));
    this.#pending.clear();
    this.#replays.clear();
    this.#snapshots = [];
    this.#bases.clear();    // a new connection starts every channel with a whole event
    this.#streams.clear();
    for (const entry of this.#channels.values()) {
      entry.live = false;
      entry.replay = null;
      entry.topsSeen = -1;  // tops of a lost connection only fill in since
      for (const sub of entry.subs) sub[SET_STATE]("pending");
    }
  }

  #lost({code, text = "", retryAfter = 0}) {
    const opened = this.#openedAt;
    this.#openedAt = null;
    this.#drop();
    if (opened !== null && this.#env.now() - opened >= this.#options.stableAfter * 1000) {
      this.#attempt = 0;
    }
    const reason = {code, text};
    if (opened === null) {
      // Never opened: the next attempt tries the next transport.
      const {transports} = this.#options;
      const from = transports[this.#transportIndex];
      this.#transportIndex = (this.#transportIndex + 1) % transports.length;
      if (this.#transportIndex > 0 && this.#wanted) {
        // Said, not silent: a proxy refusing upgrades, a blocked port, a
        // refused handshake (browsers tell no status: 1006) would otherwise
        // go unnoticed behind a working stream.
        const to = transports[this.#transportIndex];
        this.emit("fallback", {from, to, reason, message: `odinws: ${from} did not open `
          + `(close ${code}${text ? `: ${text}` : ""}); trying ${to}`});
      }
    }
    let retry = this.#wanted;
    if (FINAL_CODES.has(code) || (code === TOKEN_EXPIRED && !this.#getToken)) {
      this.#wanted = retry = false;
    } else if (code === TOKEN_EXPIRED) {
      this.#needToken = true;
    } else if (code === NORMAL && this.#channels.size === 0) {
      retry = false;  // the server's idle close: come back on the next subscribe()
    }
    if (!retry) return this.#setState("disconnected", reason, null);
    const {backoffBase, backoffCap} = this.#options;
    // A transport that fell back to the next one tries it at once.
    const fallback = opened === null && this.#transportIndex !== 0;
    const delay = Math.min(MAX_TIMER_MS, (retryAfter > 0 ? retryAfter * 1000 : 0)
      + (fallback ? 0 : backoffDelay(this.#attempt++, backoffBase, backoffCap, this.#env.random)));
    this.#retryTimer = this.#env.setTimeout(() => {
      this.#retryTimer = null;
      this.#open();
    }, delay);
    this.#setState("disconnected", reason, delay);
  }

  #cancelRetry() {
    this.#env.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
  }

  #setState(state, reason = undefined, retryIn = undefined) {
    this.state = state;
    const change = {state};
    if (reason !== undefined) change.reason = reason;
    if (retryIn !== undefined) change.retryIn = retryIn;
    this.emit("state", change);
  }

  // -- tokens

  #fetchToken() {
    return Promise.resolve().then(() => this.#getToken()).then((token) => {
      if (typeof token !== "string" || !token) throw new Error("getToken gave no token");
      return token;
    });
  }

  // Refresh `refreshMargin` seconds before `exp`, or halfway through what is
  // left of the token's life when that is sooner (short-lived tokens).
  #scheduleRefresh(exp) {
    this.#env.clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (!this.#getToken || exp === null || exp === undefined) return;
    const left = exp * 1000 - this.#env.now();
    const delay = Math.max(0, Math.min(MAX_TIMER_MS,
      Math.max(left - this.#options.refreshMargin * 1000, left / 2)));
    const gen = this.#gen;
    this.#refreshTimer = this.#env.setTimeout(() => {
      this.#refreshTimer = null;
      this.#fetchToken().then(
        (token) => {
          // Used for later connections once the server took it.
          if (gen === this.#gen) this.#send({type: "refresh", token}, {token});
          else this.#token = token;
        },
        (error) => this.emit("error", {code: "get_token_failed",
                                       message: String(error?.message ?? error)}));
    }, delay);
  }

  // -- positions
  //
  // A subscription's positions advance only with the events it receives; a
  // partition with no event for it keeps the position of its first
  // subscribe, which the server's history forgets after history.max_age
  // (300 s by default): recovering from it would then fail (too_old) though
  // nothing was missed. Every `positionsRefresh` seconds the library asks
  // for the current positions (a subscribe with `since: []` of channels it
  // holds: nothing replayed, nothing subscribed twice).
  #schedulePositions() {
    this.#env.clearTimeout(this.#positionsTimer);
    this.#positionsTimer = null;
    const every = this.#options.positionsRefresh;
    if (!(every > 0)) return;
    this.#positionsTimer = this.#env.setTimeout(() => {
      this.#positionsTimer = null;
      const held = [...this.#channels].filter(([, e]) => e.live && this.#recovers(e));
      this.#request("subscribe", held.map(([c]) => c), {since: []}, {refresh: true});
      this.#schedulePositions();
    }, Math.min(MAX_TIMER_MS, every * 1000));
  }

  // What a unidirectional transport's next stream asks for: every channel;
  // the oldest position per partition of the subscriptions that recover
  // (each drops what it saw already); a snapshot if any asked for one (the
  // server sends it only where it did not recover).
  #plan() {
    this.#pending.delete(this.#planId);
    const channels = [...this.#channels.keys()];
    const oldest = new Map();
    const snapshotFor = [];
    for (const entry of this.#channels.values()) {
      for (const sub of entry.subs) if (sub.options.snapshot) snapshotFor.push(sub);
      if (!this.#recovers(entry)) continue;
      for (const pos of this.#sinceOf(entry)) {
        const partition = parsePosition(pos)?.partition;
        const have = oldest.get(partition);
        if (partition && (!have || newerThan(have, pos))) oldest.set(partition, pos);
      }
    }
    const since = oldest.size ? [...oldest.values()].sort() : undefined;
    const options = this.#streamOptions();
    const id = this.#planId = ++this.#nextId;
    // A new stream while connected changes subscriptions: its recovery is
    // news only when it fails (or when it answers a gap).
    this.#pending.set(id, {type: "subscribe", channels, since, snapshotFor, ordered: true,
                           quiet: this.state === "connected" && !this.#gapStream});
    this.#gapStream = false;
    return {channels, since, snapshot: snapshotFor.length > 0, options, id};
  }

  // The options of a stream: one set for all its channels (a query has one
  // `max_rate`, one `filter`). `delta` is not asked for (a stream has no
  // deltas: its events come whole). Channels asking for different options
  // cannot share a stream: an "error" says so and the stream asks for none
  // (its subscriptions get every event of their channels).
  #streamOptions() {
    const sets = new Set();
    for (const entry of this.#channels.values()) {
      const rest = {...entry.server};
      delete rest.delta;
      sets.add(JSON.stringify(rest));
    }
    if (sets.size === 1) return JSON.parse([...sets][0]);
    if (sets.size > 1) {
      this.emit("error", {code: "options_conflict",
                          message: "over Server-Sent Events every channel of the stream takes " +
                                   "the same maxRate and filter; the stream asks for none"});
    }
    return {};
  }

  #recovers(entry) {
    return [...entry.subs].some((s) => s.options.recover !== false);
  }

  // -- messages

  #send(msg, request = {}) {
    const id = ++this.#nextId;
    this.#pending.set(id, {type: msg.type, ...request});
    this.#transport.send({...msg, id});
  }

  #request(type, channels, fields = {}, request = {}) {
    if (type === "subscribe") {
      // The server holds each channel with its options: every subscribe of
      // it says them again (else it is refused as options_conflict).
      const groups = new Map();
      for (const channel of channels) {
        const server = this.#channels.get(channel)?.server || {};
        const key = JSON.stringify(server);
        if (!groups.has(key)) groups.set(key, {server, channels: []});
        groups.get(key).channels.push(channel);
      }
      if (groups.size > 1 || Object.keys(groups.values().next().value?.server || {}).length) {
        for (const {server, channels: same} of groups.values()) {
          this.#requestChunks(type, same, {...fields, ...server}, request);
        }
        return;
      }
    }
    this.#requestChunks(type, channels, fields, request);
  }

  #requestChunks(type, channels, fields, request) {
    const size = this.#options.maxChannelsPerMessage;
    for (let i = 0; i < channels.length; i += size) {
      const chunk = channels.slice(i, i + size);
      const snapshotFor = fields.snapshot
        ? chunk.flatMap((c) => [...this.#channels.get(c).subs].filter((s) => s.options.snapshot))
        : undefined;
      this.#send({type, channels: chunk, ...fields},
                 {...request, channels: chunk, since: fields.since, snapshotFor});
    }
  }

  // Subscribe `channels` on this connection: channels asking the same (no
  // recovery; recovery from the same positions; snapshot or not) share a
  // message. A first subscribe that recovers asks for the current positions
  // (`since: []`); with a snapshot too, that comes in a second message (a
  // subscribe with `since` gets no snapshot when it recovers).
  #subscribeChannels(channels) {
    const groups = [new Map(), new Map()];
    const add = (phase, fields, channel) => {
      const key = JSON.stringify(fields);
      if (!groups[phase].has(key)) groups[phase].set(key, {fields, channels: []});
      groups[phase].get(key).channels.push(channel);
    };
    for (const channel of channels) {
      const entry = this.#channels.get(channel);
      if (!entry) continue;
      const snapshot = [...entry.subs].some((s) => s.options.snapshot) ? {snapshot: true} : {};
      if (!this.#recovers(entry)) {
        add(0, snapshot, channel);
      } else if (this.#sinceOf(entry).length) {
        add(0, {since: this.#sinceOf(entry), ...snapshot}, channel);
      } else if (snapshot.snapshot) {
        add(0, snapshot, channel);
        add(1, {since: []}, channel);
      } else {
        add(0, {since: []}, channel);
      }
    }
    for (const phase of groups) {
      for (const {fields, channels: chunk} of phase.values()) this.#request("subscribe", chunk, fields);
    }
  }

  #received(msg, meta) {
    if (Array.isArray(msg)) {
      const whole = this.#compact(msg);
      if (whole) this.#event(whole);
    } else if (msg.type === "event") {
      const whole = this.#whole(msg);
      if (whole) this.#event(whole);
    } else if (msg.type === "gap") {
      this.#gap(msg);
    } else {
      this.#reply(msg);
    }
    if (meta?.vector) this.#mergeVector(meta.vector);
  }

  // A delta event made whole against the last data of its channel; whole
  // events of channels held with deltas are kept as the next base. The
  // server sends a channel's first event on a connection whole, and whole
  // again after anything this connection missed (docs/protocol.md, "Deltas").
  #whole(msg) {
    if (msg.delta !== undefined) {
      if (!this.#bases.has(msg.channel)) {
        this.emit("error", {code: "delta_without_base",
                            message: `a delta of ${msg.channel} before any whole event`});
        return null;
      }
      const {delta, ...rest} = msg;
      msg = {...rest, data: applyMergePatch(this.#bases.get(msg.channel), delta)};
    }
    if (this.#deltas > 0 && typeof msg.channel === "string") this.#bases.set(msg.channel, msg.data);
    if (Number.isInteger(msg.sid) && Number.isInteger(msg.ts) && typeof msg.pos === "string") {
      this.#streams.set(msg.sid, {channel: msg.channel, data: msg.data, ts: msg.ts, pos: msg.pos});
    }
    return msg;
  }

  // A compact delta made whole against its stream's previous event; the
  // stream starts with a whole event carrying its `sid`.
  #compact(frame) {
    const last = isCompactDelta(frame) ? this.#streams.get(frame[0]) : undefined;
    if (!last) {
      this.emit("error", {code: "delta_without_base",
                          message: `a compact delta ${JSON.stringify(frame).slice(0, 80)} of no known stream`});
      return null;
    }
    const msg = applyCompactDelta(last, frame);
    this.#streams.set(frame[0], {channel: msg.channel, data: msg.data, ts: msg.ts, pos: msg.pos});
    return msg;
  }

  // An SSE id is the shard's position vector after that message: the
  // stream has had every event up to it.
  #mergeVector(vector) {
    const tops = vectorPositions(vector);
    if (!tops.length) return;
    for (const entry of this.#channels.values()) {
      if (entry.live && this.#recovers(entry)) for (const pos of tops) advance(entry.last, pos);
    }
  }

  // The node gave up on events of some streams (docs/protocol.md, "Slow
  // clients: catch-up and gaps"); each goes on live. The recovering
  // subscriptions resubscribe from the positions given, and hold those
  // streams' events from here on (a replay without tops until the ack), so
  // the recovered events and the live ones are handed over in order, once.
  // Conflation skips by design: nothing to recover. A stream without a
  // position cannot be recovered: "recovered" {recovered: false} at once.
  // An undecodable record cannot be recovered either (docs/protocol.md,
  // "Records that cannot be decoded"): it sits at its own position, so it
  // is handed along as an event is (held by a replay, dropped when seen),
  // to its channel's subscriptions as their "gap"; its position counts as
  // seen, so no recovery asks for it again (and none loops on it).
  #gap(msg) {
    this.emit("gap", {reason: msg.reason, streams: msg.streams});
    if (msg.reason === "conflated") return;
    if (msg.reason === "undecodable") {
      const named = msg.streams && typeof msg.streams === "object" ? Object.values(msg.streams) : [];
      if (named.length === 1 && typeof msg.channel === "string" && parsePosition(named[0])) {
        this.#event({...msg, pos: named[0], [HOLE]: true});
        return;
      }
    }
    const named = msg.streams && typeof msg.streams === "object" ? Object.values(msg.streams) : [];
    const since = named.filter((p) => parsePosition(p) !== null);
    const entries = [...this.#channels.values()].filter((e) => e.live && this.#recovers(e));
    if (since.length < named.length || !since.length) {
      const result = {recovered: false, reason: String(msg.reason || "unknown"), replayed: 0, snapshot: 0};
      for (const entry of this.#channels.values()) {
        if (entry.live) for (const sub of entry.subs) sub[RECOVERED](result);
      }
    }
    if (!since.length || !entries.length) return;
    if (this.#transport?.unidirectional) {
      // A stream takes no request: a new stream recovers from the gap's
      // positions (docs/protocol.md, "Server-Sent Events"). Nothing of
      // those streams came after them on this one, so what comes again is
      // dropped as seen, and its ack is the gap's "recovered", as over WebSocket.
      for (const entry of entries) for (const pos of since) lowerTo(entry.last, pos);
      this.#gapStream = true;
      this.#transport.update();
      return;
    }
    const replay = {entries: new Set(entries), from: positionMap(since), until: null,
                    left: Infinity, buffer: new Map()};
    for (const entry of entries) {
      if (entry.replay) this.#endReplay(entry.replay);
      entry.replay = replay;
    }
    this.#replays.add(replay);
    this.#request("subscribe", entries.map((e) => e.channel), {since: since.sort()}, {gap: replay});
  }

  // The ack of a gap's recovery: recovered, the held events are the
  // replay's first ones (complete once `replayed` are here, or an event
  // past the tops came); not, they are handed over now.
  #gapAcked(msg, replay) {
    if (!this.#replays.has(replay)) return;
    const result = {recovered: msg.recovered, reason: msg.reason ?? null,
                    replayed: Number(msg.replayed) || 0, snapshot: 0};
    for (const entry of replay.entries) for (const sub of entry.subs) sub[RECOVERED](result);
    if (!msg.recovered) return this.#endReplay(replay);
    replay.until = positionMap(msg.positions);
    replay.left = result.replayed;
    const held = [...replay.buffer.keys()].filter((pos) => inReplay(replay, pos)).length;
    if (held >= replay.left) this.#endReplay(replay);
  }

  #reply(msg) {
    const req = this.#pending.get(msg.id);
    this.#pending.delete(msg.id);
    switch (msg.type) {
      case "subscribed":
        this.#acked(msg, req);
        break;
      case "pong":
        req?.resolve?.();
        break;
      case "refreshed":
        if (req?.token) this.#token = req.token;
        // Channels the new token no longer grants were dropped by the server.
        if (msg.unsubscribed?.length) {
          const error = {code: "forbidden", message: "no longer granted by the refreshed token"};
          this.#refused(msg.unsubscribed, error);
          this.emit("error", {...error, request: {type: "refresh", channels: msg.unsubscribed}});
        }
        this.#scheduleRefresh(msg.expires);
        break;
      case "error":
        this.#failed(msg, req);
        break;
    }
  }

  // The ack of a subscribe: the channels are live from here on; with
  // `since`, it says whether what follows recovers everything and lists the
  // current position of every partition (the tops).
  //
  // Over WebSocket the server writes acks ahead of events it queued before
  // them (a previous subscribe's replay, live events), so neither an ack's
  // tops nor the events right after it can be taken at face value:
  // * tops count once an event past them arrived (everything queued before
  //   the ack is then here), or at the next ack if no event came between;
  // * a replay's events (all that match in (since, tops]) may be preceded by
  //   copies of some of them that another subscription's request brought:
  //   they are collected, and handed over in order once all `replayed`
  //   distinct ones are here (or an event past the tops shows they are).
  // Server-Sent Events keep one order: ids (the shard's vector) say it all.
  #acked(msg, req) {
    if (req?.gap && typeof msg.recovered === "boolean") {
      for (const channel of msg.channels || []) {
        for (const sub of this.#channels.get(channel)?.subs || []) sub[SET_STATE]("subscribed");
      }
      return this.#gapAcked(msg, req.gap);
    }
    const entries = [];
    for (const channel of msg.channels || []) {
      const entry = this.#channels.get(channel);
      if (!entry) continue;
      entries.push(entry);
      entry.live = true;
      for (const sub of entry.subs) sub[SET_STATE]("subscribed");
    }
    if (req?.since && typeof msg.recovered === "boolean") {
      const tops = positionMap(msg.positions);
      if (!msg.recovered) for (const entry of entries) entry.last = keptAfterGap(entry.last, tops);
      if (!req.ordered) {
        for (const entry of entries) this.#pendTops(entry, tops);
        const left = Number(msg.replayed) || 0;
        if (msg.recovered && left > 0) {
          const replay = {entries: new Set(entries), from: positionMap(req.since), until: tops,
                          left, buffer: new Map()};
          for (const entry of entries) entry.replay = replay;
          this.#replays.add(replay);
        }
      }
      if (req.since.length && (!req.quiet || !msg.recovered)) {
        const result = {recovered: msg.recovered, reason: msg.reason ?? null,
                        replayed: Number(msg.replayed) || 0, snapshot: Number(msg.snapshot) || 0};
        for (const entry of entries) for (const sub of entry.subs) sub[RECOVERED](result);
      }
    }
    if (msg.snapshot > 0 && req?.snapshotFor?.length) {
      this.#snapshots.push({subs: new Set(req.snapshotFor), left: Number(msg.snapshot)});
    }
  }

  // Tops waiting for an event past them; older ones count at once if no
  // event at all arrived since they came (nothing was in flight).
  #pendTops(entry, tops) {
    if (entry.tops && entry.topsSeen === this.#eventsSeen) this.#confirmTops(entry);
    const merged = new Map(entry.tops || []);
    for (const pos of tops.values()) advance(merged, pos);
    entry.tops = merged.size ? merged : null;
    entry.topsSeen = this.#eventsSeen;
  }

  #confirmTops(entry) {
    for (const pos of entry.tops.values()) advance(entry.last, pos);
    entry.tops = null;
  }

  // The positions the next recovery of `entry` sends: the last seen per
  // partition, and the tops of partitions it has seen nothing of.
  #sinceOf(entry) {
    const since = new Map(entry.last);
    for (const [partition, pos] of entry.tops || []) if (!since.has(partition)) since.set(partition, pos);
    return [...since.values()].sort();
  }

  #event(event) {
    this.#eventsSeen++;
    const live = event.snapshot !== true && parsePosition(event.pos);
    if (live) {
      // Past a replay's tops: the replay (queued before) is all here.
      for (const replay of this.#replays) {
        const until = replay.until?.get(live.partition);
        if (until !== undefined && newerThan(event.pos, until)) this.#endReplay(replay);
      }
    }
    this.#dispatch(event);
    if (live) {
      for (const entry of this.#channels.values()) {
        if (entry.tops && isNewer(entry.tops, event.pos)) this.#confirmTops(entry);
      }
    }
  }

  // To every live subscription whose pattern matches it, unless it saw this
  // position or a later one of the partition already (a replay asked by
  // another of the client's subscriptions, or a stray duplicate). A snapshot
  // event goes only to the subscriptions that asked for that snapshot.
  #dispatch(event) {
    if (typeof event.channel !== "string") return;
    const segments = event.channel.split(".");
    const snapshot = event.snapshot === true ? this.#snapshots[0] : null;
    if (event.snapshot === true && !snapshot) return;
    let filled = null;
    for (const entry of this.#channels.values()) {
      if (!entry.live || !segmentsMatch(entry.segments, segments)) continue;
      if (snapshot) {
        const subs = [...entry.subs].filter((s) => snapshot.subs.has(s));
        if (subs.length) advance(entry.last, event.pos);
        for (const sub of subs) sub[DELIVER](event);
        continue;
      }
      const replay = entry.replay;
      if (replay && inReplay(replay, event.pos)) {
        if (!replay.buffer.has(event.pos)) replay.buffer.set(event.pos, event);
        (filled ||= new Set()).add(replay);
        continue;
      }
      this.#deliver(entry, event);
    }
    if (snapshot && --snapshot.left <= 0) this.#snapshots.shift();
    for (const replay of filled || []) if (replay.buffer.size >= replay.left) this.#endReplay(replay);
  }

  #deliver(entry, event) {
    if (event.pos !== undefined) {
      if (!isNewer(entry.last, event.pos)) return;
      advance(entry.last, event.pos);
    }
    for (const sub of [...entry.subs]) sub[DELIVER](event);
  }

  // A replay is complete: its events, in position order, to its subscriptions.
  #endReplay(replay) {
    if (!this.#replays.delete(replay)) return;
    for (const entry of replay.entries) if (entry.replay === replay) entry.replay = null;
    const events = [...replay.buffer.values()].sort((a, b) => comparePositions(a.pos, b.pos));
    for (const event of events) {
      const segments = event.channel.split(".");
      for (const entry of replay.entries) {
        if (entry.live && this.#channels.get(entry.channel) === entry
            && segmentsMatch(entry.segments, segments)) this.#deliver(entry, event);
      }
    }
  }

  #failed(msg, req) {
    const error = {code: msg.code, message: msg.message};
    if (req?.type === "subscribe") {
      const live = req.channels.filter((c) => this.#channels.has(c));
      if (req.refresh) return;  // asking for positions: the next time will do
      if (msg.code === "rate_limited") {
        // The server dropped the request: send it again, later.
        const gen = this.#gen;
        this.#env.setTimeout(() => {
          const still = live.filter((c) => this.#channels.has(c));
          if (gen === this.#gen && still.length) this.#subscribeChannels(still);
        }, this.#options.rateLimitedRetry * 1000);
        return this.emit("error", {...error, request: {type: req.type, channels: req.channels}});
      }
      if (req.since?.length && POSITION_ERRORS.has(msg.code)) {
        // Positions this server cannot use (another cluster, a topic gone):
        // not recovered; start again from the current positions.
        const result = {recovered: false, reason: msg.code, replayed: 0, snapshot: 0};
        for (const channel of live) {
          const entry = this.#channels.get(channel);
          entry.last = new Map();
          entry.tops = null;
          for (const sub of entry.subs) sub[RECOVERED](result);
        }
        this.#subscribeChannels(live);
        return;
      }
      if (live.length > 1) {
        // All or nothing: one bad channel in a batch (a resubscribe) must not
        // sink the others. Ask for each alone; each refusal is reported then.
        for (const channel of live) this.#subscribeChannels([channel]);
        return;
      }
      this.#refused(live, error);
    }
    req?.reject?.(Object.assign(new Error(`odinws: ${msg.code}: ${msg.message}`), error));
    this.emit("error", req ? {...error, request: {type: req.type, channels: req.channels}} : error);
  }

  // The server will not hold these channels: their subscriptions fail.
  #refused(channels, error) {
    for (const channel of channels) {
      const entry = this.#channels.get(channel);
      if (!entry) continue;
      this.#channels.delete(channel);
      for (const sub of entry.subs) sub[SET_STATE]("failed", error);
    }
  }

  #unsubscribe(sub) {
    const entry = this.#channels.get(sub.channel);
    if (!entry || !entry.subs.delete(sub)) return;
    sub[SET_STATE]("unsubscribed");
    if (entry.subs.size) return;
    this.#channels.delete(sub.channel);
    if (entry.server.delta) this.#deltas--;
    if (this.#transport?.unidirectional) this.#transport.update();
    else if (this.state === "connected") this.#request("unsubscribe", [sub.channel]);
  }
}
