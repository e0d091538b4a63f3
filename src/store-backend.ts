// The one narrow interface every channel store implements: the memory store
// (channel-store.ts) and the Redis store (store-redis.ts). The broker link publishes into it,
// the gateway subscribes clients to it; neither knows which backend it talks to. Calls go
// down (publish, subscribe, unsubscribe); what comes back is a call on a Subscriber
// (send, gap, end) or a hook, never a call into the caller's middle.
import type { Config } from "./config.ts";

export interface CloseReason {
  readonly code: number;
  readonly reason: string;
}

export interface Subscriber {
  /** Speaks the resumable protocol: it gets offsets and gap notices (a legacy client gets neither). */
  readonly resumable?: boolean;
  /** A message for this channel, with its offset in the channel. */
  send(json: string, offset: number): void;
  /** The history asked for by a resume starts later than asked (or was lost): first kept offset. */
  gap(firstOffset: number): void;
  /** The store has let go of this subscriber (job finished, channel expired or evicted, shutdown). */
  end(close: CloseReason): void;
}

export type RetentionLimits = Config["retention"];
export type StoreSettings = Config["store"];

export type DropCause = "finished" | "idle" | "evicted" | "shutdown";

/** What a hook is told of a channel that leaves or misbehaves. */
export interface ChannelInfo {
  readonly id: string;
  /** Offsets of the channel's first message ever and the next one: their difference is its message count. */
  readonly baseOffset: number;
  readonly nextOffset: number;
  /** 0 while not FINISHED. */
  readonly finishedAt: number;
}

/** One channel as the status endpoint shows it. */
export interface ChannelStatus {
  readonly id: string;
  /** Messages the channel has had (its offsets' span). */
  readonly messages: number;
  /** Messages kept here for replay; null where history lives elsewhere (Redis). */
  readonly kept: number | null;
  readonly finished: boolean;
  /** Subscribers on this node. */
  readonly subscribers: number;
  /** performance.now() of its last message. */
  readonly lastActivity: number;
  /** Its last kept message (JSON), when kept here. */
  readonly last: string | null;
}

export interface StoreHooks {
  dropped?(channel: ChannelInfo, cause: DropCause): void;
  truncated?(channel: ChannelInfo): void;
  late?(channel: ChannelInfo, command: string): void;
  /** A subscription to a channel no broker has written to, refused at store.max_waiting_channels. */
  waitingRefused?(id: string): void;
  /** Something an operator must hear about the backend (restore, Redis link); already worded. */
  notice?(level: "info" | "warning" | "error", line: string): void;
}

export interface StoreCounters {
  published: number;
  late: number;
  replays: number;
  replayedMessages: number;
  expired: number;
  evicted: number;
  finishedDropped: number;
  truncatedMessages: number;
  waitingRefused: number;
  /** Redis store: messages dropped past store.redis.max_pending. */
  pendingDropped: number;
  /** Redis store: connections to Redis made anew after a loss or a timeout. */
  reconnects: number;
  /** Redis store: channels re-read from Redis because live delivery could not vouch for them. */
  resyncs: number;
}

export function newCounters(): StoreCounters {
  return {
    published: 0,
    late: 0,
    replays: 0,
    replayedMessages: 0,
    expired: 0,
    evicted: 0,
    finishedDropped: 0,
    truncatedMessages: 0,
    waitingRefused: 0,
    pendingDropped: 0,
    reconnects: 0,
    resyncs: 0,
  };
}

/** Whether the backend can do its job now, for /readyz. */
export interface StoreHealth {
  readonly up: boolean;
  readonly detail: string;
}

export interface ChannelStore {
  readonly kind: "memory" | "redis";
  readonly counters: StoreCounters;
  /** Channels kept (a channel only browsers have asked for is not one). */
  readonly size: number;
  /** Channels that only browsers have asked for (no broker message yet). */
  readonly waitingChannels: number;
  readonly totalMessages: number;
  readonly totalBytes: number;
  /** Bytes of the buffers this node keeps history in, used or free for reuse (0 where history lives elsewhere). */
  readonly historyBufferBytes: number;
  /** Messages received but not yet where the backend keeps them (Redis store: not yet written). */
  readonly pending: number;

  /**
   * Whether a broker has written to this channel, as far as this node knows right now (the
   * Redis store knows the channels it has views of; others count as not written to).
   */
  hasMessages(id: string): boolean;
  /** What `recodex-monitor status --channel` shows of a channel this node holds or follows. */
  describe(id: string): ChannelStatus | undefined;
  /** Restores or connects; resolves before the monitor accepts anyone. */
  open(): Promise<void>;
  /** Never blocks on anything: the broker link's loop calls it for every message. */
  publish(id: string, command: string, json: string): void;
  /**
   * Replays the kept history to the subscriber, then keeps it for live messages; a
   * finished channel ends it right after the replay. `after` (resumable clients) skips what
   * the client already has: offsets up to and including it.
   */
  subscribe(id: string, sub: Subscriber, after?: number): void;
  unsubscribe(id: string, sub: Subscriber): void;
  setLimits(retention: RetentionLimits, store: StoreSettings): void;
  /** Expiry by time; the monitor calls it every sweepInterval() ms. */
  sweep(): void;
  sweepInterval(): number;
  health(): StoreHealth;
  /**
   * Keeps what was received (state file, Redis) within `deadlineMs`, then ends every
   * subscriber with `close`.
   */
  close(close: CloseReason, deadlineMs: number): Promise<void>;
}

export const FINISHED_COMMAND = "FINISHED";

/** How often sweep() should run so that expiry is on time within a tenth of a TTL. */
export function sweepIntervalFor(limits: RetentionLimits): number {
  const shortest = Math.min(limits.finished_ttl, limits.idle_ttl) * 1000;
  return Math.min(1000, Math.max(20, shortest / 10));
}

/**
 * The lowest offset a channel may start at when nothing is known of its earlier lives
 * (a fresh or flushed Redis, a monitor that could not restore its state): a thousand
 * offsets per millisecond of the wall clock, so that a life started later never overlaps
 * an earlier one unless that one took more than a thousand messages per millisecond.
 * Stays below 2^53 until the year 2255.
 */
export function clockFloor(unixMs: number): number {
  return Math.floor(unixMs) * 1000;
}
