// The client on Node 20's own WebSocket (undici, behind
// --experimental-websocket), against real local TCP servers that refuse the
// upgrade: that WebSocket fires `error` and never `close` there, and the
// client must still go on to its next attempt (docs/protocol.md,
// "Reconnect contract"). The client runs in a child node with the flag; the
// test waits for its attempts with a deadline.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";

const LIBRARY = new URL("../odinws.js", import.meta.url).href;
const DEADLINE_MS = 20_000;

// The child: the library with the runtime's global WebSocket (no env
// override), short backoff; one JSON line per state change.
const CHILD = `
if (typeof WebSocket !== "function") { console.error("no global WebSocket"); process.exit(3); }
const { OdinWS } = await import(process.env.ODINWS_LIBRARY);
const client = new OdinWS(process.env.ODINWS_URL,
  {transports: ["websocket"], backoffBase: 0.01, backoffCap: 0.05, positionsRefresh: 0});
client.on("state", (s) => console.log(JSON.stringify(s)));
client.connect();
`;

// Run the child against `url` until `done(states)` holds; its states.
function runClient(url, done) {
  const child = spawn(process.execPath, ["--experimental-websocket", "--no-warnings",
                                         "--input-type=module", "-e", CHILD],
                      {env: {...process.env, ODINWS_LIBRARY: LIBRARY, ODINWS_URL: url},
                       stdio: ["ignore", "pipe", "pipe"]});
  const states = [];
  let stderr = "";
  let buffered = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`no reconnect within ${DEADLINE_MS} ms; states: ${JSON.stringify(states)}`));
    }, DEADLINE_MS);
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      buffered += chunk;
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) if (line) states.push(JSON.parse(line));
      if (done(states)) {
        clearTimeout(timer);
        child.kill();
        resolve(states);
      }
    });
    child.stderr.setEncoding("utf8").on("data", (chunk) => { stderr += chunk; });
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (!done(states)) reject(new Error(`client exited (${code}): ${stderr}`));
    });
  });
}

// A server that handles each connection's request with `answer(socket)`; counts them.
async function server(answer) {
  const srv = net.createServer((socket) => {
    srv.requests++;
    socket.on("error", () => {});
    socket.once("data", () => answer(socket));
  });
  srv.requests = 0;
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return srv;
}

const attempts = (states) => states.filter((s) => s.state === "connecting").length;

// Each failure is one disconnected state with a retry, then the next attempt.
function assertRetried(states) {
  const closes = states.filter((s) => s.state === "disconnected");
  assert.ok(closes.length >= 2, JSON.stringify(states));
  for (const close of closes) {
    assert.equal(close.reason.code, 1006);
    assert.equal(typeof close.retryIn, "number");
  }
  assert.deepEqual(states.slice(0, 4).map((s) => s.state),
                   ["connecting", "disconnected", "connecting", "disconnected"]);
}

for (const [name, answer] of [
  ["an HTTP 503", (s) => s.end("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n"
                               + "Content-Length: 0\r\nConnection: close\r\n\r\n")],
  ["a closed connection", (s) => s.destroy()],
]) {
  test(`Node's WebSocket: ${name} instead of 101 leads to a retry, and another`, async () => {
    const srv = await server(answer);
    try {
      const states = await runClient(`ws://127.0.0.1:${srv.address().port}/ws`,
                                     (s) => attempts(s) >= 3);
      assertRetried(states);
      assert.ok(srv.requests >= 2, `the server saw ${srv.requests} upgrade requests`);
    } finally {
      srv.close();
    }
  });
}

test("Node's WebSocket: a refused connection leads to a retry, and another", async () => {
  // A port that was just free: nothing listens there.
  const srv = await server(() => {});
  const {port} = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  const states = await runClient(`ws://127.0.0.1:${port}/ws`, (s) => attempts(s) >= 3);
  assertRetried(states);
});
