// Type declarations of odinws.js, the odinws JavaScript client.

/** An event message as the server sends it (docs/protocol.md, "event"). */
export interface OdinEvent<T = unknown> {
  type: "event";
  /** The concrete channel, e.g. "odin.token.ABC.trade" (never a pattern). */
  channel: string;
  /** The event's JSON value as produced upstream. */
  data: T;
  /** Event time, milliseconds since the Unix epoch. */
  ts: number;
  /** The event's position "<topic>:<partition>:<epoch>:<offset>" (opaque; for recovery). */
  pos?: string;
  /** True on the events of a snapshot (the latest event of a channel at subscribe time). */
  snapshot?: true;
  /** Fields a later server adds. */
  [field: string]: unknown;
}

export type ConnectionState = "connecting" | "connected" | "disconnected";

export interface CloseReason {
  /** The WebSocket close code (1006 when the connection failed or dropped). */
  code: number;
  text: string;
}

export interface StateChange {
  state: ConnectionState;
  /** With "disconnected": why. */
  reason?: CloseReason;
  /** With "disconnected": ms until the next attempt, or null when the client will not retry. */
  retryIn?: number | null;
}

export interface Fallback {
  /** The transport that did not open, and the one tried next. */
  from: string;
  to: string;
  /** Why it did not open (browsers report a refused WebSocket handshake as 1006). */
  reason: CloseReason;
  /** The same in one line, e.g. "odinws: websocket did not open (close 1006); trying sse". */
  message: string;
}

export interface OdinError {
  /** The server's error code (docs/protocol.md), or "get_token_failed". */
  code: string;
  message: string;
  /** The request the server refused, when the error answers one. */
  request?: { type: string; channels?: string[] };
}

export type SubscriptionState = "pending" | "subscribed" | "failed" | "unsubscribed";

export interface TestEnv {
  WebSocket?: { new (url: string, protocols?: string[]): WebSocket };
  EventSource?: { new (url: string): EventSource };
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (timer: unknown) => void;
  now?: () => number;
  random?: () => number;
}

export interface OdinWSOptions {
  /** The initial JWT (sent as the subprotocol "bearer.<JWT>" with "odinws"). */
  token?: string;
  /** Gives a fresh JWT: called before the token's exp and after a 4001 close. */
  getToken?: () => Promise<string> | string;
  /**
   * Transports in the order to try them; default ["websocket", "sse"]: when
   * one fails to open, the next is tried at once.
   */
  transports?: string[];
  /** URL of the node's Server-Sent Events path; default the WebSocket URL with http(s) and …/sse. */
  sseUrl?: string;
  /**
   * Seconds between asking the server for the current positions (keeps the
   * positions of partitions without events for a subscription inside the
   * server's history window); default 60, 0: never. WebSocket only.
   */
  positionsRefresh?: number;
  /** Reconnect backoff base and cap in seconds; default 0.5 and 30. */
  backoffBase?: number;
  backoffCap?: number;
  /** Seconds a connection must stay up for the backoff to start over; default 10. */
  stableAfter?: number;
  /** Seconds before exp to refresh the token (or halfway, if sooner); default 30. */
  refreshMargin?: number;
  /** The server's limits.max_channels_per_message; default 100. */
  maxChannelsPerMessage?: number;
  /** Seconds before a rate-limited subscribe is sent again; default 1. */
  rateLimitedRetry?: number;
  /** Replacements for globals, for tests and other runtimes. */
  env?: TestEnv;
}

export interface SubscribeOptions {
  /**
   * After a reconnect, get the events missed meanwhile (default true); a
   * "recovered" event says whether that was possible.
   */
  recover?: boolean;
  /**
   * First the latest event of each matching channel (marked snapshot: true);
   * again after a reconnect that could not recover.
   */
  snapshot?: boolean;
  /** Positions to recover from (e.g. a stored `sub.positions`). */
  since?: string[];
  /**
   * Let the server send deltas of each channel's events; the client applies
   * them, so handlers still get whole events (`data`, `ts`, `pos`). `true`:
   * the smallest format ("compact": no envelope, integers as increments);
   * "merge-patch": JSON Merge Patch in the event's envelope.
   */
  delta?: boolean | "compact" | "merge-patch";
  /**
   * At most this many events a second per channel (0.1 to 100), always
   * ending on the channel's latest event.
   */
  maxRate?: number;
  /** Only the events whose `data` passes this filter (docs/protocol.md, "Filters"). */
  filter?: object;
}

/** What a resubscription's recovery did (Subscription "recovered" event). */
export interface Recovery {
  /** true: every event missed was replayed (before any live one); false: the app should refetch. */
  recovered: boolean;
  /**
   * Why not: too_old, not_loaded, ahead, other_epoch, unknown_partition, too_large, or
   * the error code of positions the server refused (invalid_position,
   * unknown_position, too_many_positions), or a gap notice's reason for a
   * stream it could not name a position of.
   */
  reason: string | null;
  /** Events replayed (over SSE: the stream's, for all its channels). */
  replayed: number;
  /** Snapshot events sent instead (with snapshot: true, when not recovered). */
  snapshot: number;
}

interface Events<M> {
  on<K extends keyof M>(event: K, fn: (value: M[K]) => void): () => void;
  off<K extends keyof M>(event: K, fn: (value: M[K]) => void): void;
}

export interface SubscriptionStateChange {
  state: SubscriptionState;
  error: { code: string; message: string } | null;
}

/**
 * A record of a subscribed channel that the node could not decode
 * (docs/protocol.md, "Records that cannot be decoded"), told in its place
 * among the events (Subscription "gap" event). Nothing can recover it: the
 * client does not try; refetch that channel's state if it matters.
 */
export interface UndecodableGap {
  reason: "undecodable";
  /** Why the node gave up on it (invalid_json, unknown_schema, corrupt_value, too_large, …). */
  detail: string | null;
  channel: string;
  /** The record's position: it counts as seen. */
  position: string;
}

interface SubscriptionEvents {
  state: SubscriptionStateChange;
  recovered: Recovery;
  gap: UndecodableGap;
}

/** Made by OdinWS.subscribe(). */
export class Subscription implements Events<SubscriptionEvents> {
  private constructor();
  on<K extends keyof SubscriptionEvents>(event: K, fn: (value: SubscriptionEvents[K]) => void): () => void;
  off<K extends keyof SubscriptionEvents>(event: K, fn: (value: SubscriptionEvents[K]) => void): void;
  /** The last position seen per partition, sorted: what the next recovery sends. */
  readonly positions: string[];
  readonly channel: string;
  readonly options: SubscribeOptions;
  readonly state: SubscriptionState;
  /** Why the server refused it (state "failed"). */
  readonly error: { code: string; message: string } | null;
  unsubscribe(): void;
}

/**
 * A gap notice of the server (docs/protocol.md, "gap"): it gave up on events
 * of these streams. The client recovers them by itself (each subscription's
 * "recovered" event tells the outcome), except `reason` "conflated" and
 * "undecodable" (told to the channel's subscriptions as their "gap" event).
 */
export interface GapNotice {
  reason: string;
  /** stream -> the position from which to recover, or null: it cannot. */
  streams: Record<string, string | null>;
}

interface ClientEvents {
  state: StateChange;
  error: OdinError;
  fallback: Fallback;
  gap: GapNotice;
}

export class OdinWS implements Events<ClientEvents> {
  constructor(url: string, options?: OdinWSOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The transport of the current (or last) connection. */
  readonly transport: "websocket" | "sse" | string | null;
  on<K extends keyof ClientEvents>(event: K, fn: (value: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(event: K, fn: (value: ClientEvents[K]) => void): void;
  connect(): void;
  close(): void;
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions,
                         onEvent?: (event: OdinEvent<T>) => void): Subscription;
  subscribe<T = unknown>(channel: string, onEvent: (event: OdinEvent<T>) => void): Subscription;
  /** Application-level ping: the round trip in ms. */
  ping(): Promise<number>;
}

export const DEFAULTS: Readonly<Required<Omit<OdinWSOptions, "token" | "getToken" | "env" | "sseUrl">>>;
export function backoffDelay(attempt: number, base?: number, cap?: number,
                             random?: () => number): number;
export function matches(pattern: string, channel: string): boolean;
/** RFC 7386 JSON Merge Patch: what `patch` makes of `target`. */
export function applyMergePatch(target: unknown, patch: unknown): unknown;
/** A compact delta `[sid, dpos, dts, patch, adds?]` made whole against its stream's previous event. */
export function applyCompactDelta(
  last: {channel: string; data: unknown; ts: number; pos: string},
  frame: unknown[],
): {type: "event"; channel: string; data: unknown; ts: number; pos: string; sid: number};
export function tokenExpiry(token: string | null | undefined): number | null;
/** A position's partition ("<topic>:<partition>"), stream (… ":<epoch>") and offset; null if none. */
export function parsePosition(pos: unknown): { partition: string; stream: string; offset: string } | null;
/** Is `pos` newer than what `last` (partition -> position) holds for its partition? */
export function isNewer(last: Map<string, string>, pos: string): boolean;
/** The SSE URL of a node's WebSocket URL (http(s), path …/ws -> …/sse). */
export function sseUrlOf(url: string): string;
/** The URL of one SSE stream (channels, since, snapshot, max_rate, filter, token in the query). */
export function sseStreamUrl(base: string,
                             plan: { channels: string[]; since?: string[]; snapshot?: boolean;
                                     options?: { max_rate?: number; filter?: unknown } },
                             token: string | null): string;
/** The positions of an SSE event id (the shard's position vector). */
export function vectorPositions(id: string): string[];

export interface TransportHandlers {
  open(): void;
  /** `meta.vector`: the position vector the message carries (SSE ids). */
  message(msg: Record<string, unknown>, meta?: { vector?: string }): void;
  close(why: { code: number; text?: string; retryAfter?: number }): void;
}
export interface Transport {
  send(msg: Record<string, unknown>): void;
  close(code: number, text: string): void;
  /**
   * A transport that cannot send subscribe/unsubscribe (SSE): the client
   * calls update() when its subscriptions change, and the transport asks
   * plan() for what its next stream carries.
   */
  unidirectional?: boolean;
  update?(): void;
}
export interface TransportContext {
  token: string | null;
  env: TestEnv;
  options: OdinWSOptions;
  /** For unidirectional transports: every channel, since, snapshot, and the id to put on the ack. */
  plan(): { channels: string[]; since?: string[]; snapshot: boolean; id: number };
}
export type TransportFactory = (url: string, context: TransportContext,
                                on: TransportHandlers) => Transport;
export const TRANSPORTS: Record<string, TransportFactory>;
