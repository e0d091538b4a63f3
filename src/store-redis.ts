// The Redis store (store.kind: redis): history, offsets and retention live in Redis and are
// shared by every monitor pointed at it; this process keeps only what delivery needs.
//
// - Ingest: a broker message goes into the bounded ingest queue (redis-ingest.ts), which
//   writes it to Redis in order; nothing here waits for Redis.
// - Delivery: a view per channel that has subscribers on this node. Messages this node
//   takes in reach its own subscribers at once (with the offset Redis is expected to give;
//   if Redis gives another, the view is re-read and resumable clients told of the gap; a
//   channel's first messages reach legacy clients at once and resumable ones with the offset
//   Redis gave); messages other nodes took in come from the shared feed (redis-link.ts
//   follows it), in offset order. A view
//   that cannot vouch for its order (a hole, another life of the channel, a lost feed
//   position) is re-read from Redis before it delivers anything more.
// - Each subscriber's last entry is kept with the view: a joiner's history read can be
//   answered ahead of the feed (they come on two connections), so the view may still bring
//   it entries it has; nothing reaches a subscriber twice or out of order.
// - Late joiners and resumes read the channel's history from Redis (READ script).
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { CLOSE } from "./errors.ts";
import { IngestQueue, type AppendResult, type Pending as Item } from "./redis-ingest.ts";
import { RedisLink } from "./redis-link.ts";
import {
  FINISHED_COMMAND,
  newCounters,
  sweepIntervalFor,
  type ChannelInfo,
  type ChannelStatus,
  type ChannelStore,
  type CloseReason,
  type RetentionLimits,
  type StoreHealth,
  type StoreHooks,
  type StoreSettings,
  type Subscriber,
} from "./store-backend.ts";


type Pending = Item<View>;

interface Entry {
  readonly offset: number;
  readonly json: string;
  readonly fin: boolean;
}

interface ReadReply {
  base?: string;
  next?: string;
  first?: string;
  fin?: boolean;
  entries?: [string, string][];
  floor?: string;
}

class View implements ChannelInfo {
  readonly id: string;
  /** The life of the channel this view follows (its base offset); null: not known yet. */
  epoch: number | null = null;
  baseOffset = 0;
  nextOffset = 0;
  finishedAt = 0;
  lastActivity: number;
  readonly subs = new Set<Subscriber>();
  /** Subscribers whose history read is on its way. */
  readonly joining = new Map<Subscriber, number>();
  /** Reads in flight for joiners; while any is, delivered entries are kept in `recent` for them. */
  reads = 0;
  recent: Entry[] = [];
  /** Entries delivered at once that Redis has not confirmed yet. */
  unconfirmed: Entry[] = [];
  /** Own messages waiting for their reply to be delivered. */
  awaiting = 0;
  /** Of those, the channel's first ones here, already delivered to legacy subscribers. */
  provisional = 0;
  /** Delivery cannot be vouched for: re-read once nothing of ours is outstanding. */
  stale = false;
  resyncing = false;
  /** Feed entries (with the life they belong to) that came while the view was being re-read. */
  held: { epoch: number; entry: Entry }[] = [];
  /** Messages were lost just before the next one: resumable subscribers are told with it. */
  gapAhead = false;
  /** Offsets (in the channel's current life) of messages already delivered here at once. */
  ownDelivered = new Set<number>();
  /**
   * The last entry each subscriber got (its life and offset). A joiner's history read may
   * reach past what the view has delivered (the read and the feed come on two connections):
   * the view then brings it entries it already has, and they are not sent to it again.
   */
  readonly sent = new WeakMap<Subscriber, { epoch: number; offset: number }>();

  constructor(id: string, now: number) {
    this.id = id;
    this.lastActivity = now;
  }

  get predicting(): boolean {
    return this.epoch !== null && !this.stale && !this.resyncing && this.awaiting === 0;
  }

}

export class RedisStore implements ChannelStore {
  readonly kind = "redis";
  readonly counters = newCounters();
  private limits: RetentionLimits;
  private settings: StoreSettings;
  private readonly hooks: StoreHooks;
  private readonly node = `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
  private readonly link: RedisLink;
  private readonly views = new Map<string, View>();
  private waitingCount = 0;
  private readonly ingest: IngestQueue<View>;
  private closing = false;
  private stats = { channels: 0, msgs: 0, bytes: 0 };

  constructor(limits: RetentionLimits, settings: StoreSettings, hooks: StoreHooks = {}) {
    this.limits = { ...limits };
    this.settings = settings;
    this.hooks = hooks;
    this.link = new RedisLink(settings.redis.url, settings.redis.key_prefix, settings.redis.timeout * 1000, {
      up: () => {
        this.hooks.notice?.("info", `Redis ${redactUrl(settings.redis.url)} connected`);
        this.ingest.flush();
      },
      down: (reason) => {
        this.counters.reconnects++;
        this.hooks.notice?.("warning", `Redis link lost (${reason}): buffering broker messages (${this.pending} pending, at most store.redis.max_pending ${this.settings.redis.max_pending}); reconnecting`);
        this.ingest.resend();
      },
    });
    this.ingest = new IngestQueue<View>(this.link, this.node, () => {
      const l = this.limits;
      return [String(Math.round(l.finished_ttl * 1000)), String(Math.round(l.idle_ttl * 1000)), String(l.max_messages_per_channel),
        String(l.max_bytes_per_channel), String(l.max_channels), String(this.settings.redis.feed_length)];
    }, (items, results) => this.confirmed(items, results));
  }

  get size(): number {
    return this.stats.channels;
  }

  get totalMessages(): number {
    return this.stats.msgs;
  }

  get totalBytes(): number {
    return this.stats.bytes;
  }

  /** History lives in Redis. */
  readonly historyBufferBytes = 0;

  get pending(): number {
    return this.ingest.pending;
  }

  describe(id: string): ChannelStatus | undefined {
    const view = this.views.get(id);
    if (view === undefined) return undefined;
    return {
      id,
      messages: view.nextOffset - view.baseOffset,
      kept: null,
      finished: view.finishedAt !== 0,
      subscribers: view.subs.size,
      lastActivity: view.lastActivity,
      last: null,
    };
  }

  hasMessages(id: string): boolean {
    const view = this.views.get(id);
    return view !== undefined && view.nextOffset > view.baseOffset;
  }

  get waitingChannels(): number {
    return this.waitingCount;
  }

  /** Views whose channel has no known life: only browsers have asked for it (so far). */
  private setEpoch(view: View, epoch: number | null): void {
    if ((view.epoch === null) !== (epoch === null) && this.views.get(view.id) === view) this.waitingCount += epoch === null ? 1 : -1;
    view.epoch = epoch;
  }

  private remove(view: View): void {
    if (this.views.get(view.id) !== view) return;
    this.views.delete(view.id);
    if (view.epoch === null) this.waitingCount--;
  }

  health(): StoreHealth {
    if (this.link.up) return { up: true, detail: `redis ${redactUrl(this.settings.redis.url)} up, ${this.pending} pending` };
    const since = ((performance.now() - this.link.downSince) / 1000).toFixed(1);
    return { up: false, detail: `redis ${redactUrl(this.settings.redis.url)} unreachable for ${since} s (${this.link.lastError}), ${this.pending} messages pending` };
  }

  async open(): Promise<void> {
    await this.link.start();
    if (!this.link.up) {
      this.hooks.notice?.("warning", `Redis ${redactUrl(this.settings.redis.url)} not reachable yet (${this.link.lastError}): starting anyway, broker messages are buffered until it is`);
    }
    void this.link.follow(
      (fields) => this.onFeed(fields),
      () => this.feedLost(),
    );
  }

  setLimits(retention: RetentionLimits, store: StoreSettings): void {
    this.limits = { ...retention };
    this.settings = store;
    this.link.timeoutMs = store.redis.timeout * 1000;
  }

  sweepInterval(): number {
    return sweepIntervalFor(this.limits);
  }

  // ---- ingest ------------------------------------------------------------------------------

  publish(id: string, command: string, json: string): void {
    if (this.closing) return;
    this.counters.published++;
    const fin = command === FINISHED_COMMAND;
    const view = this.views.get(id);
    if (view !== undefined && view.finishedAt !== 0) {
      this.counters.late++;
      this.hooks.late?.(view, command);
      return;
    }
    if (this.pending >= this.settings.redis.max_pending) {
      this.drop(id, view);
      return;
    }
    let item: Pending;
    if (view === undefined) {
      item = { id, json, fin, expectOffset: -1, expectEpoch: -1, deliverTo: null, legacyHasIt: false, deliveredBy: null, lost: 0 };
    } else if (view.predicting) {
      const offset = view.nextOffset;
      item = { id, json, fin, expectOffset: offset, expectEpoch: view.epoch!, deliverTo: null, legacyHasIt: false, deliveredBy: view, lost: 0 };
      view.unconfirmed.push({ offset, json, fin });
      this.deliver(view, { offset, json, fin });
    } else if (view.provisional > 0 || (view.epoch === null && !view.stale && !view.resyncing)) {
      // The channel's first messages here: Redis will say where its life starts. Legacy
      // clients need no offset and get them at once; resumable ones with the reply.
      view.awaiting++;
      view.provisional++;
      item = { id, json, fin, expectOffset: -1, expectEpoch: -1, deliverTo: view, legacyHasIt: true, deliveredBy: null, lost: 0 };
      this.deliverToLegacy(view, json, fin);
    } else {
      view.awaiting++;
      item = { id, json, fin, expectOffset: -1, expectEpoch: -1, deliverTo: view, legacyHasIt: false, deliveredBy: null, lost: 0 };
    }
    this.ingest.push(item);
  }

  /**
   * Past max_pending: the message is lost, but not silently (see redis-ingest.ts); this
   * node's resumable clients are told of the hole with the next message.
   */
  private drop(id: string, view: View | undefined): void {
    this.counters.pendingDropped++;
    this.hooks.notice?.("warning", `Redis store: ${this.pending} messages already waiting for Redis (store.redis.max_pending): a message for channel ${id.slice(0, 80)} dropped`);
    const open = this.ingest.openMarker(id);
    const predicting = view !== undefined && view.predicting;
    if (open !== undefined && (!predicting || open.expectOffset + open.lost === view.nextOffset)) {
      open.lost++;
    } else {
      this.ingest.pushMarker({
        id, json: "", fin: false, lost: 1, deliverTo: null, legacyHasIt: false, deliveredBy: predicting ? view : null,
        expectOffset: predicting ? view.nextOffset : -1, expectEpoch: predicting ? view.epoch! : -1,
      }, this.settings.redis.max_pending);
    }
    if (predicting) {
      view.nextOffset++;
      view.gapAhead = true;
    }
  }

  private confirmed(items: Pending[], results: AppendResult[]): void {
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      const [o, e, flags] = results[i];
      const offset = Number(o);
      const epoch = Number(e);
      const live = (v: View | null) => (v !== null && this.views.get(v.id) === v ? v : null);
      const by = live(item.deliveredBy);
      if (by !== null) {
        if (item.lost === 0) by.unconfirmed.shift();
        // Redis put it elsewhere than this view said (another life, another writer): the
        // view is re-read, and what its subscribers already got is remembered by new offset.
        if (flags & 1 || flags & 2) by.stale = true;
        if (flags & 1) by.ownDelivered.add(offset);
      }
      const to = live(item.deliverTo);
      if (item.deliverTo !== null) item.deliverTo.awaiting--;
      if (item.legacyHasIt) {
        item.deliverTo!.provisional--;
        if (to !== null) to.ownDelivered.add(offset);
      }
      if (item.lost > 0) {
        // A marker: nothing to deliver.
      } else if (flags & 2) {
        this.counters.late++;
        this.hooks.late?.({ id: item.id, baseOffset: epoch, nextOffset: epoch, finishedAt: 1 }, item.fin ? FINISHED_COMMAND : "message");
      } else if (to !== null && !to.stale && !to.resyncing) {
        if (to.epoch === null || to.epoch === epoch) {
          if (to.epoch === null) {
            // The first message of the channel's life: anything before it (another node's)
            // must come first, or the view is re-read.
            this.setEpoch(to, epoch);
            to.baseOffset = epoch;
            to.nextOffset = epoch;
          }
          if (offset === to.nextOffset) this.deliver(to, { offset, json: item.json, fin: item.fin }, item.legacyHasIt);
          else to.stale = true;
        } else {
          to.stale = true;
        }
      }
      if (flags & 4) this.hooks.truncated?.({ id: item.id, baseOffset: epoch, nextOffset: offset + 1, finishedAt: 0 });
      const view = this.views.get(item.id);
      if (view === undefined) continue;
      if (view.stale && view.awaiting === 0 && view.unconfirmed.length === 0) this.resync(view);
      else if (item.legacyHasIt && view.provisional === 0 && !view.stale && !view.resyncing) this.settled(view);
    }
  }

  // ---- delivery ----------------------------------------------------------------------------

  /** What waited for a view to know its channel's life (joiners, feed entries) goes on. */
  private settled(view: View): void {
    view.ownDelivered.clear();
    this.releaseHeld(view);
    for (const sub of [...view.joining.keys()]) this.join(view, sub);
  }

  /** A first message, before Redis has given it an offset: to the clients that need none. */
  private deliverToLegacy(view: View, json: string, fin: boolean): void {
    view.lastActivity = performance.now();
    for (const sub of view.subs) if (!sub.resumable) sub.send(json, -1);
    if (fin) {
      for (const sub of [...view.subs]) {
        if (sub.resumable) continue;
        view.subs.delete(sub);
        sub.end(CLOSE.FINISHED);
      }
    }
  }

  /** Whether `sub` already has the entry at `offset` of life `epoch` (or one after it). */
  private has(view: View, sub: Subscriber, epoch: number, offset: number): boolean {
    const last = view.sent.get(sub);
    return last !== undefined && last.epoch === epoch && offset <= last.offset;
  }

  /** Sends an entry of life `epoch` to `sub` unless it has it already: never twice, never backwards. */
  private send(view: View, sub: Subscriber, epoch: number, entry: { offset: number; json: string }): boolean {
    if (this.has(view, sub, epoch, entry.offset)) return false;
    view.sent.set(sub, { epoch, offset: entry.offset });
    sub.send(entry.json, entry.offset);
    return true;
  }

  private deliver(view: View, entry: Entry, legacyHasIt = false): void {
    const epoch = view.epoch!;
    if (view.gapAhead) {
      // Resumable clients hear of a hole once, right before the first message after it.
      view.gapAhead = false;
      for (const sub of view.subs) if (sub.resumable && !this.has(view, sub, epoch, entry.offset)) sub.gap(entry.offset);
    }
    view.nextOffset = entry.offset + 1;
    view.lastActivity = performance.now();
    if (view.reads > 0) view.recent.push(entry);
    for (const sub of view.subs) if (!legacyHasIt || sub.resumable) this.send(view, sub, epoch, entry);
    if (entry.fin) {
      view.finishedAt = view.lastActivity;
      const subs = [...view.subs];
      view.subs.clear();
      for (const sub of subs) sub.end(CLOSE.FINISHED);
      this.forgetIfIdle(view);
    }
  }

  subscribe(id: string, sub: Subscriber, after = -1): void {
    if (this.closing) {
      sub.end(CLOSE.SHUTDOWN);
      return;
    }
    this.counters.replays++;
    let view = this.views.get(id);
    if (view === undefined) {
      view = new View(id, performance.now());
      this.views.set(id, view);
      this.waitingCount++;
    }
    view.joining.set(sub, after);
    view.sent.delete(sub);
    if (!view.stale && !view.resyncing && view.provisional === 0) this.join(view, sub);
  }

  /** Reads the history for one joiner; it receives live messages from when the read is answered. */
  private join(view: View, sub: Subscriber): void {
    view.reads++;
    const done = (reply: ReadReply | null) => {
      view.reads--;
      const after = view.joining.get(sub);
      if (after === undefined || this.views.get(view.id) !== view) return this.settle(view);
      if (reply === null) {
        // Redis could not be asked: try again when it is back.
        setTimeout(() => view.joining.has(sub) && this.join(view, sub), 200).unref();
        return this.settle(view);
      }
      if (view.stale || view.resyncing || view.provisional > 0) return this.settle(view);
      view.joining.delete(sub);
      this.admit(view, sub, after, reply);
      this.settle(view);
    };
    this.link.run("read", [view.id, "-1"]).then((r) => done(JSON.parse(r) as ReadReply), () => done(null));
  }

  private settle(view: View): void {
    if (view.reads === 0) view.recent = [];
    this.forgetIfIdle(view);
  }

  /** Replays `reply` (and what this node delivered since) to a joiner, then keeps it for live messages. */
  private admit(view: View, sub: Subscriber, after: number, reply: ReadReply): void {
    if (reply.base === undefined) {
      if (view.epoch === null && this.waitingChannels > this.settings.max_waiting_channels) {
        this.counters.waitingRefused++;
        this.hooks.waitingRefused?.(view.id);
        sub.end(CLOSE.EVICTED);
        return;
      }
      if (view.epoch === null) {
        if (after >= 0) sub.gap(Number(reply.floor));
        view.subs.add(sub);
        return;
      }
      // Redis has lost what this view follows (flushed, or expired meanwhile).
      view.stale = true;
      view.joining.set(sub, after);
      this.resync(view);
      return;
    }
    const base = Number(reply.base);
    if (view.epoch === null) {
      this.setEpoch(view, base);
      view.baseOffset = base;
      view.nextOffset = Number(reply.next);
      if (reply.fin) view.finishedAt = performance.now();
      this.releaseHeld(view);
    } else if (view.epoch !== base) {
      view.stale = true;
      view.joining.set(sub, after);
      this.resync(view);
      return;
    }
    const entries = this.merge(view, reply);
    const first = Number(reply.first);
    const end = entries.length > 0 ? entries[entries.length - 1].offset + 1 : Number(reply.next);
    let from = first;
    if (after >= 0) {
      if (after + 1 < first || after >= end) sub.gap(first);
      else from = after + 1;
    }
    // The read may be ahead of the view (its feed entries not handled yet): the view's live
    // delivery resumes below `end`, and what this subscriber has from the read is skipped.
    for (const e of entries) {
      if (e.offset < from) continue;
      if (this.send(view, sub, base, e)) this.counters.replayedMessages++;
    }
    if (reply.fin || view.finishedAt !== 0) sub.end(CLOSE.FINISHED);
    else view.subs.add(sub);
  }

  /** The read history followed by what was delivered here beyond it, in offset order. */
  private merge(view: View, reply: ReadReply): Entry[] {
    const entries: Entry[] = (reply.entries ?? []).map(([o, json]) => ({ offset: Number(o), json, fin: false }));
    let next = entries.length > 0 ? entries[entries.length - 1].offset + 1 : Number(reply.next);
    for (const e of [...view.recent, ...view.unconfirmed].sort((a, b) => a.offset - b.offset)) {
      if (e.offset === next) {
        entries.push(e);
        next++;
      }
    }
    return entries;
  }

  unsubscribe(id: string, sub: Subscriber): void {
    const view = this.views.get(id);
    if (view === undefined) return;
    view.subs.delete(sub);
    view.joining.delete(sub);
    this.forgetIfIdle(view);
  }

  private forgetIfIdle(view: View): void {
    if (view.subs.size > 0 || view.joining.size > 0 || view.reads > 0 || view.resyncing) return;
    if (view.awaiting > 0 || view.unconfirmed.length > 0) return;
    this.remove(view);
  }

  /** Re-reads a view whose delivery cannot be vouched for, and brings every subscriber up to date. */
  private resync(view: View): void {
    if (view.resyncing || this.closing) return;
    view.resyncing = true;
    view.stale = false;
    this.counters.resyncs++;
    this.link.run("read", [view.id, "-1"]).then(
      (r) => this.resynced(view, JSON.parse(r) as ReadReply),
      () => {
        view.resyncing = false;
        view.stale = true;
        setTimeout(() => this.views.get(view.id) === view && view.stale && this.resync(view), 200).unref();
      },
    );
  }

  private resynced(view: View, reply: ReadReply): void {
    view.resyncing = false;
    if (this.views.get(view.id) !== view) return;
    if (reply.base === undefined) {
      // The channel is gone from Redis: its subscribers wait for its next life.
      for (const sub of view.subs) if (sub.resumable) sub.gap(Number(reply.floor));
      this.setEpoch(view, null);
      view.held = [];
      view.ownDelivered.clear();
    } else {
      const base = Number(reply.base);
      const entries = (reply.entries ?? []).map(([o, json]) => ({ offset: Number(o), json, fin: false }));
      const newLife = view.epoch !== base;
      const first = Number(reply.first);
      for (const sub of view.subs) {
        if (sub.resumable && (newLife || first > view.nextOffset)) sub.gap(first);
        for (const e of entries) {
          const seen = !sub.resumable && view.ownDelivered.has(e.offset)
            ? true
            : !newLife && e.offset < view.nextOffset && !(sub.resumable && first > view.nextOffset);
          if (!seen) this.send(view, sub, base, e);
        }
      }
      this.setEpoch(view, base);
      view.baseOffset = base;
      view.nextOffset = Number(reply.next);
      view.ownDelivered.clear();
      view.lastActivity = performance.now();
      if (reply.fin) {
        view.finishedAt = view.lastActivity;
        const subs = [...view.subs];
        view.subs.clear();
        for (const sub of subs) sub.end(CLOSE.FINISHED);
      }
      this.releaseHeld(view);
    }
    for (const sub of [...view.joining.keys()]) this.join(view, sub);
    this.forgetIfIdle(view);
  }

  private releaseHeld(view: View): void {
    const held = view.held;
    view.held = [];
    for (const { epoch, entry } of held) this.onEntry(view, epoch, entry);
  }

  // ---- the shared feed ---------------------------------------------------------------------

  /** The feed no longer holds this node's position: no view can vouch for what it missed. */
  private feedLost(): void {
    for (const view of this.views.values()) if (view.epoch !== null) this.markStale(view);
  }

  private markStale(view: View): void {
    view.stale = true;
    if (view.awaiting === 0 && view.unconfirmed.length === 0) this.resync(view);
  }

  private onFeed(fields: string[]): void {
    // This node's own messages were delivered here already (see redis-scripts.ts).
    if (fields[0] === "n" && fields[1] === this.node) return;
    const f: Record<string, string> = {};
    for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]] = fields[i + 1];
    const view = this.views.get(f.c);
    if (view === undefined) return;
    if (f.x === "evicted") {
      this.counters.evicted++;
      const subs = [...view.subs, ...view.joining.keys()];
      this.remove(view);
      for (const sub of subs) sub.end(CLOSE.EVICTED);
      this.hooks.dropped?.(view, "evicted");
      return;
    }
    const entry: Entry = { offset: Number(f.o), json: f.m ?? "", fin: f.f === "1" };
    if (f.x === "lost") {
      // Our own drops were accounted for when they happened.
      if (f.n !== this.node) this.onLost(view, Number(f.e), entry.offset, Number(f.l));
      return;
    }
    this.onEntry(view, Number(f.e), entry);
  }

  private onEntry(view: View, epoch: number, entry: Entry): void {
    if (view.resyncing || view.stale || view.provisional > 0) {
      view.held.push({ epoch, entry });
      return;
    }
    if (view.epoch === null) {
      // A channel only browsers had asked for has its first message.
      if (entry.offset !== epoch) return this.markStale(view);
      this.setEpoch(view, epoch);
      view.baseOffset = epoch;
      view.nextOffset = epoch;
    }
    if (epoch !== view.epoch || entry.offset > view.nextOffset) return this.markStale(view);
    if (entry.offset < view.nextOffset) return;
    this.deliver(view, entry);
  }

  private onLost(view: View, epoch: number, offset: number, count: number): void {
    if (view.epoch !== epoch || offset !== view.nextOffset || view.stale || view.resyncing) return this.markStale(view);
    view.nextOffset += count;
    view.gapAhead = true;
  }

  // ---- housekeeping ------------------------------------------------------------------------

  sweep(): void {
    const idleBefore = performance.now() - this.limits.idle_ttl * 1000;
    for (const view of [...this.views.values()]) {
      if (view.finishedAt !== 0 || view.lastActivity > idleBefore || view.resyncing || view.reads > 0) continue;
      this.counters.expired++;
      this.remove(view);
      const subs = [...view.subs];
      view.subs.clear();
      for (const sub of subs) sub.end(CLOSE.EXPIRED);
      // A channel only browsers asked for was never one: nothing to report.
      if (view.epoch !== null) this.hooks.dropped?.(view, "idle");
    }
    this.ingest.flush();
    if (this.link.up) {
      this.link.run("stats", []).then(
        (r) => (this.stats = JSON.parse(r) as typeof this.stats),
        () => {},
      );
      this.link.recheckFeed();
    }
  }

  async close(close: CloseReason, deadlineMs: number): Promise<void> {
    this.closing = true;
    if (this.pending > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.ingest.drained = resolve;
        timer = setTimeout(resolve, deadlineMs);
      });
      clearTimeout(timer);
      if (this.pending > 0) {
        this.hooks.notice?.("error", `Redis store: ${this.pending} broker messages could not be written to Redis before the stop (${this.link.lastError}): lost`);
      }
    }
    for (const view of this.views.values()) {
      const subs = [...view.subs, ...view.joining.keys()];
      view.subs.clear();
      view.joining.clear();
      for (const sub of subs) sub.end(close);
    }
    this.views.clear();
    this.waitingCount = 0;
    this.link.close();
  }
}

/** The URL without its password, for logs and /readyz. */
export function redactUrl(url: string): string {
  if (url.startsWith("unix:")) return url.replace(/^(unix:\/\/[^:@/]*:)[^@/]+@/, "$1***@");
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    return u.toString();
  } catch {
    return "(invalid URL)";
  }
}
