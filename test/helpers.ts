// Shared test tools: the real monitor as a child process, a real ZeroMQ ROUTER broker,
// and real WebSocket clients, all on loopback.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect, createServer, type Socket } from "node:net";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as zmq from "zeromq";
import { WebSocket } from "ws";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const MAIN = join(ROOT, "src", "main.ts");

export function tempDir(prefix = "rmon-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A TCP port that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface MonitorProcess {
  child: ChildProcess;
  wsPort: number;
  zmqPort: number;
  configPath: string;
  dir: string;
  /** Everything written to stderr so far (the log, with logger.file "-"). */
  output(): string;
  /** Waits until the output matches, or fails after `ms`. */
  waitFor(pattern: RegExp, ms?: number): Promise<string>;
  /** Resolves with the exit code (or signal name) once the process has ended. */
  exited: Promise<number | string>;
  stop(signal?: NodeJS.Signals): Promise<number | string>;
}

export interface StartOptions {
  /** YAML text appended to the generated config (ports and logger.file are set already). */
  extraYaml?: string;
  /** Command to run instead of `node src/main.ts` (e.g. the built binary). */
  command?: string[];
  env?: NodeJS.ProcessEnv;
  waitReady?: boolean;
  /** Ports to use instead of fresh free ones (e.g. a port a test has bound already). */
  wsPort?: number;
  zmqPort?: number;
}

export async function startMonitor(options: StartOptions = {}): Promise<MonitorProcess> {
  const dir = tempDir();
  const wsPort = options.wsPort ?? (await freePort());
  const zmqPort = options.zmqPort ?? (await freePort());
  const configPath = join(dir, "config.yml");
  const extra = options.extraYaml ?? "";
  const hasLogger = /^logger:/m.test(extra);
  writeFileSync(
    configPath,
    `websocket_uri: ["127.0.0.1", ${wsPort}]\nzeromq_uri: ["127.0.0.1", ${zmqPort}]\n` +
      (hasLogger ? "" : `logger:\n  file: "-"\n  level: debug\n`) +
      extra,
  );
  const cmd = options.command ?? [process.execPath, MAIN];
  const child = spawn(cmd[0], [...cmd.slice(1), "-c", configPath], {
    stdio: ["ignore", "pipe", "pipe"],
    env: options.env ?? process.env,
  });
  let out = "";
  const waiters: { pattern: RegExp; resolve: (s: string) => void }[] = [];
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const w of [...waiters]) {
      const m = out.match(w.pattern);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m[0]);
      }
    }
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<number | string>((resolve) =>
    child.on("exit", (code, signal) => resolve(code ?? signal ?? "unknown")),
  );
  const waitFor = (pattern: RegExp, ms = 10_000) =>
    new Promise<string>((resolve, reject) => {
      const m = out.match(pattern);
      if (m) return resolve(m[0]);
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}; output so far:\n${out}`)), ms);
      waiters.push({
        pattern,
        resolve: (s) => {
          clearTimeout(timer);
          resolve(s);
        },
      });
      void exited.then((code) => {
        clearTimeout(timer);
        if (!out.match(pattern)) reject(new Error(`monitor exited (${code}) before ${pattern}; output:\n${out}`));
      });
    });
  const proc: MonitorProcess = {
    child,
    wsPort,
    zmqPort,
    configPath,
    dir,
    output: () => out,
    waitFor,
    exited,
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  if (options.waitReady !== false) await waitFor(/recodex-monitor ready/);
  return proc;
}

/** A ZeroMQ ROUTER that plays the broker: it connects and addresses "recodex-monitor". */
export class Broker {
  readonly socket: zmq.Router;

  private constructor() {
    this.socket = new zmq.Router({ mandatory: true, linger: 0 });
  }

  static async connect(port: number, host = "127.0.0.1"): Promise<Broker> {
    const b = new Broker();
    b.socket.connect(`tcp://${host.includes(":") ? `[${host}]` : host}:${port}`);
    if (host.includes(":")) b.socket.ipv6 = true;
    return b;
  }

  /** Sends raw frames after the routing id, retrying until the handshake has completed. */
  async sendFrames(frames: (string | Buffer)[], timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.socket.send(["recodex-monitor", ...frames]);
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== "EHOSTUNREACH" || Date.now() > deadline) throw err;
        await delay(10);
      }
    }
  }

  send(channel: string, command: string, ...rest: string[]): Promise<void> {
    return this.sendFrames([channel, command, ...rest]);
  }

  close(): void {
    this.socket.close();
  }
}

/** A WebSocket client that records every frame and how the connection closed. */
export class Browser {
  readonly ws: WebSocket;
  readonly messages: string[] = [];
  closed: { code: number; reason: string } | null = null;
  readonly opened: Promise<void>;
  readonly closedPromise: Promise<{ code: number; reason: string }>;
  private waiters: (() => void)[] = [];

  constructor(url: string, protocols?: string | string[], options: ConstructorParameters<typeof WebSocket>[2] = {}) {
    this.ws = new WebSocket(url, protocols, { perMessageDeflate: false, ...options });
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
    this.closedPromise = new Promise((resolve) =>
      this.ws.on("close", (code: number, reason: Buffer) => {
        this.closed = { code, reason: reason.toString() };
        this.wake();
        resolve(this.closed);
      }),
    );
  }

  static async open(port: number, channel?: string, path = "/"): Promise<Browser> {
    const b = new Browser(`ws://127.0.0.1:${port}${path}`);
    await b.opened;
    if (channel !== undefined) b.ws.send(channel);
    return b;
  }

  /** Waits until at least n messages have arrived (or the connection closed). */
  async waitMessages(n: number, ms = 10_000): Promise<string[]> {
    const deadline = Date.now() + ms;
    while (this.messages.length < n) {
      if (this.closed !== null) throw new Error(`closed (${this.closed.code}) after ${this.messages.length}/${n} messages`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out with ${this.messages.length}/${n} messages: ${JSON.stringify(this.messages.slice(-3))}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.messages.slice(0, n);
  }

  async waitClose(ms = 10_000): Promise<{ code: number; reason: string }> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not closed within ${ms} ms; got ${this.messages.length} messages`)), ms);
    });
    try {
      return await Promise.race([this.closedPromise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.ws.terminate();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

// ---- Additions for the module and end-to-end tests ----

export interface CliResult {
  code: number | string;
  stdout: string;
  stderr: string;
}

/** Runs `node src/main.ts ARGS` to completion (killed after `timeoutMs`). */
export async function runCli(
  args: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; command?: string[] } = {},
): Promise<CliResult> {
  const cmd = options.command ?? [process.execPath, MAIN];
  const child = spawn(cmd[0], [...cmd.slice(1), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: options.env ?? process.env,
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 10_000);
  const code = await new Promise<number | string>((resolve) =>
    child.on("close", (c, signal) => resolve(c ?? signal ?? "unknown")),
  );
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** Writes `yaml` to a config file in a fresh temporary directory and returns its path. */
export function writeConfig(yaml: string, name = "config.yml"): string {
  const path = join(tempDir(), name);
  writeFileSync(path, yaml);
  return path;
}

export interface HttpReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A plain GET (or another method) on loopback; https with a CA when given. */
export function httpGet(
  port: number,
  path: string,
  options: { method?: string; tls?: boolean; ca?: Buffer; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<HttpReply> {
  const request = options.tls ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        path,
        method: options.method ?? "GET",
        headers: options.headers,
        agent: false,
        ...(options.tls ? { ca: options.ca, rejectUnauthorized: options.ca !== undefined } : {}),
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on("error", reject);
      },
    );
    req.setTimeout(options.timeoutMs ?? 5000, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on("error", reject);
    req.end();
  });
}

/** Prometheus text to a map "name" or 'name{label="v"}' -> value. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = line.match(/^(\S+)\s+(\S+)$/);
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}

/** The value of a Prometheus gauge or counter (without labels) from /metrics. */
export async function metric(port: number, name: string): Promise<number> {
  const value = parseMetrics((await httpGet(port, "/metrics")).body).get(name);
  if (value === undefined) throw new Error(`metric ${name} not found`);
  return value;
}

/** Polls `check` until it returns true, or fails after `ms` saying what it waited for. */
export async function waitUntil(
  check: () => boolean | Promise<boolean>,
  ms = 5000,
  what: string | (() => string) = "condition",
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === "string" ? what : what()}`);
    await delay(20);
  }
}

/** How many times `pattern` occurs in `text`. */
export function count(text: string, pattern: RegExp): number {
  return (text.match(new RegExp(pattern.source, pattern.flags.includes("g") ? pattern.flags : pattern.flags + "g")) ?? []).length;
}

/**
 * A WebSocket client over a bare TCP socket, for frames the ws client will not send
 * (a text frame that is not UTF-8). Reads the server's close frame.
 */
export class RawWebSocket {
  readonly socket: Socket;
  private buffer = Buffer.alloc(0);
  closeCode: number | null = null;
  readonly ended: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.ended = new Promise((resolve) => socket.once("close", () => resolve()));
    socket.on("error", () => {});
  }

  static async open(port: number, path = "/"): Promise<RawWebSocket> {
    const socket = connect(port, "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    const key = randomBytes(16).toString("base64");
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    const raw = new RawWebSocket(socket);
    await new Promise<void>((resolve, reject) => {
      const onData = (d: Buffer) => {
        raw.buffer = Buffer.concat([raw.buffer, d]);
        const end = raw.buffer.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = raw.buffer.subarray(0, end).toString();
        raw.buffer = raw.buffer.subarray(end + 4);
        socket.off("data", onData);
        socket.on("data", (more: Buffer) => raw.onData(more));
        if (!head.startsWith("HTTP/1.1 101")) reject(new Error(`handshake failed: ${head.split("\r\n")[0]}`));
        else resolve();
        raw.parse();
      };
      socket.on("data", onData);
      socket.once("close", () => reject(new Error("closed during handshake")));
    });
    return raw;
  }

  /** Sends one masked frame with the given opcode (1 text, 2 binary, 8 close). */
  sendFrame(opcode: number, payload: Buffer): void {
    if (payload.length > 125) throw new Error("short frames only");
    const mask = randomBytes(4);
    const masked = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]));
    this.socket.write(Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length]), mask, masked]));
  }

  /** Resolves with the close code the server sent (or null if it just hung up). */
  async waitClose(ms = 5000): Promise<number | null> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        this.ended,
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("raw socket not closed")), ms))),
      ]);
    } finally {
      clearTimeout(timer);
    }
    return this.closeCode;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private onData(d: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, d]);
    this.parse();
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
