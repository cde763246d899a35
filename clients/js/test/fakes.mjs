// Fakes for the client's unit tests: a clock whose timers run only when a
// test advances it, and a WebSocket the test plays the server of.
import { OdinWS } from "../odinws.js";

/** setTimeout/clearTimeout/now on a clock that moves only in advance(). */
export class FakeClock {
  constructor(now = 1_700_000_000_000) {
    this.time = now;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, {fn, at: this.time + Math.max(0, ms || 0)});
      return id;
    };
    this.clearTimeout = (id) => { this.timers.delete(id); };
    this.now = () => this.time;
  }

  /** Delays (ms from now) of the timers waiting, soonest first. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }

  /** Move time forward by `ms`, running each timer that comes due, in order. */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (next === null || t.at < next[1].at)) next = [id, t];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.time = next[1].at;
      next[1].fn();
    }
    this.time = end;
  }
}

/** A WebSocket whose server side the test plays; every instance is kept in `sockets`. */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }

    send(text) {
      if (this.closedWith) throw new Error("send after close");
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closedWith = {code, reason};
    }

    // -- the server's side
    open() { this.onopen?.({}); }
    receive(msg) { this.onmessage?.({data: typeof msg === "string" ? msg : JSON.stringify(msg)}); }
    serverClose(code, reason = "") { this.onclose?.({code, reason}); }
    /** An `error` event: a browser follows it with a close, Node 20's WebSocket does not. */
    fail() { this.onerror?.({type: "error"}); }
    /** Messages the client sent since the last call. */
    take() { return this.sent.splice(0); }
    /** Answer every subscribe sent since the last take() with `subscribed`. */
    ackSubscribes() {
      for (const m of this.take()) {
        if (m.type === "subscribe") this.receive({type: "subscribed", channels: m.channels, id: m.id});
      }
    }
  }
  FakeWebSocket.sockets = sockets;
  FakeWebSocket.last = () => sockets[sockets.length - 1];
  return FakeWebSocket;
}

/** A client on a fake clock and fake WebSocket; `random` defaults to the top of the range. */
export function makeClient(options = {}, random = () => 0.999999) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocketClass();
  const states = [];
  const errors = [];
  // WebSocket only and no positions refresh timer unless a test says otherwise.
  const client = new OdinWS("ws://node.test/ws",
    {transports: ["websocket"], positionsRefresh: 0, ...options, env: {WebSocket, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout,
                       now: clock.now, random}});
  client.on("state", (s) => states.push(s));
  client.on("error", (e) => errors.push(e));
  return {client, clock, WebSocket, states, errors, ws: () => WebSocket.last()};
}

/** Let pending promise callbacks run (getToken is asynchronous). */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** An unsigned JWT with the given claims (the client never verifies). */
export function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({alg: "HS256", typ: "JWT"})}.${b64(claims)}.c2ln`;
}
