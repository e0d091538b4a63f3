// A channel's kept messages as bytes, off the V8 heap.
//
// Kept as strings, every message survives two scavenges of V8's young generation, which copy
// it each time: with the history of running jobs, the monitor's scavenges did about twice the
// floor relay's work, and a message that arrives during one waits for it (bench/README.md,
// "The paced p99"). Here a message's JSON is written into fixed blocks of BLOCK bytes, carved
// from SLAB-byte buffers that a store's BlockPool allocates as it needs them and then keeps:
// a block that a channel lets go of (trimmed, dropped) goes back to the pool for the next one,
// so no ArrayBuffer is left for the GC to find, and a kept message is no object at all. The
// channel remembers where each message ends; a message is read back into a string only to be
// replayed, shown or saved.
//
// The bytes are the JSON's latin1 form when every character is ASCII (the common case), else
// its UTF-16: two bytes a character, which gives back any string exactly (UTF-8 would not keep
// a lone surrogate). The store's accounting (retention's byte caps) still counts the JSON's
// length.

/** Bytes per block: small enough that a short job wastes little, large enough that few messages span two. */
export const BLOCK = 512;
const BLOCK_SHIFT = 9;
/** Bytes per buffer the pool allocates (2,048 blocks). */
const SLAB = 1 << 20;
const SLAB_SHIFT = 20 - BLOCK_SHIFT;
const IN_SLAB = (1 << SLAB_SHIFT) - 1;
/** Messages up to this size that span blocks are encoded in the pool's scratch buffer. */
const SCRATCH_MAX = 64 * 1024;

/** The blocks of one store's channels. Blocks are numbered: slab * blocks-per-slab + index in the slab. */
export class BlockPool {
  private readonly slabs: Buffer[] = [];
  private readonly free: number[] = [];
  /** For messages that span blocks: their bytes, encoded once. */
  private readonly scratch = Buffer.allocUnsafeSlow(SCRATCH_MAX);

  take(): number {
    if (this.free.length === 0) {
      const n = this.slabs.length;
      this.slabs.push(Buffer.allocUnsafeSlow(SLAB));
      // Taken lowest first, so that a fresh slab's pages are touched in order.
      for (let i = IN_SLAB; i >= 0; i--) this.free.push((n << SLAB_SHIFT) | i);
    }
    return this.free.pop()!;
  }

  give(block: number): void {
    this.free.push(block);
  }

  /** Bytes the pool holds, in use or free. */
  get size(): number {
    return this.slabs.length * SLAB;
  }

  slab(block: number): Buffer {
    return this.slabs[block >>> SLAB_SHIFT];
  }

  encode(json: string, bytes: number, wide: boolean): Buffer {
    // A rare large message gets a buffer of its own, so that the pool does not keep one that size.
    const out = bytes <= SCRATCH_MAX ? this.scratch : Buffer.allocUnsafeSlow(bytes);
    out.write(json, 0, bytes, wide ? "utf16le" : "latin1");
    return out;
  }
}

/** Where block `block` starts in its slab. */
const offsetOf = (block: number) => (block & IN_SLAB) << BLOCK_SHIFT;

/**
 * One channel's messages, oldest first; messages can be dropped from the front. Positions count
 * the channel's bytes from the start of its first block ever.
 */
export class History {
  private readonly pool: BlockPool;
  /** Its blocks in order: blocks[first..]; blocks[first] starts at position `base`. */
  private blocks: number[] = [];
  private first = 0;
  private base = 0;
  /** Where each message ends; negative for a message kept as UTF-16. Messages head.. are kept. */
  private ends: number[] = [];
  private head = 0;
  /** Where message `head` starts, and where the next one will. */
  private start = 0;
  private end = 0;

  constructor(pool: BlockPool) {
    this.pool = pool;
  }

  get length(): number {
    return this.ends.length - this.head;
  }

  push(json: string): void {
    // A string of ASCII only has as many UTF-8 bytes as characters, and is its own latin1.
    const wide = Buffer.byteLength(json, "utf8") !== json.length;
    const bytes = wide ? json.length * 2 : json.length;
    const used = this.end - this.base;
    const room = (this.blocks.length - this.first) * BLOCK - used;
    if (bytes === 0) {
      // Nothing to write (and maybe no block yet).
    } else if (bytes <= room) {
      const block = this.blocks[this.blocks.length - 1];
      this.pool.slab(block).write(json, offsetOf(block) + (used % BLOCK), bytes, wide ? "utf16le" : "latin1");
    } else {
      const src = this.pool.encode(json, bytes, wide);
      let from = 0;
      if (room > 0) {
        const block = this.blocks[this.blocks.length - 1];
        src.copy(this.pool.slab(block), offsetOf(block) + BLOCK - room, 0, room);
        from = room;
      }
      while (from < bytes) {
        const block = this.pool.take();
        this.blocks.push(block);
        const n = Math.min(BLOCK, bytes - from);
        src.copy(this.pool.slab(block), offsetOf(block), from, from + n);
        from += n;
      }
    }
    this.end += bytes;
    this.ends.push(wide ? -this.end : this.end);
  }

  /** The i-th kept message (0: the oldest kept). */
  at(i: number): string {
    const k = this.head + i;
    const from = k === this.head ? this.start : Math.abs(this.ends[k - 1]);
    const stop = this.ends[k];
    return this.read(from, Math.abs(stop), stop < 0);
  }

  /** Drops the oldest kept message; gives its JSON's length. */
  shift(): number {
    const k = this.head;
    const stop = this.ends[k];
    const length = stop < 0 ? (-stop - this.start) / 2 : stop - this.start;
    this.head++;
    this.start = Math.abs(stop);
    // Blocks wholly before the oldest kept message go back; the last one stays for the next.
    while (this.blocks.length - this.first > 1 && this.start - this.base >= BLOCK) {
      this.pool.give(this.blocks[this.first++]);
      this.base += BLOCK;
    }
    if ((this.head > 64 && this.head * 2 > this.ends.length) || (this.first > 64 && this.first * 2 > this.blocks.length)) this.compact();
    return length;
  }

  /** Drops what the lists still hold of dropped messages and blocks, and the room pushing left in them. */
  compact(): void {
    this.ends = this.ends.slice(this.head);
    this.head = 0;
    this.blocks = this.blocks.slice(this.first);
    this.first = 0;
  }

  /** Gives every block back; the history is empty after it. */
  release(): void {
    for (let b = this.first; b < this.blocks.length; b++) this.pool.give(this.blocks[b]);
    this.blocks = [];
    this.first = 0;
    this.ends = [];
    this.head = 0;
    this.base = this.start = this.end = 0;
  }

  toArray(): string[] {
    const out: string[] = [];
    for (let i = 0; i < this.length; i++) out.push(this.at(i));
    return out;
  }

  private read(from: number, to: number, wide: boolean): string {
    if (to === from) return "";
    const encoding = wide ? "utf16le" : "latin1";
    // Positions relative to blocks[0] can pass 2^31 (retention.max_bytes_per_channel has no
    // ceiling, and UTF-16 doubles it): plain arithmetic, not 32-bit operators.
    const first = this.first + Math.floor((from - this.base) / BLOCK);
    const last = this.first + Math.floor((to - 1 - this.base) / BLOCK);
    const at = (from - this.base) % BLOCK;
    if (first === last) {
      const block = this.blocks[first];
      const o = offsetOf(block) + at;
      return this.pool.slab(block).toString(encoding, o, o + (to - from));
    }
    const parts: Buffer[] = [];
    for (let b = first; b <= last; b++) {
      const block = this.blocks[b];
      const lo = b === first ? at : 0;
      const hi = b === last ? ((to - 1 - this.base) % BLOCK) + 1 : BLOCK;
      parts.push(this.pool.slab(block).subarray(offsetOf(block) + lo, offsetOf(block) + hi));
    }
    return Buffer.concat(parts).toString(encoding);
  }
}
