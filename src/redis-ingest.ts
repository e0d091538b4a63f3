// The Redis store's way in: broker messages wait here, in order, and go to Redis one batch
// at a time (the APPEND script, redis-scripts.ts), so that nothing the ZeroMQ loop does ever
// waits for Redis. The queue is bounded (store.redis.max_pending): past it a message is not
// kept but counted into a marker, one per channel however many it stands for, which uses up
// the lost messages' offsets in Redis so that every reader sees the hole. A batch whose reply
// was lost is sent again with the same sequence number; Redis answers it as the first time.
import type { RedisLink } from "./redis-link.ts";

const BATCH_MESSAGES = 1000;
const BATCH_BYTES = 1 << 20;

/** One message (or drop marker) on its way; `V` is what the store attaches to follow it. */
export interface Pending<V> {
  readonly id: string;
  readonly json: string;
  readonly fin: boolean;
  /** The offset and epoch the store's view gave it (-1: none; Redis decides). */
  readonly expectOffset: number;
  readonly expectEpoch: number;
  /** The view that waits for its reply to deliver it (it was not delivered at once). */
  readonly deliverTo: V | null;
  /** Its legacy subscribers got it at once: the reply brings it to the resumable ones. */
  readonly legacyHasIt: boolean;
  /** The view that delivered it at once (its reply confirms the offset). */
  readonly deliveredBy: V | null;
  /** A marker for this many messages dropped past max_pending (json is empty). */
  lost: number;
}

/** Per message of a batch: its offset and the channel's epoch (decimal text), and flags (redis-scripts.ts). */
export type AppendResult = [offset: string, epoch: string, flags: number];

export class IngestQueue<V> {
  private queue: Pending<V>[] = [];
  /** Drop markers still queued, by channel: further drops for it join them. */
  private readonly markers = new Map<string, Pending<V>>();
  private batch: { items: Pending<V>[]; args: string[] } | null = null;
  private batchSent = false;
  private seq = 0;
  private readonly link: RedisLink;
  private readonly node: string;
  /** The APPEND arguments before the messages: node, sequence, then the retention figures. */
  private readonly head: () => string[];
  private readonly confirmed: (items: Pending<V>[], results: AppendResult[]) => void;
  drained: (() => void) | null = null;

  constructor(link: RedisLink, node: string, head: () => string[], confirmed: (items: Pending<V>[], results: AppendResult[]) => void) {
    this.link = link;
    this.node = node;
    this.head = head;
    this.confirmed = confirmed;
  }

  get pending(): number {
    return this.queue.length + (this.batch?.items.length ?? 0);
  }

  push(item: Pending<V>): void {
    this.markers.delete(item.id);
    this.queue.push(item);
    this.flush();
  }

  /** The marker a drop for channel `id` would join, if there is one. */
  openMarker(id: string): Pending<V> | undefined {
    return this.markers.get(id);
  }

  /** Queues a new drop marker, unless markers already hold a tenth of `maxPending` (then the drop goes unmarked). */
  pushMarker(marker: Pending<V>, maxPending: number): void {
    if (this.markers.size >= Math.max(100, maxPending / 10)) return;
    this.markers.set(marker.id, marker);
    this.queue.push(marker);
  }

  /** The link was lost: the batch in flight goes again once it is back. */
  resend(): void {
    if (this.batch !== null) this.batchSent = false;
  }

  flush(): void {
    if (!this.link.up || (this.batch !== null && this.batchSent)) return;
    if (this.batch === null) {
      if (this.queue.length === 0) return;
      const items: Pending<V>[] = [];
      let bytes = 0;
      while (this.queue.length > 0 && items.length < BATCH_MESSAGES && bytes < BATCH_BYTES) {
        const item = this.queue.shift()!;
        if (this.markers.get(item.id) === item) this.markers.delete(item.id);
        items.push(item);
        bytes += item.json.length;
      }
      const args = [this.node, String(++this.seq), ...this.head()];
      for (const item of items) {
        args.push(item.id, item.fin ? "1" : "0", item.lost > 0 ? `\u0000${item.lost}` : item.json, String(item.expectOffset), String(item.expectEpoch));
      }
      this.batch = { items, args };
    }
    const batch = this.batch;
    this.batchSent = true;
    this.link.run("append", batch.args).then(
      (reply) => {
        if (this.batch !== batch) return;
        this.batch = null;
        this.batchSent = false;
        this.confirmed(batch.items, JSON.parse(reply) as AppendResult[]);
        this.flush();
        if (this.pending === 0) this.drained?.();
      },
      () => {
        if (this.batch === batch) this.batchSent = false;
      },
    );
  }
}
