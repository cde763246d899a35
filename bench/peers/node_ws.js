// Node `ws` peer for the fan-out benchmark: a plain ws server with a built-in
// publisher. stdin "rate R B" makes it generate R events/s in batches of B
// (B events in one timer callback = one event-loop turn); each event is one
// Buffer sent with ws.send() to every open client (the usual ws broadcast).
// "rate 0 1" stops; "rate R B N" puts events on tokens 1000 + seq % N (16 by
// default). Clients that subscribe to tokens (the random-tokens cells) are kept
// in an index token -> Set of clients and get only their tokens' events.
// Prints "ready" once listening.
'use strict';
const path = require('path');
const WebSocket = require(path.join(process.env.BENCH_WORK, 'node_modules', 'ws'));
const port = Number(process.argv[2]);
const wss = new WebSocket.WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false,
                                            clientTracking: true, backlog: 4096 });
// Wall-clock microseconds: Date.now() is whole ms and performance.timeOrigin
// can be off by ms, so anchor performance.now() on the instant Date.now() ticks.
const origin = (() => {
  const d0 = Date.now();
  let d;
  while ((d = Date.now()) === d0);
  return d - performance.now();
})();
let seq = 0, tokens = 16;
const byToken = new Map();
wss.on('connection', (ws) => {
  const mine = [];
  ws.on('message', (data) => {
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    if (!msg || msg.type !== 'subscribe' || !Array.isArray(msg.channels)) return;
    for (const c of msg.channels) {
      const tok = Number(String(c).split('.')[2]);
      if (!byToken.has(tok)) byToken.set(tok, new Set());
      byToken.get(tok).add(ws);
      mine.push(tok);
    }
  });
  ws.on('close', () => { for (const tok of mine) byToken.get(tok).delete(ws); });
});
function event() {
  const us = Math.round((origin + performance.now()) * 1000);
  const tok = 1000 + (seq % tokens);
  const body = `{"type":"event","channel":"odin.token.${tok}.trade","data":{"t_us":${us},` +
    `"seq":${seq},"token":"${tok}","price":0.00001234,"amount":1234.5678,"side":"buy",` +
    `"user":"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"},"ts":${Math.floor(us / 1000)}}`;
  seq++;
  return Buffer.from(body);
}
function broadcast(buf, tok) {
  const to = byToken.size ? (byToken.get(tok) || []) : wss.clients;
  for (const ws of to) if (ws.readyState === 1) ws.send(buf, { binary: false });
}
let rate = 0, batch = 1, t0 = 0, sent = 0, timer = null, gen = 0;
function tick(myGen) {
  if (myGen !== gen || rate <= 0) return;
  const due = Math.floor(((performance.now() - t0) / 1000) * rate / batch) + 1;  // first at t0
  if (due - sent > rate / batch) sent = due - 1;  // more than 1 s behind: drop the backlog
  if (sent < due) {
    for (let i = 0; i < batch; i++) {
      const tok = 1000 + (seq % tokens);
      broadcast(event(), tok);
    }
    sent++;
  }
  // Another batch already due goes out in the next turn (setImmediate), so a
  // batch is never merged with the next one into one turn.
  const next = t0 + sent * 1000 * batch / rate;
  const wait = next - performance.now();
  if (wait <= 0) setImmediate(tick, myGen); else setTimeout(tick, Math.max(0, wait - 0.3), myGen);
}
let buf = '';
process.stdin.on('data', (d) => {
  buf += d;
  let nl;
  while ((nl = buf.indexOf('\n')) >= 0) {
    const [cmd, r, b, n] = buf.slice(0, nl).trim().split(/\s+/);
    buf = buf.slice(nl + 1);
    if (cmd === 'rate') {
      rate = Number(r); batch = Number(b) || 1; t0 = performance.now(); sent = 0; gen++;
      if (n) tokens = Math.max(1, Number(n));
      if (rate > 0) tick(gen);
    }
  }
});
process.stdin.on('end', () => process.exit(0));
wss.on('listening', () => console.log('ready'));
