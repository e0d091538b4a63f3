// The memory store: the history of each job's messages, its subscribers, and retention, in
// this process. Knows nothing about sockets: a subscriber is anything with send/gap/end.
// Memory is bounded by per-channel and global caps; every way a channel can leave is
// counted and reported. With store.state_file its channels outlive a graceful restart
// (state-file.ts writes and reads them; snapshot() and restore() are the store's side).
import { CLOSE } from "./errors.ts";
import { BlockPool, History } from "./history.ts";
import {
  FINISHED_COMMAND,
  newCounters,
  sweepIntervalFor,
  type ChannelInfo,
  type ChannelStatus,
  type ChannelStore as Store,
  type CloseReason,
  type DropCause,
  type RetentionLimits,
  type StoreHealth,
  type StoreHooks,
  type StoreSettings,
  type Subscriber,
} from "./store-backend.ts";

export {
  FINISHED_COMMAND,
  type ChannelInfo,
  type CloseReason,
  type DropCause,
  type RetentionLimits,
  type StoreHooks,
  type Subscriber,
} from "./store-backend.ts";

/** What a state file keeps of one channel; times are ages in milliseconds when saved. */
export interface SavedChannel {
  readonly id: string;
  readonly baseOffset: number;
  readonly firstOffset: number;
  readonly nextOffset: number;
  readonly idleMs: number;
  /** How long ago it FINISHED; -1: not finished. */
  readonly finishedMs: number;
  readonly truncated: boolean;
  readonly history: readonly string[];
}

export interface Snapshot {
  /** The base the next new channel would have taken (see create). */
  readonly nextBase: number;
  readonly channels: SavedChannel[];
}

/**
 * The subscribers of a channel that has none: shared by all of them (most kept channels are
 * finished and watched by nobody, and an empty Set is a few hundred bytes). Never changed.
 */
class NoSubscribers extends Set<Subscriber> {
  override add(): this {
    throw new Error("NO_SUBSCRIBERS is shared: give the channel a Set of its own first");
  }
}
const NO_SUBSCRIBERS: Set<Subscriber> = new NoSubscribers();

export class Channel implements ChannelInfo {
  readonly id: string;
  subscribers: Set<Subscriber> = NO_SUBSCRIBERS;
  /** Its kept messages (older ones were dropped at a cap), as bytes in the store's blocks (history.ts). */
  readonly history: History;
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

  constructor(id: string, now: number, firstOffset: number, pool: BlockPool) {
    this.id = id;
    this.history = new History(pool);
    this.baseOffset = firstOffset;
    this.firstOffset = firstOffset;
    this.nextOffset = firstOffset;
    this.lastActivity = now;
    this.movedAt = now;
  }

  get kept(): number {
    return this.history.length;
  }
}

export interface MemoryStoreOptions {
  /** Offsets of new channels start at or above it (see store-backend.ts clockFloor). */
  offsetFloor?: number;
  /** Where open() restores from and close() saves to. */
  persistence?: Persistence;
  /** store.max_waiting_channels */
  maxWaiting?: number;
}

/** The state file, as the store sees it. */
export interface Persistence {
  load(limits: RetentionLimits): Promise<Snapshot | null>;
  /** What load() gave back and the store kept (the operator hears of it). */
  restored(channels: number, messages: number, dropped: number): void;
  save(snapshot: Snapshot): Promise<void>;
}

export class ChannelStore implements Store {
  readonly kind = "memory";
  private readonly channels = new Map<string, Channel>();
  /** The blocks every channel's history is kept in. */
  private readonly pool = new BlockPool();
  /** Channels that only browsers have asked for: their subscribers, waiting for a first message. */
  private readonly waiting = new Map<string, { readonly since: number; readonly subs: Set<Subscriber> }>();
  /** Unfinished channels, least recently active first (a Map keeps insertion order). */
  private readonly live = new Map<string, Channel>();
  /** Finished channels in the order they finished. */
  private readonly finished = new Map<string, Channel>();
  private limits: RetentionLimits;
  private maxWaiting: number;
  private readonly hooks: StoreHooks;
  private readonly now: () => number;
  private readonly persistence: Persistence | null;

  /**
   * The base of the next new channel: above every offset used so far, plus one (it grows
   * with every channel created and every message published).
   */
  private nextBase: number;
  totalBytes = 0;
  totalMessages = 0;
  readonly pending = 0;
  readonly counters = newCounters();

  constructor(
    limits: RetentionLimits,
    hooks: StoreHooks = {},
    now: () => number = () => performance.now(),
    options: MemoryStoreOptions = {},
  ) {
    this.limits = { ...limits };
    this.hooks = hooks;
    this.now = now;
    this.nextBase = options.offsetFloor ?? 0;
    this.persistence = options.persistence ?? null;
    this.maxWaiting = options.maxWaiting ?? Number.MAX_SAFE_INTEGER;
  }

  get size(): number {
    return this.channels.size;
  }

  get historyBufferBytes(): number {
    return this.pool.size;
  }

  get waitingChannels(): number {
    return this.waiting.size;
  }

  health(): StoreHealth {
    return { up: true, detail: "memory" };
  }

  /** Restores the state file, if there is one and it is sound; the rest of the start waits for it. */
  async open(): Promise<void> {
    const snapshot = await this.persistence?.load(this.limits);
    if (!snapshot) return;
    const { restored, dropped } = this.restore(snapshot);
    this.persistence!.restored(restored, this.totalMessages, dropped);
  }

  /** Ends every subscriber, then saves what is kept (shutdown). */
  async close(close: CloseReason): Promise<void> {
    const snapshot = this.persistence === null ? null : this.snapshot();
    this.clear(close);
    if (snapshot !== null) await this.persistence!.save(snapshot);
  }

  get(id: string): Channel | undefined {
    return this.channels.get(id);
  }

  describe(id: string): ChannelStatus | undefined {
    const ch = this.channels.get(id);
    if (ch === undefined) return undefined;
    return {
      id,
      messages: ch.nextOffset - ch.baseOffset,
      kept: ch.kept,
      finished: ch.finishedAt !== 0,
      subscribers: ch.subscribers.size,
      lastActivity: ch.lastActivity,
      last: ch.kept > 0 ? ch.history.at(ch.kept - 1) : null,
    };
  }

  hasMessages(id: string): boolean {
    const ch = this.channels.get(id);
    return ch !== undefined && ch.nextOffset > ch.baseOffset;
  }

  /** New limits apply from the next message or sweep; nothing already kept is lost at once. */
  setLimits(limits: RetentionLimits, store?: StoreSettings): void {
    this.limits = { ...limits };
    if (store !== undefined) this.maxWaiting = store.max_waiting_channels;
    this.enforceTotal(null);
  }

  sweepInterval(): number {
    return sweepIntervalFor(this.limits);
  }

  publish(id: string, command: string, json: string): void {
    const now = this.now();
    let ch = this.channels.get(id);
    if (ch === undefined) {
      ch = this.create(id, now);
      const waiting = this.waiting.get(id);
      if (waiting !== undefined) {
        this.waiting.delete(id);
        ch.subscribers = new Set(waiting.subs);
      }
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
    this.nextBase++;
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
      const subs = ch.subscribers;
      ch.subscribers = NO_SUBSCRIBERS;
      for (const sub of subs) sub.end(CLOSE.FINISHED);
      // It is kept until finished_ttl, read only by late joiners: without the room that
      // pushing left for more.
      ch.history.compact();
    }
    if (this.totalBytes > this.limits.max_total_bytes) this.enforceTotal(ch);
  }

  subscribe(id: string, sub: Subscriber, after = -1): void {
    const ch = this.channels.get(id);
    if (ch === undefined) {
      this.wait(id, sub, after);
      return;
    }
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
    for (let i = from - ch.firstOffset; i < history.length; i++) {
      sub.send(history.at(i), ch.firstOffset + i);
      this.counters.replayedMessages++;
    }
    if (ch.finishedAt !== 0) {
      sub.end(CLOSE.FINISHED);
    } else {
      if (ch.subscribers === NO_SUBSCRIBERS) ch.subscribers = new Set();
      ch.subscribers.add(sub);
    }
  }

  unsubscribe(id: string, sub: Subscriber): void {
    const waiting = this.waiting.get(id);
    if (waiting !== undefined) {
      // A channel that only browsers asked for is forgotten with its last subscriber.
      if (waiting.subs.delete(sub) && waiting.subs.size === 0) this.waiting.delete(id);
      return;
    }
    this.channels.get(id)?.subscribers.delete(sub);
  }

  /**
   * A subscription to a channel no broker has written to (yet, or ever). It waits apart
   * from the kept channels, so that browsers asking for made-up ids can neither fill
   * retention.max_channels nor push a broker's channel out; it has its own cap.
   */
  private wait(id: string, sub: Subscriber, after: number): void {
    let waiting = this.waiting.get(id);
    if (waiting === undefined) {
      if (this.waiting.size >= this.maxWaiting) {
        this.counters.waitingRefused++;
        this.hooks.waitingRefused?.(id);
        sub.end(CLOSE.EVICTED);
        return;
      }
      waiting = { since: this.now(), subs: new Set() };
      this.waiting.set(id, waiting);
    }
    this.counters.replays++;
    // Nothing is kept: whatever the client had is from a life of the channel that is gone.
    // The channel's first message will have an offset at or above nextBase.
    if (after >= 0) sub.gap(this.nextBase);
    waiting.subs.add(sub);
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
    // A browser that waits idle_ttl for a job that never sends anything is let go as well.
    for (const [id, waiting] of this.waiting) {
      if (waiting.since > idleBefore) break;
      this.waiting.delete(id);
      this.counters.expired++;
      for (const sub of waiting.subs) sub.end(CLOSE.EXPIRED);
    }
  }

  /** Ends every subscriber and forgets every channel (shutdown). */
  clear(close: CloseReason): void {
    for (const ch of [...this.channels.values()]) this.drop(ch, "shutdown", close);
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const { subs } of waiting) for (const sub of subs) sub.end(close);
  }

  /** Every kept channel, as a state file keeps it. */
  snapshot(): Snapshot {
    const now = this.now();
    const channels: SavedChannel[] = [];
    for (const ch of this.channels.values()) {
      channels.push({
        id: ch.id,
        baseOffset: ch.baseOffset,
        firstOffset: ch.firstOffset,
        nextOffset: ch.nextOffset,
        idleMs: Math.max(0, now - ch.lastActivity),
        finishedMs: ch.finishedAt === 0 ? -1 : Math.max(0, now - ch.finishedAt),
        truncated: ch.truncated,
        history: ch.history.toArray(),
      });
    }
    return { nextBase: this.nextBase, channels };
  }

  /**
   * Takes the channels of a snapshot (ages already include the time the monitor was down),
   * least recently active first, within the retention caps; those whose TTL ran out are
   * not taken. Offsets continue where they were.
   */
  restore(snapshot: Snapshot): { restored: number; dropped: number } {
    const now = this.now();
    let dropped = 0;
    this.nextBase = Math.max(this.nextBase, snapshot.nextBase);
    // Least recently active first, and no more than max_channels of the most recent ones.
    const order = [...snapshot.channels].sort((a, b) => b.idleMs - a.idleMs).slice(-this.limits.max_channels);
    dropped += snapshot.channels.length - order.length;
    for (const saved of order) {
      const finished = saved.finishedMs >= 0;
      if (finished ? saved.finishedMs >= this.limits.finished_ttl * 1000 : saved.idleMs >= this.limits.idle_ttl * 1000) {
        dropped++;
        continue;
      }
      const ch = new Channel(saved.id, now - saved.idleMs, saved.baseOffset, this.pool);
      ch.firstOffset = saved.firstOffset;
      ch.nextOffset = saved.nextOffset;
      ch.truncated = saved.truncated;
      for (const json of saved.history) {
        ch.history.push(json);
        ch.bytes += json.length;
      }
      this.totalBytes += ch.bytes;
      this.totalMessages += ch.kept;
      this.nextBase = Math.max(this.nextBase, ch.nextOffset + 1);
      this.channels.set(ch.id, ch);
      if (finished) {
        ch.finishedAt = now - saved.finishedMs;
        this.finished.set(ch.id, ch);
      } else {
        this.live.set(ch.id, ch);
      }
      if (ch.kept > this.limits.max_messages_per_channel || ch.bytes > this.limits.max_bytes_per_channel) this.trim(ch);
      if (this.totalBytes > this.limits.max_total_bytes) this.enforceTotal(ch);
    }
    return { restored: this.channels.size, dropped };
  }

  private create(id: string, now: number): Channel {
    while (this.channels.size >= this.limits.max_channels) {
      if (!this.evictOne(null)) break;
    }
    // A channel's offsets start above every offset any earlier channel used, plus one: a
    // channel that was dropped and comes back under the same id neither reuses an offset of
    // its earlier life nor continues right after it, so a client resuming into the new one
    // is always told of the gap instead of being handed different messages.
    const ch = new Channel(id, now, this.nextBase++, this.pool);
    this.channels.set(id, ch);
    this.live.set(id, ch);
    return ch;
  }

  private trim(ch: Channel): void {
    const { max_messages_per_channel: maxMessages, max_bytes_per_channel: maxBytes } = this.limits;
    // The last message is never dropped, so FINISHED always reaches late joiners.
    while (ch.kept > 1 && (ch.kept > maxMessages || ch.bytes > maxBytes)) {
      const length = ch.history.shift();
      ch.firstOffset++;
      ch.bytes -= length;
      this.totalBytes -= length;
      this.totalMessages--;
      this.counters.truncatedMessages++;
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
    ch.history.release();
    const subs = [...ch.subscribers];
    ch.subscribers = NO_SUBSCRIBERS;
    for (const sub of subs) sub.end(close);
    this.hooks.dropped?.(ch, cause);
  }
}
