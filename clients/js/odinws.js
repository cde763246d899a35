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
  transports: ["websocket"],
  backoffBase: 0.5,           // seconds: the reconnect contract's base and cap
  backoffCap: 30,
  stableAfter: 10,            // seconds up after which the backoff starts over
  refreshMargin: 30,          // seconds before the token's exp to refresh it
  maxChannelsPerMessage: 100, // the server's limits.max_channels_per_message default
  rateLimitedRetry: 1,        // seconds before a rate-limited subscribe is sent again
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

// Handler exceptions must not break the client; rethrow them where the
// runtime reports uncaught errors.
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
  ws.onclose = (ev) => on.close({code: ev.code || ABNORMAL, text: ev.reason || ""});
  ws.onerror = () => {};  // a close event follows
  return {
    send: (msg) => ws.send(JSON.stringify(msg)),
    close(code, text) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.close(code, text);
    },
  };
}

/** Transport factories by name, in the order a client may try them. */
export const TRANSPORTS = {websocket: webSocketTransport};

// ---- subscriptions ------------------------------------------------------------

const SET_STATE = Symbol("setState");
const DELIVER = Symbol("deliver");

/**
 * One `client.subscribe()` call. `state`: "pending" (waiting for the
 * server; again after each reconnect), "subscribed", "failed" (the server
 * refused it: `error` says why; it is not retried) or "unsubscribed".
 */
export class Subscription extends Emitter {
  #onEvent;
  #remove;

  constructor(channel, options, onEvent, remove) {
    super();
    this.channel = channel;
    this.options = options;
    this.state = "pending";
    this.error = null;
    this.#onEvent = onEvent;
    this.#remove = remove;
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
    if (!this.#onEvent) return;
    try { this.#onEvent(event); } catch (e) { report(e); }
  }
}

// ---- the client ----------------------------------------------------------------

/**
 * A connection to an odinws node that stays up: reconnects with backoff,
 * subscribes again, refreshes its token. Emits "state" ({state, reason,
 * retryIn}) and "error" ({code, message, request}).
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
  #nextId = 0;
  #pending = new Map();   // request id -> {type, channels, resolve, reject}
  #channels = new Map();  // channel or pattern -> {segments, subs: Set<Subscription>}

  /**
   * @param url  ws:// or wss:// URL of the node's WebSocket path.
   * @param options  {token, getToken, transports, backoffBase, backoffCap,
   *   stableAfter, refreshMargin, maxChannelsPerMessage, rateLimitedRetry,
   *   env: {WebSocket, setTimeout, clearTimeout, now, random}} (env: for
   *   tests and runtimes without those globals).
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
   * it ({type: "event", channel, data, ts, …}). `options` is reserved.
   */
  subscribe(channel, options = {}, onEvent = undefined) {
    if (typeof options === "function") [options, onEvent] = [{}, options];
    if (typeof channel !== "string" || !channel) {
      throw new TypeError("odinws: channel must be a non-empty string");
    }
    const sub = new Subscription(channel, options, onEvent, (s) => this.#unsubscribe(s));
    const entry = this.#channels.get(channel);
    if (entry) {
      const held = [...entry.subs].some((s) => s.state === "subscribed");
      entry.subs.add(sub);
      if (held) sub[SET_STATE]("subscribed");
      return sub;
    }
    this.#channels.set(channel, {segments: channel.split("."), subs: new Set([sub])});
    if (this.state === "connected") this.#request("subscribe", [channel]);
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
    const on = {
      open: () => gen === this.#gen && this.#opened(),
      message: (msg) => gen === this.#gen && this.#received(msg),
      close: (why) => gen === this.#gen && this.#lost(why),
    };
    try {
      const transport = TRANSPORTS[name](this.url, {token: this.#token, env: this.#env}, on);
      if (gen === this.#gen) this.#transport = transport;  // unless it closed already
    } catch (error) {
      this.#lost({code: ABNORMAL, text: String(error?.message ?? error)});
    }
  }

  #opened() {
    this.#openedAt = this.#env.now();
    this.#setState("connected");
    // Subscriptions belong to a connection: ask for all of them again.
    if (this.#channels.size) this.#request("subscribe", [...this.#channels.keys()]);
    this.#scheduleRefresh(tokenExpiry(this.#token));
  }

  // Forget the current connection (its callbacks are ignored from now on).
  #drop() {
    this.#gen++;
    this.#transport = null;
    this.#env.clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    for (const req of this.#pending.values()) req.reject?.(new Error("odinws: connection closed"));
    this.#pending.clear();
    for (const entry of this.#channels.values()) {
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
    if (opened === null) {
      // Never opened: the next attempt tries the next transport.
      this.#transportIndex = (this.#transportIndex + 1) % this.#options.transports.length;
    }
    const reason = {code, text};
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
    const delay = Math.min(MAX_TIMER_MS, (retryAfter > 0 ? retryAfter * 1000 : 0)
      + backoffDelay(this.#attempt++, backoffBase, backoffCap, this.#env.random));
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

  // -- messages

  #send(msg, request = {}) {
    const id = ++this.#nextId;
    this.#pending.set(id, {type: msg.type, ...request});
    this.#transport.send({...msg, id});
  }

  #request(type, channels) {
    const size = this.#options.maxChannelsPerMessage;
    for (let i = 0; i < channels.length; i += size) {
      const chunk = channels.slice(i, i + size);
      this.#send({type, channels: chunk}, {channels: chunk});
    }
  }

  #received(msg) {
    if (msg.type === "event") return this.#dispatch(msg);
    const req = this.#pending.get(msg.id);
    this.#pending.delete(msg.id);
    switch (msg.type) {
      case "subscribed":
        for (const channel of msg.channels || []) {
          for (const sub of this.#channels.get(channel)?.subs || []) sub[SET_STATE]("subscribed");
        }
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

  #dispatch(event) {
    if (typeof event.channel !== "string") return;
    const segments = event.channel.split(".");
    for (const entry of this.#channels.values()) {
      if (!segmentsMatch(entry.segments, segments)) continue;
      for (const sub of [...entry.subs]) sub[DELIVER](event);
    }
  }

  #failed(msg, req) {
    const error = {code: msg.code, message: msg.message};
    if (req?.type === "subscribe") {
      const live = req.channels.filter((c) => this.#channels.has(c));
      if (msg.code === "rate_limited") {
        // The server dropped the request: send it again, later.
        const gen = this.#gen;
        this.#env.setTimeout(() => {
          const still = live.filter((c) => this.#channels.has(c));
          if (gen === this.#gen && still.length) this.#request("subscribe", still);
        }, this.#options.rateLimitedRetry * 1000);
        return this.emit("error", {...error, request: {type: req.type, channels: req.channels}});
      }
      if (live.length > 1) {
        // All or nothing: one bad channel in a batch (a resubscribe) must not
        // sink the others. Ask for each alone; each refusal is reported then.
        for (const channel of live) this.#request("subscribe", [channel]);
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
    if (this.state === "connected") this.#request("unsubscribe", [sub.channel]);
  }
}
