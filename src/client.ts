// One browser connection as the store sees it (a Subscriber): its queue of frames, their
// framing, the write and the slow-consumer rules: a bound per client, a bound on all clients'
// buffers together, and a time limit on a backlog that does not shrink.
//
// Calls go one way. The store calls send/gap/end while it iterates a channel's subscribers;
// those only queue frames, or write and close this one connection. The write queue cuts
// clients itself, after a turn's writes and when the gateway asks it to check the backlogs.
// Nothing here calls the store or the gateway: when a client is cut or ends, the gateway
// learns it from ws's 'close' event, which comes in a later turn, and only then
// unsubscribes it from the store.
import type { Socket } from "node:net";
import type { WebSocket } from "ws";
import type { CloseReason, Subscriber } from "./channel-store.ts";
import { CLOSE } from "./errors.ts";
import type { Log } from "./logger.ts";
import { gapNotice, OFFSET_SUFFIX, offsetPrefix, withOffset } from "./subscription.ts";

export interface WriteCounters {
  slowClients: number;
  bufferLimitCuts: number;
  stalledClients: number;
  sentFrames: number;
  sentBytes: number;
}

/** Where the cuts are reported: a rate-limited warning per kind (logger.ts's WarnLimiter). */
export interface CutReport {
  warn(kind: string, line: string): void;
}

export interface WriteLimits {
  /** limits.max_buffered_bytes */
  maxBufferedBytes: number;
  /** limits.max_total_buffered_bytes */
  maxTotalBufferedBytes: number;
  /** limits.backlog_timeout, in ms */
  backlogTimeoutMs: number;
}

const SEND_TEXT = Object.freeze({ binary: false });
const SUFFIX = Buffer.from(OFFSET_SUFFIX, "latin1");
/** Below this size a resumable frame is built whole: one write beats three, and a copy is cheap. */
const SHARE_FROM = 1024;
/** A queued frame that goes out as it is (legacy messages, notices), not wrapped with an offset. */
const AS_IS = -1;
/** How long a cut client may take to answer our close frame before its socket is destroyed. */
const CUT_GRACE_MS = 1000;

/**
 * Collects the clients with queued frames during one event-loop turn and writes them all
 * after it, each client's frames in one corked write. A message that several clients get
 * in the same turn is framed once for all of them. Keeps track of the clients whose peer has
 * not taken everything written to it (their backlog), and of those bytes in total.
 */
export class WriteQueue {
  private dirty: Client[] = [];
  private readonly payloads = new Map<string, Buffer>();
  private scheduled = false;
  /** Clients with a backlog as of their last flush or check. */
  private readonly behind = new Set<Client>();
  /** The sum of their backlogs as last seen (an upper bound: a peer that reads only shrinks it). */
  bufferedBytes = 0;
  readonly counters: WriteCounters;
  limits: WriteLimits;
  readonly report: CutReport;

  constructor(limits: WriteLimits, counters: WriteCounters, report: CutReport) {
    this.limits = limits;
    this.counters = counters;
    this.report = report;
  }

  add(client: Client): void {
    this.dirty.push(client);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  /**
   * A message's bytes, shared by every resumable client that gets it in this turn: each of
   * them writes only its own frame header and offset around it. Framing the whole message per
   * client would allocate a copy for each, which many clients that do not read (the kernel
   * still takes a few MB from each) turn into hundreds of MB of garbage.
   */
  sharedPayload(json: string): Buffer {
    let bytes = this.payloads.get(json);
    if (bytes === undefined) {
      bytes = Buffer.from(json, "latin1");
      this.payloads.set(json, bytes);
    }
    return bytes;
  }

  /**
   * Periodic: re-reads every backlog, cuts the clients whose backlog has not shrunk for
   * limits.backlog_timeout, and enforces the total bound.
   */
  check(now: number): void {
    for (const client of this.behind) {
      this.track(client, now);
      if (client.done || now - client.backlogSince < this.limits.backlogTimeoutMs) continue;
      this.counters.stalledClients++;
      this.report.warn("stalled",
        `client #${client.id} (${client.ip}) on channel ${client.channel} took none of its ${client.backlog}-byte backlog for ${this.limits.backlogTimeoutMs / 1000} s (limits.backlog_timeout): disconnected`);
      client.cut(CLOSE.SLOW_CLIENT);
    }
    if (this.bufferedBytes > this.limits.maxTotalBufferedBytes) this.enforceTotal(now);
  }

  /** A client whose connection has closed holds nothing any more. */
  forget(client: Client): void {
    if (this.behind.delete(client)) this.bufferedBytes -= client.backlog;
    client.backlog = 0;
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const dirty = this.dirty;
    this.dirty = [];
    for (let i = 0; i < dirty.length; i++) dirty[i].flush();
    this.payloads.clear();
    // As for one client's bound, what the peers had not taken before this turn decides: a
    // burst written in this turn is not held against clients that read.
    const now = performance.now();
    for (let i = 0; i < dirty.length; i++) this.track(dirty[i], now, dirty[i].waitingBeforeFlush);
    if (this.bufferedBytes > this.limits.maxTotalBufferedBytes) this.enforceTotal(now);
  };

  /** Cut and closing clients are tracked too: until their socket is gone, what they were not sent is still here. */
  private track(client: Client, now: number, waiting = client.ws.bufferedAmount): void {
    this.bufferedBytes += waiting - client.backlog;
    client.backlog = waiting;
    if (waiting === 0) {
      this.behind.delete(client);
    } else if (!this.behind.has(client) || waiting < client.backlogLow) {
      // It took something since it was last seen (or has just started to lag).
      this.behind.add(client);
      client.backlogLow = waiting;
      client.backlogSince = now;
    }
  }

  /**
   * Over the total bound: first the clients already cut (or closing) that still hold a
   * backlog are dropped at once, largest first; then, if the rest is still over, the live
   * clients furthest behind are closed with 4003, until the backlogs left to live clients are
   * within the bound. Those get the usual grace to take their close frame, unless the total
   * is still over at the next turn or check. So the bytes waiting stay below about twice the
   * bound, plus what one turn writes.
   */
  private enforceTotal(now: number): void {
    // Those not written to in this turn may have been read from since they were last seen.
    for (const client of this.behind) this.track(client, now, Math.min(client.backlog, client.ws.bufferedAmount));
    const limit = this.limits.maxTotalBufferedBytes;
    if (this.bufferedBytes <= limit) return;
    const furthest = [...this.behind].sort((a, b) => b.backlog - a.backlog);
    for (const client of furthest) {
      if (this.bufferedBytes <= limit) return;
      if (!client.done) continue;
      client.ws.terminate();
      this.forget(client);
    }
    let live = this.bufferedBytes;
    for (const client of furthest) {
      if (live <= limit) return;
      if (client.done) continue;
      this.counters.bufferLimitCuts++;
      this.report.warn("total-buffered",
        `client #${client.id} (${client.ip}) on channel ${client.channel} disconnected: the clients' buffers hold ${this.bufferedBytes} bytes > limits.max_total_buffered_bytes ${limit}, and it was furthest behind (${client.backlog} bytes; it can reconnect and replay)`);
      live -= client.backlog;
      client.cut(CLOSE.SLOW_CLIENT);
    }
  }
}

export class Client implements Subscriber {
  readonly ws: WebSocket;
  /** The TCP (or TLS) socket under ws, as the HTTP server's 'upgrade' event handed it over. */
  readonly socket: Socket;
  readonly ip: string;
  readonly id: number;
  readonly resumable: boolean;
  /** Without a negotiated extension a frame is plain bytes, so prepared frames can be written as they are. */
  private readonly raw: boolean;
  private readonly queue: WriteQueue;
  channel: string | null = null;
  subscribeTimer: ReturnType<typeof setTimeout> | null = null;
  /** Keepalive: answered the last ping; when the next one is due. */
  alive = true;
  nextPing = 0;
  /** No more frames will be sent (ended, cut or closed by the peer). */
  done = false;
  /** Bytes its peer had not taken when last seen, the lowest that backlog has been since it last shrank, and when that was (WriteQueue). */
  backlog = 0;
  backlogLow = 0;
  backlogSince = 0;
  /** What its peer had not taken when its last flush began. */
  waitingBeforeFlush = 0;
  /** Queued payloads, and for each the offset to wrap it with (resumable clients) or AS_IS. */
  private readonly pending: string[] = [];
  private readonly offsets: number[] = [];
  private pendingBytes = 0;

  constructor(ws: WebSocket, socket: Socket, ip: string, id: number, resumable: boolean, queue: WriteQueue) {
    this.ws = ws;
    this.socket = socket;
    this.ip = ip;
    this.id = id;
    this.resumable = resumable;
    this.raw = ws.extensions === "";
    this.queue = queue;
  }

  send(json: string, offset: number): void {
    if (this.done) return;
    if (this.resumable) this.enqueue(json, offset, offsetPrefix(offset).length + json.length + OFFSET_SUFFIX.length);
    else this.enqueue(json, AS_IS, json.length);
  }

  gap(firstOffset: number): void {
    if (!this.resumable || this.done) return;
    const notice = gapNotice(firstOffset);
    this.enqueue(notice, AS_IS, notice.length);
  }

  /** Writes what is queued and the close frame together, in one write. */
  end(close: CloseReason): void {
    if (this.done) return;
    this.socket.cork();
    this.flush();
    if (!this.done) {
      this.done = true;
      this.ws.close(close.code, close.reason);
    }
    this.socket.uncork();
  }

  /** Closes at once, discarding what has not been written: the peer is not reading. */
  cut(close: CloseReason): void {
    this.done = true;
    this.pending.length = 0;
    this.offsets.length = 0;
    this.pendingBytes = 0;
    this.ws.close(close.code, close.reason);
    setTimeout(() => this.ws.terminate(), CUT_GRACE_MS).unref();
  }

  /** Writes the queued frames in one corked batch, or cuts a client that cannot keep up. */
  flush(): void {
    if (this.pending.length === 0) return;
    // The two arrays are used again for the next turn: everything in them is written (copied
    // into frames) before this returns.
    const frames = this.pending;
    const offsets = this.offsets;
    const bytes = this.pendingBytes;
    this.pendingBytes = 0;
    try {
      this.write(frames, offsets, bytes);
    } finally {
      frames.length = 0;
      offsets.length = 0;
    }
  }

  private write(frames: readonly string[], offsets: readonly number[], bytes: number): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    const counters = this.queue.counters;
    // What the peer has not taken since earlier turns decides; a burst that arrives within
    // one turn is not held against a client that reads. Memory per client stays below the
    // limit plus one turn's worth (the broker link yields every few hundred kilobytes).
    const limit = this.queue.limits.maxBufferedBytes;
    const waiting = this.ws.bufferedAmount;
    this.waitingBeforeFlush = waiting;
    if (waiting > limit) {
      counters.slowClients++;
      this.queue.report.warn("slow",
        `client #${this.id} (${this.ip}) on channel ${this.channel} fell behind: ${waiting} bytes not taken > limits.max_buffered_bytes ${limit}; disconnected (it can reconnect and replay)`,
      );
      this.cut(CLOSE.SLOW_CLIENT);
      return;
    }
    if (this.raw) {
      this.writeRaw(frames, offsets);
    } else {
      this.socket.cork();
      for (let i = 0; i < frames.length; i++) {
        this.ws.send(offsets[i] === AS_IS ? frames[i] : withOffset(frames[i], offsets[i]), SEND_TEXT);
      }
      this.socket.uncork();
    }
    counters.sentFrames += frames.length;
    counters.sentBytes += bytes;
  }

  /**
   * Frames without an extension, in as few writes as can be: each run of small frames is built
   * into one buffer (one write per client per turn is the common case); a large message is
   * written around the bytes that every client getting it in this turn shares.
   */
  private writeRaw(frames: readonly string[], offsets: readonly number[]): void {
    const socket = this.socket;
    let corked = false;
    let from = 0;
    for (let i = 0; i <= frames.length; i++) {
      const large = i < frames.length && frames[i].length >= SHARE_FROM;
      if (i < frames.length && !large) continue;
      // A large frame means several writes: corked, so that they leave together. One buffer
      // (the common case) is written as it is: corked, it would be queued and handled again.
      if (large && !corked) {
        socket.cork();
        corked = true;
      }
      if (i > from) socket.write(batch(frames, offsets, from, i));
      if (large) {
        const payload = this.queue.sharedPayload(frames[i]);
        if (offsets[i] === AS_IS) {
          socket.write(frameHead("", payload.length));
          socket.write(payload);
        } else {
          // Its own header and offset, the shared message, the closing brace.
          socket.write(frameHead(offsetPrefix(offsets[i]), payload.length + SUFFIX.length));
          socket.write(payload);
          socket.write(SUFFIX);
        }
      }
      from = i + 1;
    }
    if (corked) socket.uncork();
  }

  private enqueue(payload: string, offset: number, bytes: number): void {
    this.pending.push(payload);
    this.offsets.push(offset);
    this.pendingBytes += bytes;
    if (this.pending.length === 1) this.queue.add(this);
  }
}

function headerLength(n: number): number {
  return n < 126 ? 2 : n < 65536 ? 4 : 10;
}

function writeHeader(out: Buffer, at: number, n: number): number {
  out[at] = 0x81;
  if (n < 126) {
    out[at + 1] = n;
    return at + 2;
  }
  if (n < 65536) {
    out[at + 1] = 126;
    out.writeUInt16BE(n, at + 2);
    return at + 4;
  }
  out[at + 1] = 127;
  out.writeUInt32BE(0, at + 2);
  out.writeUInt32BE(n, at + 6);
  return at + 10;
}

/** frames[from..to) as unmasked text frames in one buffer; each wrapped with its offset unless AS_IS. */
function batch(frames: readonly string[], offsets: readonly number[], from: number, to: number): Buffer {
  let size = 0;
  for (let i = from; i < to; i++) {
    const n = offsets[i] === AS_IS ? frames[i].length : offsetPrefix(offsets[i]).length + frames[i].length + SUFFIX.length;
    size += headerLength(n) + n;
  }
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (let i = from; i < to; i++) {
    const json = frames[i];
    if (offsets[i] === AS_IS) {
      at = writeHeader(out, at, json.length);
    } else {
      const prefix = offsetPrefix(offsets[i]);
      at = writeHeader(out, at, prefix.length + json.length + SUFFIX.length);
      at += out.write(prefix, at, "latin1");
    }
    at += out.write(json, at, "latin1");
    if (offsets[i] !== AS_IS) out[at++] = 0x7d; // "}"
  }
  return out;
}

/** An unmasked, final text frame: the payload is ASCII, so its characters are its bytes. */
export function textFrame(payload: string): Buffer {
  return frameHead(payload, 0);
}

/** The start of a text frame whose payload is `start` followed by `more` bytes written separately. */
function frameHead(start: string, more: number): Buffer {
  const n = start.length + more;
  const head = Buffer.allocUnsafe(headerLength(n) + start.length);
  head.write(start, writeHeader(head, 0, n), "latin1");
  return head;
}
