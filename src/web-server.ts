// The HTTP or HTTPS server under the WebSocket port: binding, the TLS certificate and its
// reload, and every raw connection it has accepted (including ones that never become
// WebSocket clients), so that shutdown can cut them all. Requests and upgrades are handed
// to the gateway; this file knows nothing of WebSockets.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { Socket } from "node:net";
import type { Address } from "./config.ts";
import { monitorError, reasonOf, type MonitorError } from "./errors.ts";

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
}

export interface WebHandlers {
  request(req: IncomingMessage, res: ServerResponse): void;
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void;
}

export class WebServer {
  private readonly server: Server | HttpsServer;
  private readonly sockets = new Set<Socket>();
  private readonly onError: (err: Error) => void;
  readonly tls: boolean;
  port = 0;

  constructor(tls: TlsFiles | null, handlers: WebHandlers, onError: (err: Error) => void) {
    this.tls = tls !== null;
    this.server = tls === null ? createHttpServer(handlers.request) : createTlsServer(tls, handlers.request);
    this.server.on("upgrade", handlers.upgrade);
    this.server.on("clientError", (_err: Error, socket: Socket) => socket.destroy());
    this.server.on("connection", (socket: Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
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
    for (const socket of this.sockets) socket.destroy();
  }
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
