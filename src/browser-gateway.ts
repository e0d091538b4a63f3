// The browser side, put together: the web server accepts connections and hands over
// upgrades, admission decides who may hold a connection and who may upgrade, ws does the
// handshake, a client's first message subscribes it to a channel in the store, and from
// then on the store drives it (client.ts). Keepalive pings every connection; a periodic
// check bounds what clients leave unread. Messages leave here, batched per client per
// event-loop turn; the broker side never waits for a browser.
//
// Direction of calls: gateway -> store (get, subscribe, unsubscribe), store -> client (send,
// gap, end) and gateway -> client (the periodic backlog check; forget on close). The store
// never reaches the gateway, and a client never reaches either: the gateway hears of a
// closed connection through ws's 'close' event, in a later turn.
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { WebSocketServer, type WebSocket } from "ws";
import { Admission, refusalResponse, refusalText, type Refusal, type Seat } from "./admission.ts";
import type { ChannelStore, CloseReason } from "./store-backend.ts";
import { Client, WriteQueue, type WriteLimits } from "./client.ts";
import type { Address, Config } from "./config.ts";
import { FD_RESERVE, openFiles } from "./descriptors.ts";
import { CLOSE } from "./errors.ts";
import { Keepalive } from "./keepalive.ts";
import { WarnLimiter, type Log } from "./logger.ts";
import { chooseProtocol, readFirstMessage, RESUME_PROTOCOL } from "./subscription.ts";
import { answerAndClose, WebServer, type TlsFiles } from "./web-server.ts";

export type { TlsFiles } from "./web-server.ts";

export type GatewaySettings = Pick<Config, "limits" | "keepalive" | "websocket" | "access">;

/** How often subscriptions to channels without broker messages are summarised in the log. */
const UNKNOWN_SUMMARY_MS = 60_000;
/** How often the open files are counted, to warn before they run out. */
const FD_CHECK_MS = 10_000;
/** More ZeroMQ peers than this and the open files are counted (the broker is one peer). */
const SUSPECT_BROKER_PEERS = 32;
/** Longest request target quoted in the log. */
const MAX_LOGGED_URL = 200;

function writeLimits(limits: Config["limits"]): WriteLimits {
  return {
    maxBufferedBytes: limits.max_buffered_bytes,
    maxTotalBufferedBytes: limits.max_total_buffered_bytes,
    backlogTimeoutMs: limits.backlog_timeout * 1000,
  };
}

export class BrowserGateway {
  private readonly web: WebServer<Seat>;
  private wss: WebSocketServer;
  private readonly store: ChannelStore;
  private readonly log: Log;
  private settings: GatewaySettings;
  private readonly admission: Admission;
  /** Every client, by its WebSocket: the shared event listeners below find their client here. */
  private readonly clients = new Map<WebSocket, Client>();
  /**
   * The listeners every client's WebSocket gets: the same four functions for all of them (ws
   * calls a listener with the WebSocket as `this`), not four closures per connection, which
   * at 10,000 idle connections are megabytes.
   */
  private readonly events: {
    message(this: WebSocket, data: Buffer, isBinary: boolean): void;
    pong(this: WebSocket): void;
    error(this: WebSocket, err: Error): void;
    close(this: WebSocket, code: number): void;
  };
  private readonly queue: WriteQueue;
  private readonly keepalive: Keepalive<Client>;
  private readonly warnings: WarnLimiter;
  private backlogTimer: ReturnType<typeof setInterval> | null = null;
  /** Subscriptions to channels without broker messages since the last summary, which began then. */
  private unknown = { count: 0, since: performance.now() };
  private fdCheckedAt = -Infinity;
  private nextId = 1;
  private draining = false;
  /** Resolves the wait in close() once the last client has gone. */
  private onEmpty: (() => void) | null = null;
  httpHandler: ((req: IncomingMessage, res: ServerResponse) => void) | null = null;

  readonly counters = {
    accepted: 0,
    refused: {} as Admission["refused"],
    handshakeTimeouts: 0,
    subscriptions: 0,
    unknownChannelSubscriptions: 0,
    resumes: 0,
    badFirstMessage: 0,
    subscribeTimeouts: 0,
    slowClients: 0,
    bufferLimitCuts: 0,
    stalledClients: 0,
    pingTimeouts: 0,
    ignoredMessages: 0,
    sentFrames: 0,
    sentBytes: 0,
  };

  constructor(store: ChannelStore, settings: GatewaySettings, log: Log, tls: TlsFiles | null) {
    this.store = store;
    this.settings = settings;
    this.log = log;
    this.admission = new Admission(settings.access);
    this.counters.refused = this.admission.refused;
    this.warnings = new WarnLimiter(log);
    this.queue = new WriteQueue(writeLimits(settings.limits), this.counters, this.warnings);
    this.wss = this.createWss();
    const clients = this.clients;
    const gateway = this;
    this.events = {
      message(data, isBinary) {
        const client = clients.get(this);
        if (client !== undefined) gateway.onMessage(client, data, isBinary);
      },
      pong() {
        const client = clients.get(this);
        if (client !== undefined) client.alive = true;
      },
      error(err) {
        const client = clients.get(this);
        if (client !== undefined) gateway.log.debug(`client #${client.id} (${client.ip}): ${err.message}`);
      },
      close(code) {
        const client = clients.get(this);
        if (client !== undefined) gateway.onClose(client, code);
      },
    };
    this.keepalive = new Keepalive(
      { [Symbol.iterator]: () => clients.values() },
      settings.keepalive.interval,
      (client) => client.ws.ping(),
      (client) => {
        this.counters.pingTimeouts++;
        this.log.info(`client #${client.id} (${client.ip}) did not answer a keepalive ping: disconnected`);
        client.ws.terminate();
      },
    );
    this.web = new WebServer<Seat>(
      tls,
      {
        accept: (socket) => this.onAccept(socket),
        closed: (seat) => this.admission.release(seat),
        handshakeTimeout: (seat) => {
          this.counters.handshakeTimeouts++;
          if (this.log.debugEnabled) {
            this.log.debug(`connection from ${seat.address ?? seat.peer} sent no complete request within ${this.settings.limits.handshake_timeout} s (limits.handshake_timeout): closed`);
          }
        },
        request: (req, res) => this.onRequest(req, res),
        upgrade: (req, socket, head, seat) => this.onUpgrade(req, socket, head, seat),
      },
      settings.limits.handshake_timeout * 1000,
      (err) => this.warnings.warn("server", `WebSocket server error: ${err.message}`),
    );
  }

  get connections(): number {
    return this.clients.size;
  }

  /** Open connections on the WebSocket port, from accept (also those not yet upgraded). */
  get sockets(): number {
    return this.admission.connections;
  }

  /** The connection cap in force (access.max_connections, or what the open-files limit allows). */
  get maxConnections(): number {
    return this.admission.maxConnections;
  }

  /** Bytes written to clients and not yet taken by them, as last seen. */
  get bufferedBytes(): number {
    return this.queue.bufferedBytes;
  }

  /** Open connections subscribed to a channel (read per scrape and status request, not kept on the hot path). */
  get subscribers(): number {
    let n = 0;
    for (const client of this.clients.values()) if (client.channel !== null && !client.done) n++;
    return n;
  }

  get tls(): boolean {
    return this.web.tls;
  }

  get port(): number {
    return this.web.port;
  }

  /** Limits that can change while running (SIGHUP); they apply to new connections and the next writes. */
  setSettings(settings: GatewaySettings): void {
    const payloadChanged = settings.limits.max_client_message !== this.settings.limits.max_client_message;
    this.settings = settings;
    this.admission.setSettings(settings.access);
    this.queue.limits = writeLimits(settings.limits);
    this.web.handshakeTimeoutMs = settings.limits.handshake_timeout * 1000;
    this.keepalive.setInterval(settings.keepalive.interval);
    if (this.backlogTimer !== null) this.startBacklogCheck();
    // A ws server's maxPayload is fixed at construction; connections made so far keep theirs.
    if (payloadChanged) this.wss = this.createWss();
  }

  reloadTls(tls: TlsFiles): void {
    this.web.reloadTls(tls);
  }

  async listen(address: Address): Promise<void> {
    await this.web.listen(address);
    this.keepalive.start();
    this.startBacklogCheck();
    const { value, known } = this.admission.fdLimit;
    const configured = this.settings.access.max_connections;
    const cap = this.admission.maxConnections;
    const source = `open-files limit ${value}${known ? "" : " assumed: /proc/self/limits not readable"}, minus a reserve of ${value - cap}`;
    if (configured === 0) this.log.info(`access.max_connections: ${cap} (${source})`);
    else if (configured > cap) this.log.warning(`access.max_connections: ${configured} is more than the open files allow; using ${cap} (${source})`);
  }

  /** Periodic housekeeping (the monitor's sweep tick); `brokerPeers`: the ZeroMQ peers connected. */
  sweep(brokerPeers = 0): void {
    const now = performance.now();
    this.admission.sweep();
    this.warnings.flush();
    if (now - this.unknown.since >= UNKNOWN_SUMMARY_MS) this.summariseUnknown(now);
    // Counting the open files costs a directory read per descriptor: only worth it once the
    // connections alone have taken half of what the limit allows, or once far more ZeroMQ
    // peers are connected than the one broker there should be (libzmq's own report of a
    // failed accept does not always arrive when the process is out of descriptors).
    const suspect = this.sockets * 2 >= this.maxConnections || brokerPeers >= SUSPECT_BROKER_PEERS;
    // While ZeroMQ peers pile up, every tick: the junk is dropped FD_CHECK_MS after its accept
    // (the handshake limit), and an exhaustion that lasts that long must be seen.
    const every = brokerPeers >= SUSPECT_BROKER_PEERS ? 0 : FD_CHECK_MS;
    if (now - this.fdCheckedAt >= every && suspect) {
      this.fdCheckedAt = now;
      this.checkOpenFiles(brokerPeers);
    }
  }

  /** Stops accepting, closes every client with `close`, and waits for them up to `timeoutMs`. */
  async close(close: CloseReason, timeoutMs: number): Promise<void> {
    this.draining = true;
    this.keepalive.stop();
    if (this.backlogTimer !== null) clearInterval(this.backlogTimer);
    this.backlogTimer = null;
    this.summariseUnknown(performance.now());
    this.warnings.flush();
    const listening = this.web.stopListening();
    for (const client of [...this.clients.values()]) client.end(close);
    if (this.clients.size > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.onEmpty = resolve;
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
    }
    for (const client of [...this.clients.values()]) client.ws.terminate();
    this.web.destroyAll();
    await listening;
  }

  private createWss(): WebSocketServer {
    return new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: this.settings.websocket.permessage_deflate,
      maxPayload: this.settings.limits.max_client_message,
      handleProtocols: (offered) => chooseProtocol(offered, this.settings.websocket.resumable),
    });
  }

  private startBacklogCheck(): void {
    if (this.backlogTimer !== null) clearInterval(this.backlogTimer);
    // A stalled client is cut within a quarter of backlog_timeout of its deadline.
    const every = Math.min(1000, Math.max(50, (this.settings.limits.backlog_timeout * 1000) / 4));
    this.backlogTimer = setInterval(() => this.queue.check(performance.now()), every);
    this.backlogTimer.unref();
  }

  private onAccept(socket: Socket): { seat: Seat } | { refusal: string } {
    const peer = socket.remoteAddress ?? "unknown";
    const outcome = this.admission.accept(peer, this.draining);
    if (typeof outcome === "object") return { seat: outcome };
    this.warnRefused("connection", peer, outcome);
    return { refusal: refusalResponse(outcome) };
  }

  private warnRefused(what: "connection" | "WebSocket upgrade", address: string, refusal: Refusal): void {
    this.warnings.warn(`refused ${refusal}`, `refused ${what} from ${address}: ${refusalText(refusal)}`);
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    if (this.httpHandler !== null) {
      this.httpHandler(req, res);
      return;
    }
    answerAndClose(res, 426, { "Content-Type": "text/plain; charset=utf-8", Upgrade: "websocket", Connection: "Upgrade, close" },
      "recodex-monitor: this is a WebSocket endpoint; connect with a WebSocket client and send a channel id\n");
  }

  private onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer, seat: Seat): void {
    const forwarded = req.headers[this.settings.access.forwarded_header.toLowerCase()];
    const outcome = this.admission.upgrade(
      seat,
      { origin: req.headers.origin, forwarded: Array.isArray(forwarded) ? forwarded.join(", ") : forwarded },
      this.draining,
    );
    if ("refusal" in outcome) {
      this.warnRefused("WebSocket upgrade", outcome.address, outcome.refusal);
      socket.once("finish", () => socket.destroy());
      socket.end(refusalResponse(outcome.refusal));
      return;
    }
    // The callback must not hold the request: nothing of it is needed once the connection is open.
    const address = outcome.address;
    const url = this.log.debugEnabled ? (req.url ?? "/").slice(0, MAX_LOGGED_URL) : "";
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, socket, address, url));
  }

  private accept(ws: WebSocket, socket: Socket, ip: string, url: string): void {
    if (this.draining) {
      ws.close(CLOSE.SHUTDOWN.code, CLOSE.SHUTDOWN.reason);
      return;
    }
    const client = new Client(ws, socket, ip, this.nextId++, ws.protocol === RESUME_PROTOCOL, this.queue);
    this.keepalive.admit(client);
    this.clients.set(ws, client);
    this.counters.accepted++;
    if (this.log.debugEnabled) {
      this.log.debug(`client #${client.id} connected from ${ip} (${url}${client.resumable ? ", resumable" : ""})`);
    }
    ws.on("message", this.events.message);
    ws.on("pong", this.events.pong);
    ws.on("error", this.events.error);
    ws.on("close", this.events.close);
    client.subscribeTimer = setTimeout(this.subscribeTimedOut, this.settings.limits.subscribe_timeout * 1000, client);
  }

  private readonly subscribeTimedOut = (client: Client): void => {
    this.counters.subscribeTimeouts++;
    this.log.info(`client #${client.id} (${client.ip}) sent no channel id within ${this.settings.limits.subscribe_timeout} s: closed`);
    client.end(CLOSE.SUBSCRIBE_TIMEOUT);
  };

  private onMessage(client: Client, data: Buffer, isBinary: boolean): void {
    if (client.channel !== null || client.done) {
      this.counters.ignoredMessages++;
      return;
    }
    const first = readFirstMessage(data, isBinary, client.resumable, this.settings.limits.max_channel_id_length);
    if (!first.ok) {
      this.counters.badFirstMessage++;
      this.log.info(`client #${client.id} (${client.ip}) sent ${first.what} as its first message: closed with ${first.close.code}`);
      client.end(first.close);
      return;
    }
    const { channel, after } = first;
    this.clearSubscribeTimer(client);
    client.channel = channel;
    this.counters.subscriptions++;
    if (after >= 0) this.counters.resumes++;
    const line = `client #${client.id} (${client.ip}) subscribed to channel ${channel}${after >= 0 ? ` resuming after offset ${after}` : ""}`;
    // Anyone can ask for any channel: those the broker has not written to are counted and
    // summarised, so that a flood of them cannot rotate the log's history away.
    if (this.store.hasMessages(channel)) {
      this.log.info(line);
    } else {
      this.counters.unknownChannelSubscriptions++;
      this.unknown.count++;
      if (this.log.debugEnabled) this.log.debug(line);
    }
    this.store.subscribe(channel, client, after);
  }

  private onClose(client: Client, code: number): void {
    this.clearSubscribeTimer(client);
    client.done = true;
    if (client.channel !== null) this.store.unsubscribe(client.channel, client);
    this.clients.delete(client.ws);
    this.queue.forget(client);
    if (this.log.debugEnabled) {
      this.log.debug(`client #${client.id} (${client.ip}) disconnected with ${code}${client.channel !== null ? ` from channel ${client.channel}` : ""}`);
    }
    if (this.clients.size === 0 && this.onEmpty !== null) this.onEmpty();
  }

  private summariseUnknown(now: number): void {
    const { count, since } = this.unknown;
    this.unknown = { count: 0, since: now };
    if (count > 0) {
      this.log.info(`${count} subscriptions to channels the broker has not written to (yet) in the last ${((now - since) / 1000).toFixed(0)} s`);
    }
  }

  /** Warns (rate-limited) when the process comes near its open-files limit, where node drops connections unannounced. */
  private checkOpenFiles(brokerPeers: number): void {
    const open = openFiles();
    const limit = this.admission.fdLimit.value;
    if (open === "exhausted" || (open !== null && open > limit - FD_RESERVE / 4)) {
      const cause = brokerPeers >= SUSPECT_BROKER_PEERS
        ? `${brokerPeers} ZeroMQ peers are connected where one broker should be: something floods the ZeroMQ port (zeromq_uri)`
        : `lower access.max_connections or raise LimitNOFILE`;
      this.warnings.warn("open-files",
        `${open === "exhausted" ? "no file descriptor left" : `${open} files open`}, near the open-files limit ${limit}: past it, new connections (WebSocket and ZeroMQ) fail with EMFILE; ${cause}`);
    }
  }

  private clearSubscribeTimer(client: Client): void {
    if (client.subscribeTimer !== null) clearTimeout(client.subscribeTimer);
    client.subscribeTimer = null;
  }
}
