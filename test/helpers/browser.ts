// WebSocket clients playing the students' browsers: a real `ws` client that records every
// frame, ping and how the connection closed, and a client made by hand on a TCP socket for
// what `ws` will not do (send a text frame that is not UTF-8, never answer, stop reading).
import { randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { WebSocket } from "ws";
import { WAIT_MS, withTimeout } from "./wait.ts";

// The one place in test/ that names the subprotocol by its source.
export { RESUME_PROTOCOL as RESUME } from "../../src/subscription.ts";

export type ClientOptions = ConstructorParameters<typeof WebSocket>[2];

export interface Closed {
  code: number;
  reason: string;
}

export class Browser {
  readonly ws: WebSocket;
  readonly messages: string[] = [];
  /** Pings received from the server (answered by ws unless autoPong is false). */
  pings = 0;
  closed: Closed | null = null;
  /** The TCP (or TLS) socket under the connection, from the handshake's response. */
  socket: Socket | null = null;
  readonly opened: Promise<void>;
  private readonly closedPromise: Promise<Closed>;
  private readonly listeners = new Set<() => void>();

  constructor(url: string, protocols?: string | string[], options: ClientOptions = {}) {
    this.ws = new WebSocket(url, protocols, { perMessageDeflate: false, ...options });
    this.ws.once("upgrade", (res) => (this.socket = res.socket));
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", () => resolve());
      this.ws.once("error", reject);
      this.ws.once("unexpected-response", (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
    this.opened.catch(() => {});
    this.ws.on("error", () => {});
    this.ws.on("message", (data: Buffer, isBinary: boolean) => {
      this.messages.push(isBinary ? `<binary ${data.length}>` : data.toString());
      this.wake();
    });
    this.ws.on("ping", () => {
      this.pings++;
      this.wake();
    });
    this.closedPromise = new Promise((resolve) =>
      this.ws.on("close", (code: number, reason: Buffer) => {
        this.closed = { code, reason: reason.toString() };
        this.wake();
        resolve(this.closed);
      }),
    );
  }

  /** Connects to ws://127.0.0.1:port/path and, given a channel, sends it as the first message. */
  static async open(port: number, channel?: string, path = "/"): Promise<Browser> {
    const b = new Browser(`ws://127.0.0.1:${port}${path}`);
    await b.opened;
    if (channel !== undefined) b.ws.send(channel);
    return b;
  }

  /** The first n messages, once they have arrived; fails if the connection closes before. */
  async waitMessages(n: number, ms = WAIT_MS): Promise<string[]> {
    await this.until(() => this.messages.length >= n, () => `${n} messages`, ms);
    return this.messages.slice(0, n);
  }

  /** The messages that arrived before `text`, once `text` has arrived. */
  async messagesBefore(text: string, ms = WAIT_MS): Promise<string[]> {
    await this.until(() => this.messages.includes(text), () => `the message ${text}`, ms);
    return this.messages.slice(0, this.messages.indexOf(text));
  }

  /** Resolves once the server has sent n pings in all. */
  async waitPings(n: number, ms = WAIT_MS): Promise<void> {
    await this.until(() => this.pings >= n, () => `${n} pings (got ${this.pings})`, ms);
  }

  waitClose(ms = WAIT_MS): Promise<Closed> {
    return withTimeout(this.closedPromise, `the close of a client that got ${this.messages.length} messages`, ms);
  }

  close(): void {
    this.ws.terminate();
  }

  private until(done: () => boolean, what: () => string, ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = (err?: Error) => {
        clearTimeout(timer);
        this.listeners.delete(check);
        if (err === undefined) resolve();
        else reject(err);
      };
      const got = () => `got ${this.messages.length} messages, the last ${JSON.stringify(this.messages.slice(-3))}`;
      const check = () => {
        if (done()) finish();
        else if (this.closed !== null) finish(new Error(`closed (${this.closed.code}) before ${what()}; ${got()}`));
      };
      const timer = setTimeout(() => finish(new Error(`timed out after ${ms} ms waiting for ${what()}; ${got()}`)), ms);
      this.listeners.add(check);
      check();
    });
  }

  private wake(): void {
    for (const f of [...this.listeners]) f();
  }
}

/** How an upgrade attempt ended: open, or the HTTP status (and body) of the refusal. */
export async function upgradeOutcome(
  url: string,
  options: ClientOptions = {},
  protocols?: string | string[],
): Promise<{ browser: Browser; status: number | "open"; body: string }> {
  const b = new Browser(url, protocols, options);
  let body = "";
  const answer = new Promise<number | "open">((resolve, reject) => {
    b.ws.once("open", () => resolve("open"));
    b.ws.once("unexpected-response", (_req, res) => {
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve(res.statusCode ?? 0));
      res.on("error", () => resolve(res.statusCode ?? 0));
    });
    b.ws.once("error", reject);
  });
  const status = await withTimeout(answer, `an answer to the upgrade of ${url}`);
  return { browser: b, status, body };
}

/**
 * A WebSocket client made by hand on a TCP socket. After the opening handshake it reads
 * nothing and answers nothing (no pong, no close) until read() is called; reading, it only
 * notes the close frame the server sends and then hangs up its side.
 */
export class RawWebSocket {
  readonly socket: Socket;
  /** The server's answer to the handshake (status line and headers). */
  readonly head: string;
  /** The code of the server's close frame, once one was read. */
  closeCode: number | null = null;
  readonly ended: Promise<void>;
  private buffer: Buffer;
  private reading = false;

  private constructor(socket: Socket, head: string, rest: Buffer) {
    this.socket = socket;
    this.head = head;
    this.buffer = rest;
    this.ended = new Promise((resolve) => socket.once("close", () => resolve()));
  }

  static async open(port: number, path = "/"): Promise<RawWebSocket> {
    const socket = connect({ host: "127.0.0.1", port });
    socket.on("error", () => {});
    const handshake = new Promise<RawWebSocket>((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const onData = (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        socket.off("data", onData);
        socket.pause();
        const head = buf.subarray(0, end).toString("latin1");
        if (!head.startsWith("HTTP/1.1 101")) reject(new Error(`handshake refused: ${head.split("\r\n")[0]}`));
        else resolve(new RawWebSocket(socket, head, buf.subarray(end + 4)));
      };
      socket.on("data", onData);
      socket.once("close", () => reject(new Error("closed during the handshake")));
      socket.once("connect", () =>
        socket.write(
          `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        ),
      );
    });
    return withTimeout(handshake, `the WebSocket handshake on port ${port}`);
  }

  /** Sends one masked frame (opcode 1 text, 2 binary, 8 close); short payloads only. */
  sendFrame(opcode: number, payload: Buffer): void {
    if (payload.length > 125) throw new Error("RawWebSocket sends payloads of up to 125 bytes");
    const mask = randomBytes(4);
    const masked = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]));
    this.socket.write(Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length]), mask, masked]));
  }

  sendText(text: string): void {
    this.sendFrame(1, Buffer.from(text, "utf8"));
  }

  /** Starts reading what the server sends. */
  read(): void {
    if (this.reading) return;
    this.reading = true;
    this.socket.on("data", (d: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, d]);
      this.parse();
    });
    this.socket.resume();
    this.parse();
  }

  /** Reads until the server ends the connection; resolves with its close code (null: none). */
  async waitClose(ms = WAIT_MS): Promise<number | null> {
    this.read();
    await withTimeout(this.ended, "the server to end a raw WebSocket connection", ms);
    return this.closeCode;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private parse(): void {
    while (this.buffer.length >= 2) {
      const opcode = this.buffer[0] & 0x0f;
      let len = this.buffer[1] & 0x7f;
      let offset = 2;
      if (len === 126) {
        if (this.buffer.length < 4) return;
        len = this.buffer.readUInt16BE(2);
        offset = 4;
      } else if (len === 127) {
        if (this.buffer.length < 10) return;
        len = Number(this.buffer.readBigUInt64BE(2));
        offset = 10;
      }
      if (this.buffer.length < offset + len) return;
      const payload = this.buffer.subarray(offset, offset + len);
      this.buffer = this.buffer.subarray(offset + len);
      if (opcode === 8) {
        this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : null;
        this.socket.end();
      }
    }
  }
}
