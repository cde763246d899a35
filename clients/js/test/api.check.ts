// Type-checked by tsc (make test), never run: the API as the README shows
// it must compile against odinws.d.ts, and misuse must not. Each misuse
// below is marked as an expected error, so the check fails if it ever
// compiles (a declaration gone loose, e.g. to `any`).

import {
  OdinWS, backoffDelay, matches, parsePosition, tokenExpiry,
  type OdinEvent, type Recovery, type StateChange, type Subscription,
} from "../odinws.js";

interface Price { price: number }

declare function show(value: number): void;
declare function refetchState(): void;

const client = new OdinWS("wss://odin.example/ws", {
  getToken: async () => "jwt",
  transports: ["websocket", "sse"],
  positionsRefresh: 60,
  refreshMargin: 30, backoffBase: 0.5, backoffCap: 30, stableAfter: 10,
  maxChannelsPerMessage: 100,
});
const prices: Subscription = client.subscribe<Price>(
  "odin.token.*.price", { snapshot: true }, (e: OdinEvent<Price>) => show(e.data.price));
prices.on("recovered", ({ recovered }: Recovery) => recovered || refetchState());
prices.on("state", ({ state, error }) => {
  const s: "pending" | "subscribed" | "failed" | "unsubscribed" = state;
  void s;
  void error?.code;
});
const trades = client.subscribe("odin.token.ABC.trade", (e) => {
  const channel: string = e.channel;
  const data: unknown = e.data;
  void channel; void data;
});
const stored: string[] = trades.positions;
client.subscribe("odin.token.ABC.trade", { recover: true, since: stored });
const off = client.on("state", ({ state, retryIn }: StateChange) => {
  if (state === "disconnected" && retryIn != null) void (retryIn + 1);
});
off();
client.on("error", ({ code, message }) => void `${code}: ${message}`);
client.connect();
const rtt: Promise<number> = client.ping();
void rtt;
const delay: number = backoffDelay(3, 0.5, 30);
const matched: boolean = matches("odin.token.*.trade", "odin.token.A.trade");
const exp: number | null = tokenExpiry("a.b.c");
const part: string | undefined = parsePosition("t:0:e:5")?.partition;
void delay; void matched; void exp; void part;
prices.unsubscribe();
client.close();

// Misuse the declarations must refuse.
// @ts-expect-error: the URL is required
new OdinWS();
// @ts-expect-error: no such option
new OdinWS("wss://x/ws", { tokn: "jwt" });
// @ts-expect-error: a subscription's events are "state" and "recovered"
prices.on("message", () => {});
// @ts-expect-error: recover is a boolean
client.subscribe("odin.token.A.trade", { recover: "yes" });
// @ts-expect-error: positions are read-only
trades.positions = [];
// @ts-expect-error: the round trip is a number
const wrong: Promise<string> = client.ping();
void wrong;
