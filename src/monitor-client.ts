// How the operator's commands (check, watch, send, status) reach a running monitor: its
// addresses as seen from this host, a ZeroMQ peer that plays the broker, and a GET on its
// HTTP endpoints.
import { get as plainGet } from "node:http";
import { get as httpsGet } from "node:https";
import type * as zmq from "zeromq";
import type { Address, Config } from "./config.ts";

/** The address to connect to for a listening host ("" and 0.0.0.0 mean this host). */
export function connectHost(host: string): string {
  if (host === "" || host === "0.0.0.0") return "127.0.0.1";
  if (host === "::") return "::1";
  return host;
}

export function hostPort([host, port]: Address): string {
  const h = connectHost(host);
  return `${h.includes(":") ? `[${h}]` : h}:${port}`;
}

export interface MonitorUrls {
  /** Where browsers connect, ending in "/". */
  ws: string;
  zmq: string;
  /** The HTTP endpoints' base, ending in "/"; null when http.enabled is false. */
  http: string | null;
}

export function monitorUrls(config: Config): MonitorUrls {
  const ws = `${config.websocket.tls_cert !== null ? "wss" : "ws"}://${hostPort(config.websocket_uri)}/`;
  let http: string | null = null;
  if (config.http.enabled) http = config.http.uri === null ? ws.replace(/^ws/, "http") : `http://${hostPort(config.http.uri)}/`;
  return { ws, zmq: `tcp://${hostPort(config.zeromq_uri)}`, http };
}

/**
 * A ZeroMQ ROUTER that connects to the monitor and addresses it as the broker does. A send
 * waits until the connection to a peer named recodex-monitor is up (before that, the
 * ROUTER has nobody to address), for at most `timeoutMs`, and fails once that peer has
 * gone; closing waits as long for what is queued to leave.
 */
export class BrokerPeer {
  private readonly socket: zmq.Router;
  private readonly routingId: string;
  private readonly timeoutMs: number;
  readonly url: string;

  private constructor(socket: zmq.Router, routingId: string, url: string, timeoutMs: number) {
    this.socket = socket;
    this.routingId = routingId;
    this.url = url;
    this.timeoutMs = timeoutMs;
  }

  // zeromq (through the broker link) is loaded here, not at the top: `watch` and `status`
  // never need its native addon.
  static async connect(url: string, timeoutMs: number): Promise<BrokerPeer> {
    const [{ Router }, { ROUTING_ID }] = await Promise.all([import("zeromq"), import("./broker-link.ts")]);
    // `immediate`: queue only to a connection that is up. Without it a connecting socket
    // keeps its pipe to a peer that has gone and queues into it without a word.
    const socket = new Router({ mandatory: true, immediate: true, linger: timeoutMs, sendTimeout: timeoutMs });
    if (url.includes("[")) socket.ipv6 = true;
    socket.connect(url);
    return new BrokerPeer(socket, ROUTING_ID, url, timeoutMs);
  }

  async send(frames: string[]): Promise<void> {
    try {
      await this.socket.send([this.routingId, ...frames]);
    } catch (err) {
      if ((err as { code?: string }).code !== "EHOSTUNREACH") throw err;
      throw new Error(`no ZeroMQ peer with routing id ${this.routingId} answered at ${this.url} within ${this.timeoutMs / 1000} s`);
    }
  }

  close(): void {
    this.socket.close();
  }
}

/** A GET that, like the WebSocket side of the commands, checks the monitor rather than its certificate. */
export function httpGet(url: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  const get = url.startsWith("https:") ? httpsGet : plainGet;
  return new Promise((resolve, reject) => {
    const req = get(url, { rejectUnauthorized: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      res.on("error", reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on("error", reject);
  });
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no result within ${ms / 1000} s (${what})`)), ms);
    }),
  ]);
}
