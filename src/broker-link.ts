// The broker side: a ZeroMQ ROUTER socket bound with the routing id the broker addresses
// ("recodex-monitor"). Receives only; never waits for anything on the browser side.
import * as zmq from "zeromq";
import type { Address } from "./config.ts";
import { monitorError, reasonOf } from "./errors.ts";
import { parseFrames, type ParsedFrames } from "./frames.ts";

export const ROUTING_ID = "recodex-monitor";

export interface BrokerHandlers {
  message(parsed: Extract<ParsedFrames, { kind: "message" }>): void;
  invalid(reason: string, channel: string | undefined): void;
  exit(): void;
  peer(event: "connected" | "disconnected", address: string): void;
  /** libzmq could not accept a peer (EMFILE: the process is out of file descriptors). */
  acceptFailed(reason: string): void;
}

// Under Deno, zeromq's wait for readability (a libuv poll handle) never fires, while
// reading a socket that is already readable works: there the loop polls `readable`.
const POLL_ONLY = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";

const YIELD_MESSAGES = 2048;
const MAX_FRAME_BYTES = 64 * 1024 * 1024;
const YIELD_BYTES = 256 * 1024;
const DRAIN_QUIET_MS = 50;
const HANDSHAKE_MS = 10_000;
const CHECKED_READS = 8;
const EVENT_BATCH = 128;
const ACCEPT_STORM_PAUSE_MS = 50;

export function zmqEndpoint([host, port]: Address): string {
  const h = host === "" || host === "0.0.0.0" ? "*" : host.includes(":") ? `[${host}]` : host;
  return `tcp://${h}:${port === 0 ? "*" : port}`;
}

export class BrokerLink {
  private readonly socket: zmq.Router;
  private readonly handlers: BrokerHandlers;
  private maxChannelLength: number;
  private maxMessageLength: number;
  private closed = false;
  private loop: Promise<void> | null = null;
  /** Messages the receive loop has taken from the socket (drain() watches it). */
  private taken = 0;
  peers = 0;
  endpoint = "";

  constructor(handlers: BrokerHandlers, maxChannelLength: number, maxMessageLength: number) {
    this.handlers = handlers;
    this.maxChannelLength = maxChannelLength;
    this.maxMessageLength = maxMessageLength;
    // libzmq drops a peer that sends a frame over maxMessageSize before it is ever
    // allocated here: a hard ceiling far above any real message.
    // A peer that has not finished the ZeroMQ handshake within HANDSHAKE_MS is dropped, so
    // that connections that never speak ZMTP free their descriptors soon.
    this.socket = new zmq.Router({
      routingId: ROUTING_ID,
      linger: 0,
      maxMessageSize: MAX_FRAME_BYTES,
      handshakeInterval: HANDSHAKE_MS,
    });
  }

  setLimits(maxChannelLength: number, maxMessageLength: number): void {
    this.maxChannelLength = maxChannelLength;
    this.maxMessageLength = maxMessageLength;
  }

  async bind(address: Address): Promise<void> {
    const endpoint = zmqEndpoint(address);
    if (address[0].includes(":") || address[0] === "") this.socket.ipv6 = true;
    try {
      await this.socket.bind(endpoint);
    } catch (err) {
      this.socket.close();
      throw monitorError("RMON_ERR_BIND", { what: "the broker (ZeroMQ)", address: endpoint, key: "zeromq_uri", reason: reasonOf(err) });
    }
    this.endpoint = this.socket.lastEndpoint ?? endpoint;
    void this.watchPeers();
  }

  /** Receives until close(); each message is handled synchronously before the next. */
  run(): Promise<void> {
    this.loop ??= this.receiveLoop();
    return this.loop;
  }

  private async receiveLoop(): Promise<void> {
    const handlers = this.handlers;
    const socket = this.socket;
    let idleSince = Date.now();
    let received = 0;
    let receivedBytes = 0;
    // Reading a burst: receiveTimeout 0 makes each receive one non-blocking read. With the
    // default (-1), zeromq.js asks libzmq whether the socket is readable before every read
    // (a system call or two per message) and defers every 512th read to a later turn; that is
    // right for the wait, not for a queue we already know is full. A long burst ends at the
    // first EAGAIN (one rejected receive, ~5 µs, per burst); the first CHECKED_READS reads of
    // a burst ask first, so that the pairs and triples of a paced flow do not pay for one.
    let burst = 0;
    try {
      while (!this.closed) {
        if (POLL_ONLY) {
          if (!socket.readable) {
            await new Promise((r) => setTimeout(r, Date.now() - idleSince < 1000 ? 1 : 10));
            continue;
          }
          idleSince = Date.now();
        }
        // zeromq resolves a receive at once while messages are queued, so a flood would
        // never leave the microtask queue: give sockets and timers a turn every 2048 messages
        // or 256 KB (larger batches mean fewer write calls per message; a turn stays within
        // milliseconds, and what one turn queues for a client stays small).
        if (++received >= YIELD_MESSAGES || receivedBytes >= YIELD_BYTES) {
          received = 0;
          receivedBytes = 0;
          await new Promise((r) => setImmediate(r));
          if (this.closed) break;
        }
        let frames: Buffer[];
        try {
          if (burst > 0 && burst < CHECKED_READS && !socket.readable) {
            burst = 0;
            socket.receiveTimeout = -1;
            continue;
          }
          frames = await socket.receive();
        } catch (err) {
          // EAGAIN: the burst is over.
          if ((err as { code?: string }).code !== "EAGAIN" || burst === 0 || this.closed) throw err;
          burst = 0;
          socket.receiveTimeout = -1;
          continue;
        }
        this.taken++;
        if (burst > 0) {
          burst++;
        } else if (!POLL_ONLY && socket.readable) {
          // One more message already waiting means a burst: read it without asking again.
          burst = 1;
          socket.receiveTimeout = 0;
        }
        for (let i = 1; i < frames.length; i++) receivedBytes += frames[i].length;
        const parsed = parseFrames(frames, 1, this.maxChannelLength, this.maxMessageLength);
        if (parsed.kind === "message") handlers.message(parsed);
        else if (parsed.kind === "invalid") handlers.invalid(parsed.reason, parsed.channel);
        else handlers.exit();
      }
    } catch (err) {
      if (!this.closed) throw err;
    }
  }

  /**
   * Lets the receive loop take every message the socket has already received (libzmq holds
   * them until read, and a close would throw them away), then closes it and waits for the
   * loop to have handled the last one. The socket counts as drained once the loop has taken
   * nothing for DRAIN_QUIET_MS: libzmq refills its queue from TCP in its own thread, so an
   * empty queue for a moment is not the end. Messages the broker sends after that are the
   * broker's to lose; it reconnects to the next process by itself.
   *
   * It watches the loop's count of messages taken, and never asks the socket whether it is
   * readable: zeromq.js learns that a message has come from the socket's notification
   * descriptor, which signals once, and a question asked while the loop waits would take that
   * signal from the loop, which would then wait forever on messages already queued.
   */
  async drain(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    let quietSince = performance.now();
    let seen = this.taken;
    while (!this.closed && performance.now() < deadline) {
      const now = performance.now();
      if (this.taken !== seen) {
        seen = this.taken;
        quietSince = now;
      } else if (now - quietSince >= DRAIN_QUIET_MS) {
        break;
      }
      await new Promise((r) => setTimeout(r, 1));
    }
    this.close();
    await this.loop?.catch(() => {});
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.close();
  }

  /**
   * The socket's events. libzmq sends each one to the observer's queue (an inproc PAIR, about
   * 1000 events deep) with a blocking send from its I/O thread: while that queue is full, the
   * I/O thread waits in that send and does nothing else, for any connection of this socket (no
   * accept, no disconnect, no broker message read). So the queue is read on without a pause
   * per event, in batches of EVENT_BATCH, each followed by a turn of the event loop
   * (zeromq.js resolves each read at once while events are queued, with no limit).
   *
   * A listener out of descriptors (EMFILE) retries its accept at once and queues a failed
   * accept each time: read at full speed, that storm would keep this thread and libzmq's busy.
   * When a whole batch is failed accepts, the next one waits ACCEPT_STORM_PAUSE_MS: libzmq's
   * thread then blocks in its send in the meantime, which bounds both threads to a few
   * thousand events a second, and once the flood is over the stale failures still queued are
   * read within a fraction of a second and the I/O thread goes on with the rest.
   */
  private async watchPeers(): Promise<void> {
    let batch = 0;
    let failedAccepts = 0;
    try {
      for await (const event of this.socket.events) {
        if (event.type === "accept") {
          this.peers++;
          this.handlers.peer("connected", event.address);
        } else if (event.type === "disconnect") {
          this.peers = Math.max(0, this.peers - 1);
          this.handlers.peer("disconnected", event.address);
        } else if (event.type === "accept:error") {
          failedAccepts++;
          this.handlers.acceptFailed(reasonOf(event.error));
        }
        if (++batch < EVENT_BATCH) continue;
        const storm = failedAccepts === batch;
        batch = 0;
        failedAccepts = 0;
        await new Promise((r) => (storm ? setTimeout(r, ACCEPT_STORM_PAUSE_MS) : setImmediate(r)));
      }
    } catch {
      // The event stream ends with the socket.
    }
  }
}
