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
  /** Fields a later server adds (e.g. a position). */
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
  /** Transports in the order to try them; default ["websocket"]. */
  transports?: string[];
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

/** Subscription options; reserved for recovery and snapshots. */
export interface SubscribeOptions {
  [option: string]: unknown;
}

interface Events<M> {
  on<K extends keyof M>(event: K, fn: (value: M[K]) => void): () => void;
  off<K extends keyof M>(event: K, fn: (value: M[K]) => void): void;
}

export interface SubscriptionStateChange {
  state: SubscriptionState;
  error: { code: string; message: string } | null;
}

/** Made by OdinWS.subscribe(). */
export class Subscription implements Events<{ state: SubscriptionStateChange }> {
  private constructor();
  on<K extends "state">(event: K, fn: (value: SubscriptionStateChange) => void): () => void;
  off<K extends "state">(event: K, fn: (value: SubscriptionStateChange) => void): void;
  readonly channel: string;
  readonly options: SubscribeOptions;
  readonly state: SubscriptionState;
  /** Why the server refused it (state "failed"). */
  readonly error: { code: string; message: string } | null;
  unsubscribe(): void;
}

export class OdinWS implements Events<{ state: StateChange; error: OdinError }> {
  constructor(url: string, options?: OdinWSOptions);
  readonly url: string;
  readonly state: ConnectionState;
  on<K extends "state" | "error">(
    event: K, fn: (value: { state: StateChange; error: OdinError }[K]) => void): () => void;
  off<K extends "state" | "error">(
    event: K, fn: (value: { state: StateChange; error: OdinError }[K]) => void): void;
  connect(): void;
  close(): void;
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions,
                         onEvent?: (event: OdinEvent<T>) => void): Subscription;
  subscribe<T = unknown>(channel: string, onEvent: (event: OdinEvent<T>) => void): Subscription;
  /** Application-level ping: the round trip in ms. */
  ping(): Promise<number>;
}

export const DEFAULTS: Readonly<Required<Omit<OdinWSOptions, "token" | "getToken" | "env">>>;
export function backoffDelay(attempt: number, base?: number, cap?: number,
                             random?: () => number): number;
export function matches(pattern: string, channel: string): boolean;
export function tokenExpiry(token: string | null | undefined): number | null;

export interface TransportHandlers {
  open(): void;
  message(msg: Record<string, unknown>): void;
  close(why: { code: number; text?: string; retryAfter?: number }): void;
}
export interface Transport {
  send(msg: Record<string, unknown>): void;
  close(code: number, text: string): void;
}
export type TransportFactory = (url: string, context: { token: string | null; env: TestEnv },
                                on: TransportHandlers) => Transport;
export const TRANSPORTS: Record<string, TransportFactory>;
