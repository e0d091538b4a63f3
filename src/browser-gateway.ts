// The browser side, put together: the web server hands over upgrades, admission decides who
// may connect, ws does the handshake, a client's first message subscribes it to a channel
// in the store, and from then on the store drives it (client.ts). Keepalive pings every
// connection. Messages leave here, batched per client per event-loop turn; the broker side
// never waits for a browser.
//
// Direction of calls: gateway -> store (subscribe, unsubscribe) and store -> client (send,
// gap, end). The store never reaches the gateway, and a client never reaches either: the
// gateway hears of a closed connection through ws's 'close' event, in a later turn.
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { WebSocketServer, type WebSocket } from "ws";
import { Admission, refusalResponse, refusalText } from "./admission.ts";
import type { ChannelStore, CloseReason } from "./channel-store.ts";
import { Client, WriteQueue } from "./client.ts";
import type { Address, Config } from "./config.ts";
import { CLOSE } from "./errors.ts";
import { Keepalive } from "./keepalive.ts";
import type { Log } from "./logger.ts";
import { chooseProtocol, readFirstMessage, RESUME_PROTOCOL } from "./subscription.ts";
import { WebServer, type TlsFiles } from "./web-server.ts";

export type { TlsFiles } from "./web-server.ts";

export type GatewaySettings = Pick<Config, "limits" | "keepalive" | "websocket" | "access">;

export class BrowserGateway {
  private readonly web: WebServer;
  private wss: WebSocketServer;
  private readonly store: ChannelStore;
  private readonly log: Log;
  private settings: GatewaySettings;
  private readonly admission: Admission;
  private readonly clients = new Set<Client>();
  private readonly queue: WriteQueue;
  private readonly keepalive: Keepalive<Client>;
  private nextId = 1;
  private draining = false;
  /** Resolves the wait in close() once the last client has gone. */
  private onEmpty: (() => void) | null = null;
  httpHandler: ((req: IncomingMessage, res: ServerResponse) => void) | null = null;

  readonly counters = {
    accepted: 0,
    refused: {} as Admission["refused"],
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
    this.admission = new Admission(settings.access);
    this.counters.refused = this.admission.refused;
    this.queue = new WriteQueue(settings.limits.max_buffered_bytes, this.counters, log);
    this.wss = this.createWss();
    this.keepalive = new Keepalive(
      this.clients,
      settings.keepalive.interval,
      (client) => client.ws.ping(),
      (client) => {
        this.counters.pingTimeouts++;
        this.log.info(`client #${client.id} (${client.ip}) did not answer a keepalive ping: disconnected`);
        client.ws.terminate();
      },
    );
    this.web = new WebServer(
      tls,
      {
        request: (req, res) => this.onRequest(req, res),
        upgrade: (req, socket, head) => this.onUpgrade(req, socket, head),
      },
      (err) => this.log.error(`WebSocket server error: ${err.message}`),
    );
  }

  get connections(): number {
    return this.clients.size;
  }

  /** Open connections subscribed to a channel (read per scrape and status request, not kept on the hot path). */
  get subscribers(): number {
    let n = 0;
    for (const client of this.clients) if (client.channel !== null && !client.done) n++;
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
    this.queue.maxBufferedBytes = settings.limits.max_buffered_bytes;
    this.keepalive.setInterval(settings.keepalive.interval);
    // A ws server's maxPayload is fixed at construction; connections made so far keep theirs.
    if (payloadChanged) this.wss = this.createWss();
  }

  reloadTls(tls: TlsFiles): void {
    this.web.reloadTls(tls);
  }

  async listen(address: Address): Promise<void> {
    await this.web.listen(address);
    this.keepalive.start();
  }

  /** Periodic housekeeping (the monitor's sweep tick). */
  sweep(): void {
    this.admission.sweep();
  }

  /** Stops accepting, closes every client with `close`, and waits for them up to `timeoutMs`. */
  async close(close: CloseReason, timeoutMs: number): Promise<void> {
    this.draining = true;
    this.keepalive.stop();
    const listening = this.web.stopListening();
    for (const client of [...this.clients]) client.end(close);
    if (this.clients.size > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.onEmpty = resolve;
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
    }
    for (const client of [...this.clients]) client.ws.terminate();
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

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    if (this.httpHandler !== null) {
      this.httpHandler(req, res);
      return;
    }
    res.writeHead(426, { "Content-Type": "text/plain; charset=utf-8", Upgrade: "websocket", Connection: "Upgrade" });
    res.end("recodex-monitor: this is a WebSocket endpoint; connect with a WebSocket client and send a channel id\n");
  }

  private onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const ip = req.socket.remoteAddress ?? "unknown";
    const refusal = this.admission.check(ip, req.headers.origin, this.draining);
    if (refusal !== null) {
      this.log.warning(`refused WebSocket upgrade from ${ip}: ${refusalText(refusal)}`);
      socket.once("finish", () => socket.destroy());
      socket.end(refusalResponse(refusal));
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, socket, ip, req));
  }

  private accept(ws: WebSocket, socket: Socket, ip: string, req: IncomingMessage): void {
    if (this.draining) {
      ws.close(CLOSE.SHUTDOWN.code, CLOSE.SHUTDOWN.reason);
      return;
    }
    const client = new Client(ws, socket, ip, this.nextId++, ws.protocol === RESUME_PROTOCOL, this.queue);
    this.keepalive.admit(client);
    this.clients.add(client);
    this.admission.opened(ip);
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
    client.subscribeTimer = setTimeout(() => {
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
    this.log.info(
      `client #${client.id} (${client.ip}) subscribed to channel ${channel}${after >= 0 ? ` resuming after offset ${after}` : ""}`,
    );
    this.store.subscribe(channel, client, after);
  }

  private onClose(client: Client, code: number): void {
    this.clearSubscribeTimer(client);
    client.done = true;
    if (client.channel !== null) this.store.unsubscribe(client.channel, client);
    this.clients.delete(client);
    this.admission.closed(client.ip);
    if (this.log.debugEnabled) {
      this.log.debug(`client #${client.id} (${client.ip}) disconnected with ${code}${client.channel !== null ? ` from channel ${client.channel}` : ""}`);
    }
    if (this.clients.size === 0 && this.onEmpty !== null) this.onEmpty();
  }

  private clearSubscribeTimer(client: Client): void {
    if (client.subscribeTimer !== null) clearTimeout(client.subscribeTimer);
    client.subscribeTimer = null;
  }
}
