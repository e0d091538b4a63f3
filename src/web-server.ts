// The HTTP or HTTPS server under the WebSocket port: binding, the TLS certificate and its
// reload, and every raw connection it has accepted (including ones that never become
// WebSocket clients). Each connection is admitted or refused the moment it is accepted, must
// send its request headers (after its TLS handshake) within the handshake time, and is cut
// at shutdown. Requests and upgrades are handed to the gateway with what admission gave the
// connection; this file knows nothing of WebSockets.
import { createServer as createHttpServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { Socket } from "node:net";
import type { Address } from "./config.ts";
import { monitorError, reasonOf, type MonitorError } from "./errors.ts";

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
}

export interface WebHandlers<Seat> {
  /** A connection was accepted: its seat, or the raw HTTP response that refuses it. */
  accept(socket: Socket): { seat: Seat } | { refusal: string };
  /** An admitted connection has closed. */
  closed(seat: Seat): void;
  /** An admitted connection sent no complete request headers in time, and was cut. */
  handshakeTimeout(seat: Seat): void;
  request(req: IncomingMessage, res: ServerResponse, seat: Seat): void;
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer, seat: Seat): void;
}

interface Connection<Seat> {
  readonly socket: Socket;
  readonly seat: Seat;
  readonly key: string;
  timer: ReturnType<typeof setTimeout> | null;
}

export class WebServer<Seat> {
  private readonly server: Server | HttpsServer;
  /**
   * Admitted connections by remote address and port. With TLS the request arrives on a
   * TLSSocket wrapped around the accepted socket; the pair of the peer's address and port is
   * what both share.
   */
  private readonly connections = new Map<string, Connection<Seat>>();
  private readonly refused = new Set<Socket>();
  private readonly handlers: WebHandlers<Seat>;
  private readonly onError: (err: Error) => void;
  readonly tls: boolean;
  port = 0;
  /** limits.handshake_timeout, in ms; applies to connections accepted from then on. */
  handshakeTimeoutMs: number;

  constructor(tls: TlsFiles | null, handlers: WebHandlers<Seat>, handshakeTimeoutMs: number, onError: (err: Error) => void) {
    this.tls = tls !== null;
    this.handlers = handlers;
    this.handshakeTimeoutMs = handshakeTimeoutMs;
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      const c = this.connectionOf(req);
      if (c !== undefined) handlers.request(req, res, c.seat);
    };
    this.server = tls === null ? createHttpServer(onRequest) : createTlsServer(tls, onRequest);
    this.server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
      const c = this.connectionOf(req);
      if (c !== undefined) handlers.upgrade(req, socket, head, c.seat);
      else socket.destroy();
    });
    this.server.on("clientError", (_err: Error, socket: Socket) => socket.destroy());
    this.server.on("connection", (socket: Socket) => this.onConnection(socket));
    this.onError = onError;
  }

  async listen(address: Address): Promise<void> {
    this.port = await listenOn(this.server, address, "WebSocket clients", "websocket_uri");
    this.server.on("error", this.onError);
  }

  reloadTls(tls: TlsFiles): void {
    try {
      (this.server as HttpsServer).setSecureContext({ cert: tls.cert, key: tls.key });
    } catch (err) {
      throw tlsError(err);
    }
  }

  /** Stops accepting; resolves once the listening socket is closed and every connection is gone. */
  stopListening(): Promise<void> {
    return new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Cuts every connection still open (refused upgrades, half-open TLS, clients that did not close). */
  destroyAll(): void {
    for (const c of this.connections.values()) c.socket.destroy();
    for (const socket of this.refused) socket.destroy();
  }

  private onConnection(socket: Socket): void {
    socket.on("error", destroyOnError);
    const outcome = this.handlers.accept(socket);
    if ("refusal" in outcome) {
      // Nothing is read from a refused connection; a TLS one cannot even be told why.
      this.refused.add(socket);
      socket.once("close", () => this.refused.delete(socket));
      if (this.tls) {
        socket.destroy();
      } else {
        socket.once("finish", () => socket.destroy());
        socket.end(outcome.refusal);
      }
      return;
    }
    const key = `${socket.remoteAddress}|${socket.remotePort}`;
    const c: Connection<Seat> = { socket, seat: outcome.seat, key, timer: null };
    c.timer = setTimeout(() => {
      c.timer = null;
      socket.destroy();
      this.handlers.handshakeTimeout(c.seat);
    }, this.handshakeTimeoutMs);
    this.connections.set(key, c);
    socket.once("close", () => {
      if (c.timer !== null) clearTimeout(c.timer);
      if (this.connections.get(key) === c) this.connections.delete(key);
      this.handlers.closed(c.seat);
    });
  }

  /** The admitted connection a request came on; its headers are complete, so its handshake time is over. */
  private connectionOf(req: IncomingMessage): Connection<Seat> | undefined {
    const c = this.connections.get(`${req.socket.remoteAddress}|${req.socket.remotePort}`);
    if (c !== undefined && c.timer !== null) {
      clearTimeout(c.timer);
      c.timer = null;
    }
    return c;
  }
}

/** How long an answered connection stays open for its peer to read the answer before it is cut. */
const LINGER_MS = 1000;

/**
 * Answers a request that gets nothing else and closes its connection without reading its
 * body. The answer goes straight onto the socket, followed by a FIN; node's HTTP parser then
 * stops reading once the unread body fills the request's buffer (16 KiB). The socket is
 * destroyed a moment later rather than at once: closing with unread data sends a reset, and a
 * reset arriving while the client is still sending makes it drop the answer unread.
 */
export function answerAndClose(res: ServerResponse, status: number, headers: Readonly<Record<string, string>>, body: string): void {
  const socket = res.req.socket;
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join("");
  const connection = headers.Connection === undefined ? "Connection: close\r\n" : "";
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\n${lines}${connection}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  socket.once("close", () => clearTimeout(timer));
}

/** Binds `server` at `address`; a failure is RMON_ERR_BIND naming `what` and the config key. */
export async function listenOn(server: Server | HttpsServer, [host, port]: Address, what: string, key: string): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => {
      reject(monitorError("RMON_ERR_BIND", { what, address: `${host === "" ? "*" : host}:${port}`, key, reason: reasonOf(err) }));
    };
    server.once("error", onError);
    const done = () => {
      server.off("error", onError);
      resolve();
    };
    if (host === "") server.listen(port, done);
    else server.listen(port, host, done);
  });
  const addr = server.address();
  return typeof addr === "object" && addr !== null ? addr.port : port;
}

function createTlsServer(tls: TlsFiles, onRequest: (req: IncomingMessage, res: ServerResponse) => void): HttpsServer {
  try {
    return createHttpsServer({ cert: tls.cert, key: tls.key }, onRequest);
  } catch (err) {
    throw tlsError(err);
  }
}

function tlsError(err: unknown): MonitorError {
  return monitorError("RMON_ERR_TLS", { what: "certificate or key", reason: reasonOf(err) });
}

/** One listener for every socket (`this` is the socket), rather than a closure per connection. */
function destroyOnError(this: Socket): void {
  this.destroy();
}
