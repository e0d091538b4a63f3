// Channels: the history of each job's messages, its subscribers, and retention. Knows
// nothing about sockets: a subscriber is anything with send/end. Memory is bounded by
// per-channel and global caps; every way a channel can leave is counted and reported.
import type { Config } from "./config.ts";
import { CLOSE } from "./errors.ts";

export interface CloseReason {
  readonly code: number;
  readonly reason: string;
}

export interface Subscriber {
  /** A message for this channel, with its offset in the channel (0-based). */
  send(json: string, offset: number): void;
  /** The history asked for by a resume starts later than asked (or was lost): first kept offset. */
  gap(firstOffset: number): void;
  /** The store has let go of this subscriber (job finished, channel expired or evicted, shutdown). */
  end(close: CloseReason): void;
}

export type RetentionLimits = Config["retention"];

export type DropCause = "finished" | "idle" | "evicted" | "shutdown";

export interface StoreHooks {
  dropped?(channel: Channel, cause: DropCause): void;
  truncated?(channel: Channel): void;
  late?(channel: Channel, command: string): void;
}

export class Channel {
  readonly id: string;
  readonly subscribers = new Set<Subscriber>();
  /** Kept messages are history[head..]; older ones were dropped at a cap. */
  // History is kept as strings rather than Buffers: small Buffers are slices of shared 8 KB
  // slabs, and one kept message would pin a whole slab long after its neighbours are gone.
  history: string[] = [];
  head = 0;
  firstOffset = 0;
  nextOffset = 0;
  /** The offset of the channel's first message ever. */
  readonly baseOffset: number;
  bytes = 0;
  lastActivity: number;
  /** When the channel last moved to the end of the activity order (see publish). */
  movedAt: number;
  finishedAt = 0;
  truncated = false;

  constructor(id: string, now: number, firstOffset: number) {
    this.id = id;
    this.baseOffset = firstOffset;
    this.firstOffset = firstOffset;
    this.nextOffset = firstOffset;
    this.lastActivity = now;
    this.movedAt = now;
  }

  get kept(): number {
    return this.history.length - this.head;
  }
}

export const FINISHED_COMMAND = "FINISHED";

export class ChannelStore {
  private readonly channels = new Map<string, Channel>();
  /** Unfinished channels, least recently active first (a Map keeps insertion order). */
  private readonly live = new Map<string, Channel>();
  /** Finished channels in the order they finished. */
  private readonly finished = new Map<string, Channel>();
  private limits: RetentionLimits;
  private readonly hooks: StoreHooks;
  private readonly now: () => number;

  private created = 0;
  totalBytes = 0;
  totalMessages = 0;
  readonly counters = {
    published: 0,
    late: 0,
    replays: 0,
    replayedMessages: 0,
    expired: 0,
    evicted: 0,
    finishedDropped: 0,
    truncatedMessages: 0,
  };

  constructor(limits: RetentionLimits, hooks: StoreHooks = {}, now: () => number = () => performance.now()) {
    this.limits = { ...limits };
    this.hooks = hooks;
    this.now = now;
  }

  get size(): number {
    return this.channels.size;
  }

  get(id: string): Channel | undefined {
    return this.channels.get(id);
  }

  /** New limits apply from the next message or sweep; nothing already kept is lost at once. */
  setLimits(limits: RetentionLimits): void {
    this.limits = { ...limits };
    this.enforceTotal(null);
  }

  /** How often sweep() should run so that expiry is on time within a tenth of a TTL. */
  sweepInterval(): number {
    const shortest = Math.min(this.limits.finished_ttl, this.limits.idle_ttl) * 1000;
    return Math.min(1000, Math.max(20, shortest / 10));
  }

  publish(id: string, command: string, json: string): void {
    const now = this.now();
    let ch = this.channels.get(id);
    if (ch === undefined) {
      ch = this.create(id, now);
    } else if (ch.finishedAt !== 0) {
      this.counters.late++;
      this.hooks.late?.(ch, command);
      return;
    } else {
      // Moving the channel to the end of the activity order costs two map operations; doing
      // it at most once a second keeps the order right to within a second, which is all
      // that idle expiry and eviction need.
      if (now - ch.movedAt >= 1000) {
        this.live.delete(id);
        this.live.set(id, ch);
        ch.movedAt = now;
      }
      ch.lastActivity = now;
    }

    const offset = ch.nextOffset++;
    ch.history.push(json);
    ch.bytes += json.length;
    this.totalBytes += json.length;
    this.totalMessages++;
    this.counters.published++;
    if (ch.kept > this.limits.max_messages_per_channel || ch.bytes > this.limits.max_bytes_per_channel) {
      this.trim(ch);
    }

    for (const sub of ch.subscribers) sub.send(json, offset);

    if (command === FINISHED_COMMAND) {
      ch.finishedAt = now;
      this.live.delete(id);
      this.finished.set(id, ch);
      for (const sub of ch.subscribers) sub.end(CLOSE.FINISHED);
      ch.subscribers.clear();
    }
    if (this.totalBytes > this.limits.max_total_bytes) this.enforceTotal(ch);
  }

  /**
   * Replays the kept history to the subscriber, then keeps it for live messages; a
   * finished channel ends it right after the replay. `after` (resumable clients) skips
   * what the client already has: offsets up to and including it.
   */
  subscribe(id: string, sub: Subscriber, after = -1): void {
    let ch = this.channels.get(id);
    if (ch === undefined) ch = this.create(id, this.now());
    this.counters.replays++;
    let from = ch.firstOffset;
    if (after >= 0) {
      if (after + 1 < ch.firstOffset || after >= ch.nextOffset) {
        sub.gap(ch.firstOffset);
      } else {
        from = after + 1;
      }
    }
    const history = ch.history;
    for (let i = ch.head + (from - ch.firstOffset); i < history.length; i++) {
      sub.send(history[i], ch.firstOffset + (i - ch.head));
      this.counters.replayedMessages++;
    }
    if (ch.finishedAt !== 0) {
      sub.end(CLOSE.FINISHED);
    } else {
      ch.subscribers.add(sub);
    }
  }

  unsubscribe(id: string, sub: Subscriber): void {
    const ch = this.channels.get(id);
    if (ch === undefined || !ch.subscribers.delete(sub)) return;
    // A channel that only a departed subscriber created (the job has not sent anything
    // yet, or never will) is forgotten at once rather than at idle_ttl.
    if (ch.subscribers.size === 0 && ch.nextOffset === ch.baseOffset) {
      this.channels.delete(id);
      this.live.delete(id);
    }
  }

  /** Drops finished channels past finished_ttl and channels idle past idle_ttl. */
  sweep(now = this.now()): void {
    const finishedBefore = now - this.limits.finished_ttl * 1000;
    for (const ch of this.finished.values()) {
      if (ch.finishedAt > finishedBefore) break;
      this.counters.finishedDropped++;
      this.drop(ch, "finished", CLOSE.FINISHED);
    }
    const idleBefore = now - this.limits.idle_ttl * 1000;
    for (const ch of this.live.values()) {
      if (ch.lastActivity > idleBefore) break;
      this.counters.expired++;
      this.drop(ch, "idle", CLOSE.EXPIRED);
    }
  }

  /** Ends every subscriber and forgets every channel (shutdown). */
  clear(close: CloseReason): void {
    for (const ch of [...this.channels.values()]) this.drop(ch, "shutdown", close);
  }

  private create(id: string, now: number): Channel {
    while (this.channels.size >= this.limits.max_channels) {
      if (!this.evictOne(null)) break;
    }
    // A channel's offsets start above every offset any earlier channel used, plus one: a
    // channel that was dropped and comes back under the same id neither reuses an offset of
    // its earlier life nor continues right after it, so a client resuming into the new one
    // is always told of the gap instead of being handed different messages.
    const ch = new Channel(id, now, this.counters.published + this.created++);
    this.channels.set(id, ch);
    this.live.set(id, ch);
    return ch;
  }

  private trim(ch: Channel): void {
    const { max_messages_per_channel: maxMessages, max_bytes_per_channel: maxBytes } = this.limits;
    // The last message is never dropped, so FINISHED always reaches late joiners.
    while (ch.kept > 1 && (ch.kept > maxMessages || ch.bytes > maxBytes)) {
      const old = ch.history[ch.head];
      ch.history[ch.head] = "";
      ch.head++;
      ch.firstOffset++;
      ch.bytes -= old.length;
      this.totalBytes -= old.length;
      this.totalMessages--;
      this.counters.truncatedMessages++;
    }
    if (ch.head > 64 && ch.head * 2 > ch.history.length) {
      ch.history = ch.history.slice(ch.head);
      ch.head = 0;
    }
    if (!ch.truncated) {
      ch.truncated = true;
      this.hooks.truncated?.(ch);
    }
  }

  private enforceTotal(keep: Channel | null): void {
    while (this.totalBytes > this.limits.max_total_bytes) {
      if (!this.evictOne(keep)) break;
    }
    while (this.channels.size > this.limits.max_channels) {
      if (!this.evictOne(keep)) break;
    }
  }

  /** Evicts the channel that finished first, else the least recently active one. */
  private evictOne(keep: Channel | null): boolean {
    for (const queue of [this.finished, this.live]) {
      for (const ch of queue.values()) {
        if (ch === keep) continue;
        this.counters.evicted++;
        this.drop(ch, "evicted", CLOSE.EVICTED);
        return true;
      }
    }
    return false;
  }

  private drop(ch: Channel, cause: DropCause, close: CloseReason): void {
    // Guard against a stale reference: a channel dropped earlier may have been recreated
    // under the same id, and that newer channel must survive.
    if (this.channels.get(ch.id) !== ch) return;
    this.channels.delete(ch.id);
    this.live.delete(ch.id);
    this.finished.delete(ch.id);
    this.totalBytes -= ch.bytes;
    this.totalMessages -= ch.kept;
    const subs = [...ch.subscribers];
    ch.subscribers.clear();
    for (const sub of subs) sub.end(close);
    this.hooks.dropped?.(ch, cause);
  }
}
