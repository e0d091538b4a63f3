// One browser connection as the store sees it (a Subscriber): its queue of frames, their
// framing, the write and the slow-consumer rule.
//
// Calls go one way. The store calls send/gap/end while it iterates a channel's subscribers;
// those only queue frames, or write and close this one connection. Nothing here calls the
// store or the gateway: when a client is cut or ends, the gateway learns it from ws's
// 'close' event, which comes in a later turn, and only then unsubscribes it from the store.
import type { Socket } from "node:net";
import type { WebSocket } from "ws";
import type { CloseReason, Subscriber } from "./channel-store.ts";
import { CLOSE } from "./errors.ts";
import type { Log } from "./logger.ts";
import { gapNotice, withOffset } from "./subscription.ts";

export interface WriteCounters {
  slowClients: number;
  sentFrames: number;
  sentBytes: number;
}

const SEND_TEXT = Object.freeze({ binary: false });
/** How long a cut client may take to answer our close frame before its socket is destroyed. */
const CUT_GRACE_MS = 1000;

/**
 * Collects the clients with queued frames during one event-loop turn and writes them all
 * after it, each client's frames in one corked write. A message that several clients get
 * in the same turn is framed once for all of them.
 */
export class WriteQueue {
  private dirty: Client[] = [];
  private readonly frames = new Map<string, Buffer>();
  private scheduled = false;
  readonly counters: WriteCounters;
  /** limits.max_buffered_bytes */
  maxBufferedBytes: number;
  readonly log: Log;

  constructor(maxBufferedBytes: number, counters: WriteCounters, log: Log) {
    this.maxBufferedBytes = maxBufferedBytes;
    this.counters = counters;
    this.log = log;
  }

  add(client: Client): void {
    this.dirty.push(client);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  /** The frame for a payload that many subscribers share, built once per turn. */
  sharedFrame(payload: string): Buffer {
    let frame = this.frames.get(payload);
    if (frame === undefined) {
      frame = textFrame(payload);
      this.frames.set(payload, frame);
    }
    return frame;
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const dirty = this.dirty;
    this.dirty = [];
    for (let i = 0; i < dirty.length; i++) dirty[i].flush();
    this.frames.clear();
  };
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
  private pending: string[] = [];
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
    this.enqueue(this.resumable ? withOffset(json, offset) : json);
  }

  gap(firstOffset: number): void {
    if (this.resumable && !this.done) this.enqueue(gapNotice(firstOffset));
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
    this.pending = [];
    this.pendingBytes = 0;
    this.ws.close(close.code, close.reason);
    setTimeout(() => this.ws.terminate(), CUT_GRACE_MS).unref();
  }

  /** Writes the queued frames in one corked batch, or cuts a client that cannot keep up. */
  flush(): void {
    if (this.pending.length === 0) return;
    const frames = this.pending;
    const bytes = this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
    if (this.ws.readyState !== this.ws.OPEN) return;
    const counters = this.queue.counters;
    // What the peer has not taken since earlier turns decides; a burst that arrives within
    // one turn is not held against a client that reads. Memory per client stays below the
    // limit plus one turn's worth (the broker link yields every few hundred kilobytes).
    const limit = this.queue.maxBufferedBytes;
    const waiting = this.ws.bufferedAmount;
    if (waiting > limit) {
      counters.slowClients++;
      this.queue.log.warning(
        `client #${this.id} (${this.ip}) on channel ${this.channel} fell behind: ${waiting} bytes not taken > limits.max_buffered_bytes ${limit}; disconnected (it can reconnect and replay)`,
      );
      this.cut(CLOSE.SLOW_CLIENT);
      return;
    }
    const socket = this.socket;
    socket.cork();
    if (!this.raw) {
      for (let i = 0; i < frames.length; i++) this.ws.send(frames[i], SEND_TEXT);
    } else if (this.resumable) {
      // Each resumable client's frames carry its own offsets: nothing to share.
      for (let i = 0; i < frames.length; i++) socket.write(textFrame(frames[i]));
    } else {
      for (let i = 0; i < frames.length; i++) socket.write(this.queue.sharedFrame(frames[i]));
    }
    socket.uncork();
    counters.sentFrames += frames.length;
    counters.sentBytes += bytes;
  }

  private enqueue(frame: string): void {
    this.pending.push(frame);
    this.pendingBytes += frame.length;
    if (this.pending.length === 1) this.queue.add(this);
  }
}

/** An unmasked, final text frame: the payload is ASCII, so its characters are its bytes. */
export function textFrame(payload: string): Buffer {
  const n = payload.length;
  const header = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(header + n);
  frame[0] = 0x81;
  if (header === 2) {
    frame[1] = n;
  } else if (header === 4) {
    frame[1] = 126;
    frame.writeUInt16BE(n, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(0, 2);
    frame.writeUInt32BE(n, 6);
  }
  frame.write(payload, header, "latin1");
  return frame;
}
