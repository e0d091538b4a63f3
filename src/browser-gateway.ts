// The browser side: a WebSocket server. A client's first text message names its channel;
// it then gets the channel's history and live messages in order. Writes are batched per
// client per event-loop turn, and each client's outbound buffer is bounded: the broker
// side never waits for a browser.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { WebSocket, WebSocketServer } from "ws";
import type { Address, Config } from "./config.ts";
import type { ChannelStore, CloseReason, Subscriber } from "./channel-store.ts";
import { CLOSE, MonitorError } from "./errors.ts";
import type { Log } from "./logger.ts";

/** Subprotocol a client offers to get offsets and resume after a reconnect (see README). */
export const RESUME_PROTOCOL = "recodex-monitor.resume.v1";

export type GatewaySettings = Pick<Config, "limits" | "keepalive" | "websocket" | "access">;

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
}

type Refusal = "origin" | "capacity" | "per_ip" | "rate" | "draining";

const SEND_TEXT = Object.freeze({ binary: false });
const KEEPALIVE_TICKS = 30;

export class BrowserGateway {
  private readonly server: Server | HttpsServer;
  private readonly wss: WebSocketServer;
  private readonly store: ChannelStore;
  private readonly log: Log;
  private settings: GatewaySettings;
  private readonly clients = new Set<Client>();
  private readonly sockets = new Set<Socket>();
  private readonly perIp = new Map<string, number>();
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private dirty: Client[] = [];
  /** Frames built in this turn, by payload: each message is framed once for all its subscribers. */
  private readonly frames = new Map<string, Buffer>();
  private flushScheduled = false;
  private keepaliveTimer: ReturnType<typeof setInterval> | null = null;
  private nextId = 1;
  draining = false;
  httpHandler: ((req: IncomingMessage, res: ServerResponse) => void) | null = null;
  readonly tls: boolean;
  port = 0;

  readonly counters = {
    accepted: 0,
    refused: { origin: 0, capacity: 0, per_ip: 0, rate: 0, draining: 0 } as Record<Refusal, number>,
    subscriptions: 0,
    resumes: 0,
    badFirstMessage: 0,
    subscribeTimeouts: 0,
    slowClients: 0,
    pingTimeouts: 0,
    ignoredMessages: 0,
    sentFrames: 0,
    sentBytes: 0,
  };

  constructor(store: ChannelStore, settings: GatewaySettings, log: Log, tls: TlsFiles | null) {
    this.store = store;
    this.settings = settings;
    this.log = log;
    this.tls = tls !== null;
    const onRequest = (req: IncomingMessage, res: ServerResponse) => this.onRequest(req, res);
    this.server = tls ? createTlsServer(tls, onRequest) : createHttpServer(onRequest);
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: settings.websocket.permessage_deflate,
      maxPayload: settings.limits.max_client_message,
      handleProtocols: (offered) =>
        this.settings.websocket.resumable && offered.has(RESUME_PROTOCOL) ? RESUME_PROTOCOL : false,
    });
    this.server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    this.server.on("clientError", (_err: Error, socket: Duplex) => socket.destroy());
    // Every raw connection, including ones that never become clients (refused upgrades,
    // a TLS handshake that never starts), so that shutdown can cut them off.
    this.server.on("connection", (socket: Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
  }

  get connections(): number {
    return this.clients.size;
  }

  /** Limits that can change while running (SIGHUP). */
  setSettings(settings: GatewaySettings): void {
    const intervalChanged = settings.keepalive.interval !== this.settings.keepalive.interval;
    this.settings = settings;
    // ws reads maxPayload for each new connection.
    (this.wss.options as { maxPayload: number }).maxPayload = settings.limits.max_client_message;
    if (intervalChanged && this.keepaliveTimer !== null) this.startKeepalive();
  }

  reloadTls(tls: TlsFiles): void {
    try {
      (this.server as HttpsServer).setSecureContext({ cert: tls.cert, key: tls.key });
    } catch (err) {
      throw tlsError(err);
    }
  }

  async listen([host, port]: Address): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error & { code?: string }) => {
        reject(
          new MonitorError(
            "RMON_ERR_BIND",
            `cannot listen for WebSocket clients on ${host === "" ? "*" : host}:${port} (websocket_uri): ${err.code ?? err.message}`,
          ),
        );
      };
      this.server.once("error", onError);
      const done = () => {
        this.server.off("error", onError);
        resolve();
      };
      if (host === "") this.server.listen(port, done);
      else this.server.listen(port, host, done);
    });
    const addr = this.server.address();
    this.port = typeof addr === "object" && addr !== null ? addr.port : port;
    this.server.on("error", (err: Error) => this.log.error(`WebSocket server error: ${err.message}`));
    this.startKeepalive();
  }

  /** Stops accepting, closes every client with `close`, and waits for them up to `timeoutMs`. */
  async close(close: CloseReason, timeoutMs: number): Promise<void> {
    this.draining = true;
    if (this.keepaliveTimer !== null) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    const listening = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const client of [...this.clients]) client.end(close);
    const deadline = performance.now() + timeoutMs;
    while (this.clients.size > 0 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const client of [...this.clients]) client.ws.terminate();
    for (const socket of this.sockets) socket.destroy();
    (this.server as Server).closeAllConnections?.();
    await listening;
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    if (this.httpHandler !== null) {
      this.httpHandler(req, res);
      return;
    }
    res.writeHead(426, { "Content-Type": "text/plain; charset=utf-8", Upgrade: "websocket", Connection: "Upgrade" });
    res.end("recodex-monitor: this is a WebSocket endpoint; connect with a WebSocket client and send a channel id\n");
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const ip = req.socket.remoteAddress ?? "unknown";
    const refusal = this.admit(req, ip);
    if (refusal !== null) {
      this.counters.refused[refusal]++;
      const [status, text] = REFUSALS[refusal];
      this.log.warning(`refused WebSocket upgrade from ${ip}: ${text}`);
      socket.once("finish", () => socket.destroy());
      socket.end(
        `HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${text.length + 1}\r\n\r\n${text}\n`,
      );
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, ip, req));
  }

  private admit(req: IncomingMessage, ip: string): Refusal | null {
    const access = this.settings.access;
    if (this.draining) return "draining";
    const origin = req.headers.origin;
    if (access.allowed_origins.length > 0 && origin !== undefined && !access.allowed_origins.includes(origin)) {
      return "origin";
    }
    if (access.max_connections > 0 && this.clients.size >= access.max_connections) return "capacity";
    if (access.max_connections_per_ip > 0 && (this.perIp.get(ip) ?? 0) >= access.max_connections_per_ip) {
      return "per_ip";
    }
    if (access.upgrades_per_second_per_ip > 0 && !this.takeToken(ip)) return "rate";
    return null;
  }

  private takeToken(ip: string): boolean {
    const { upgrades_per_second_per_ip: rate, upgrade_burst: burst } = this.settings.access;
    const now = performance.now();
    let bucket = this.buckets.get(ip);
    if (bucket === undefined) {
      bucket = { tokens: burst, at: now };
      this.buckets.set(ip, bucket);
    }
    bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * rate);
    bucket.at = now;
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  private accept(ws: WebSocket, ip: string, req: IncomingMessage): void {
    if (this.draining) {
      ws.close(CLOSE.SHUTDOWN.code, CLOSE.SHUTDOWN.reason);
      return;
    }
    const client = new Client(this, ws, ip, this.nextId++, ws.protocol === RESUME_PROTOCOL);
    client.nextPing = this.firstPing(performance.now());
    // Without a negotiated extension a frame is plain bytes on the socket, so the gateway
    // can write prepared frames itself; with permessage-deflate, ws has to compress them.
    client.raw = ws.extensions === "";
    this.clients.add(client);
    this.perIp.set(ip, (this.perIp.get(ip) ?? 0) + 1);
    this.counters.accepted++;
    if (this.log.debugEnabled) {
      this.log.debug(`client #${client.id} connected from ${ip} (${req.url ?? "/"}${client.resumable ? ", resumable" : ""})`);
    }
    ws.on("message", (data: Buffer, isBinary: boolean) => this.onMessage(client, data, isBinary));
    ws.on("pong", () => {
      client.alive = true;
    });
    ws.on("error", (err: Error) => this.log.debug(`client #${client.id} (${ip}): ${err.message}`));
    ws.on("close", (code: number) => this.onClose(client, code));
    client.timer = setTimeout(() => {
      this.counters.subscribeTimeouts++;
      this.log.info(`client #${client.id} (${ip}) sent no channel id within ${this.settings.limits.subscribe_timeout} s: closed`);
      client.end(CLOSE.SUBSCRIBE_TIMEOUT);
    }, this.settings.limits.subscribe_timeout * 1000);
  }

  private onMessage(client: Client, data: Buffer, isBinary: boolean): void {
    if (client.channel !== null || client.done) {
      this.counters.ignoredMessages++;
      return;
    }
    if (isBinary) {
      this.rejectFirst(client, CLOSE.BINARY, "a binary first message");
      return;
    }
    let channel = data.toString("utf8");
    let after = -1;
    if (client.resumable && channel.startsWith("{")) {
      const request = parseResumeRequest(channel);
      if (request === null) {
        this.rejectFirst(client, CLOSE.BAD_CHANNEL, "an invalid resume request");
        return;
      }
      channel = request.channel;
      after = request.after;
    }
    if (channel.length === 0) {
      this.rejectFirst(client, CLOSE.BAD_CHANNEL, "an empty channel id");
      return;
    }
    const length = Buffer.byteLength(channel);
    if (length > this.settings.limits.max_channel_id_length) {
      this.rejectFirst(client, CLOSE.BAD_CHANNEL, `a channel id of ${length} bytes`);
      return;
    }
    if (client.timer !== null) clearTimeout(client.timer);
    client.timer = null;
    client.channel = channel;
    this.counters.subscriptions++;
    if (after >= 0) this.counters.resumes++;
    this.log.info(
      `client #${client.id} (${client.ip}) subscribed to channel ${channel}${after >= 0 ? ` resuming after offset ${after}` : ""}`,
    );
    this.store.subscribe(channel, client, after);
  }

  private rejectFirst(client: Client, close: CloseReason, what: string): void {
    this.counters.badFirstMessage++;
    this.log.info(`client #${client.id} (${client.ip}) sent ${what} as its first message: closed with ${close.code}`);
    client.end(close);
  }

  private onClose(client: Client, code: number): void {
    if (client.timer !== null) clearTimeout(client.timer);
    client.timer = null;
    client.done = true;
    this.unsubscribe(client);
    this.clients.delete(client);
    const n = (this.perIp.get(client.ip) ?? 1) - 1;
    if (n <= 0) this.perIp.delete(client.ip);
    else this.perIp.set(client.ip, n);
    if (this.log.debugEnabled) {
      this.log.debug(`client #${client.id} (${client.ip}) disconnected with ${code}${client.channel !== null ? ` from channel ${client.channel}` : ""}`);
    }
  }

  /** Called by a client that has frames waiting; they go out after the current turn. */
  markDirty(client: Client): void {
    this.dirty.push(client);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    const dirty = this.dirty;
    this.dirty = [];
    for (let i = 0; i < dirty.length; i++) dirty[i].flush();
    this.frames.clear();
  };

  /** Writes a client's pending frames in one corked batch, or drops a client that cannot keep up. */
  write(client: Client, frames: string[], bytes: number): void {
    const ws = client.ws;
    if (ws.readyState !== WebSocket.OPEN) return;
    // What the peer has not taken since earlier turns decides; a burst that arrives within
    // one turn is not held against a client that reads. Memory per client stays below the
    // limit plus one turn's worth (the broker link yields every few hundred messages).
    const limit = this.settings.limits.max_buffered_bytes;
    const waiting = ws.bufferedAmount;
    if (waiting > limit) {
      this.counters.slowClients++;
      this.log.warning(
        `client #${client.id} (${client.ip}) on channel ${client.channel} fell behind: ${waiting} bytes not taken > limits.max_buffered_bytes ${limit}; disconnected (it can reconnect and replay)`,
      );
      client.drop(CLOSE.SLOW_CLIENT);
      return;
    }
    const socket = rawSocket(ws);
    if (socket === undefined) return;
    socket.cork();
    if (client.resumable && client.raw) {
      // Each resumable client's frames carry its own offsets: nothing to share, nothing to cache.
      for (let i = 0; i < frames.length; i++) socket.write(textFrame(frames[i]));
    } else if (client.raw) {
      for (let i = 0; i < frames.length; i++) socket.write(this.sharedFrame(frames[i]));
    } else {
      for (let i = 0; i < frames.length; i++) ws.send(frames[i], SEND_TEXT);
    }
    socket.uncork();
    this.counters.sentFrames += frames.length;
    this.counters.sentBytes += bytes;
  }

  /** The frame for a payload that many subscribers share, built once per turn. */
  private sharedFrame(payload: string): Buffer {
    let frame = this.frames.get(payload);
    if (frame === undefined) {
      frame = textFrame(payload);
      this.frames.set(payload, frame);
    }
    return frame;
  }

  unsubscribe(client: Client): void {
    if (client.channel !== null) this.store.unsubscribe(client.channel, client);
  }

  // Pings are spread over the interval: each client has its own due time, and a tick every
  // 1/30 of the interval pings those that are due. Pinging 10,000 tabs in one go would stall
  // the relay for a noticeable moment every interval.
  private startKeepalive(): void {
    if (this.keepaliveTimer !== null) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = setInterval(() => this.keepalive(), (this.settings.keepalive.interval * 1000) / KEEPALIVE_TICKS);
    this.keepaliveTimer.unref();
  }

  /** When a new client's first ping is due: somewhere in the second half of an interval. */
  private firstPing(now: number): number {
    return now + this.settings.keepalive.interval * 1000 * (0.5 + Math.random() / 2);
  }

  private keepalive(): void {
    const now = performance.now();
    const interval = this.settings.keepalive.interval * 1000;
    for (const client of this.clients) {
      if (client.nextPing > now) continue;
      client.nextPing = now + interval;
      if (!client.alive) {
        this.counters.pingTimeouts++;
        this.log.info(`client #${client.id} (${client.ip}) did not answer a keepalive ping: disconnected`);
        client.ws.terminate();
        continue;
      }
      client.alive = false;
      client.ws.ping();
    }
    const full = this.settings.access.upgrade_burst;
    for (const [ip, bucket] of this.buckets) {
      if (bucket.tokens + ((now - bucket.at) / 1000) * this.settings.access.upgrades_per_second_per_ip >= full) {
        this.buckets.delete(ip);
      }
    }
  }
}

const REFUSALS: Readonly<Record<Refusal, readonly [string, string]>> = Object.freeze({
  origin: ["403 Forbidden", "origin not allowed (access.allowed_origins)"],
  capacity: ["503 Service Unavailable", "connection limit reached (access.max_connections)"],
  per_ip: ["429 Too Many Requests", "too many connections from this address (access.max_connections_per_ip)"],
  rate: ["429 Too Many Requests", "too many new connections from this address (access.upgrades_per_second_per_ip)"],
  draining: ["503 Service Unavailable", "monitor shutting down"],
});

/** An unmasked, final text frame: the payload is ASCII, so its characters are its bytes. */
function textFrame(payload: string): Buffer {
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

/** The TCP socket under a ws connection (ws keeps it in a private field). */
function rawSocket(ws: WebSocket): Socket | undefined {
  return (ws as unknown as { _socket?: Socket })._socket;
}

function createTlsServer(tls: TlsFiles, onRequest: (req: IncomingMessage, res: ServerResponse) => void): HttpsServer {
  try {
    return createHttpsServer({ cert: tls.cert, key: tls.key }, onRequest);
  } catch (err) {
    throw tlsError(err);
  }
}

function tlsError(err: unknown): MonitorError {
  return new MonitorError(
    "RMON_ERR_TLS",
    `TLS certificate or key not usable (websocket.tls_cert, websocket.tls_key): ${(err as Error).message}`,
  );
}

function parseResumeRequest(text: string): { channel: string; after: number } | null {
  try {
    const value = JSON.parse(text) as { channel?: unknown; after?: unknown };
    if (typeof value !== "object" || value === null || typeof value.channel !== "string") return null;
    const after = value.after ?? -1;
    if (typeof after !== "number" || !Number.isInteger(after) || after < -1) return null;
    return { channel: value.channel, after };
  } catch {
    return null;
  }
}

/** One browser connection, seen by the store as a subscriber. */
class Client implements Subscriber {
  readonly gateway: BrowserGateway;
  readonly ws: WebSocket;
  readonly ip: string;
  readonly id: number;
  readonly resumable: boolean;
  channel: string | null = null;
  timer: ReturnType<typeof setTimeout> | null = null;
  alive = true;
  nextPing = 0;
  done = false;
  raw = false;
  private pending: string[] = [];
  private pendingBytes = 0;

  constructor(gateway: BrowserGateway, ws: WebSocket, ip: string, id: number, resumable: boolean) {
    this.gateway = gateway;
    this.ws = ws;
    this.ip = ip;
    this.id = id;
    this.resumable = resumable;
  }

  send(json: string, offset: number): void {
    if (this.done) return;
    this.queue(this.resumable ? `{"offset": ${offset}, "message": ${json}}` : json);
  }

  gap(firstOffset: number): void {
    if (this.resumable && !this.done) this.queue(`{"gap": {"first_offset": ${firstOffset}}}`);
  }

  end(close: CloseReason): void {
    if (this.done) return;
    // The last messages and the close frame leave in one write.
    const socket = rawSocket(this.ws);
    socket?.cork();
    this.flush();
    this.done = true;
    this.ws.close(close.code, close.reason);
    socket?.uncork();
  }

  /** Leaves the channel and closes at once, discarding what has not been written. */
  drop(close: CloseReason): void {
    this.done = true;
    this.pending = [];
    this.pendingBytes = 0;
    this.gateway.unsubscribe(this);
    this.ws.close(close.code, close.reason);
    // The peer is not reading; do not wait the full closing handshake for it.
    setTimeout(() => this.ws.terminate(), 1000).unref();
  }

  flush(): void {
    if (this.pending.length === 0) return;
    const frames = this.pending;
    const bytes = this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
    this.gateway.write(this, frames, bytes);
  }

  private queue(frame: string): void {
    this.pending.push(frame);
    this.pendingBytes += frame.length;
    if (this.pending.length === 1) this.gateway.markDirty(this);
  }
}
