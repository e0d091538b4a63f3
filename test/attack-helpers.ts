// Tools for the attack tests: the monitor as an adversary meets it (under a lower open-files
// limit, in a private mount namespace), raw TCP sockets that misbehave, and what the
// process costs (/proc). Loopback only; every wait is bounded and waits on an observable.
import { readdirSync, readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { randomBytes } from "node:crypto";
import type { TestContext } from "node:test";
import { Broker, Browser, MAIN, waitUntil } from "./helpers.ts";
import { monitor } from "./feature-helpers.ts";
import type { MonitorProcess, StartOptions } from "./helpers.ts";

/** The command that runs the monitor under `ulimit -n nofile` (soft and hard). */
export function underFileLimit(nofile: number, command: string[] = [process.execPath, MAIN]): string[] {
  return ["sh", "-c", `ulimit -n ${nofile} && exec "$@"`, "sh", ...command];
}

/**
 * The command that runs the monitor in a private mount namespace with a tmpfs of `size`
 * mounted at `dir` (visible to the test as /proc/PID/root/DIR, to no one else).
 */
export function withTmpfs(dir: string, size: string, command: string[] = [process.execPath, MAIN]): string[] {
  return ["unshare", "-m", "sh", "-c", `mount -t tmpfs -o size=${size} rmon-test "${dir}" && exec "$@"`, "sh", ...command];
}

/** A monitor with its HTTP endpoints on a port of their own (read from the ready line). */
export async function monitorWithMetrics(t: TestContext, extraYaml = "", options: StartOptions = {}): Promise<MonitorProcess & { httpPort: number }> {
  const m = await monitor(t, { ...options, extraYaml: `http:\n  enabled: true\n  uri: ["127.0.0.1", 0]\n${extraYaml}` });
  const line = await m.waitFor(/HTTP endpoints on port \d+/);
  return Object.assign(m, { httpPort: Number(line.match(/\d+$/)![0]) });
}

export interface ProcessCost {
  /** User + system CPU seconds so far. */
  cpu: number;
  rssMB: number;
  fds: number;
}

/** What the process `pid` has cost so far, from /proc. */
export function processCost(pid: number): ProcessCost {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  const rss = Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+) kB/m)![1]) / 1024;
  return { cpu: ticks / 100, rssMB: Math.round(rss), fds: readdirSync(`/proc/${pid}/fd`).length };
}

/** A TCP socket to the monitor that records whether, and when, the monitor closed it. */
export class RawSocket {
  readonly socket: Socket;
  readonly connected: Promise<void>;
  /** The bytes the monitor sent (capped at 64 KiB). */
  received = "";
  closed = false;
  error: string | null = null;
  readonly ended: Promise<void>;

  constructor(port: number, host = "127.0.0.1", localAddress?: string) {
    this.socket = connect({ port, host, ...(localAddress ? { localAddress } : {}) });
    this.connected = new Promise((resolve, reject) => {
      this.socket.once("connect", () => resolve());
      this.socket.once("error", reject);
    });
    this.connected.catch(() => {});
    this.socket.on("error", (err: NodeJS.ErrnoException) => {
      this.error ??= err.code ?? err.message;
    });
    this.socket.on("data", (d: Buffer) => {
      if (this.received.length < 65536) this.received += d.toString("latin1");
    });
    this.ended = new Promise((resolve) =>
      this.socket.once("close", () => {
        this.closed = true;
        resolve();
      }),
    );
  }

  /** Resolves once the monitor has closed the connection; fails after `ms`. */
  async waitClosed(ms: number, what = "the monitor to close the socket"): Promise<void> {
    await waitUntil(() => this.closed, ms, what);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** The start of an upgrade request, without the blank line that would end its headers. */
export function partialUpgrade(port: number): string {
  return `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`;
}

/** A complete upgrade request (a legacy client unless `protocol` is given), plus extra header lines. */
export function upgradeRequest(port: number, extra: string[] = [], protocol?: string): string {
  return (
    `GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n` +
    (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : "") +
    extra.map((h) => `${h}\r\n`).join("") +
    "\r\n"
  );
}

/** A masked client frame (opcode 1 text, 0xA pong ...), payloads below 126 bytes. */
export function clientFrame(opcode: number, text: string): Buffer {
  const payload = Buffer.from(text, "utf8");
  if (payload.length >= 126) throw new Error("clientFrame: short payloads only");
  const mask = randomBytes(4);
  const frame = Buffer.alloc(6 + payload.length);
  frame[0] = 0x80 | opcode;
  frame[1] = 0x80 | payload.length;
  mask.copy(frame, 2);
  for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i] ^ mask[i % 4];
  return frame;
}

/**
 * A WebSocket client that subscribes and then stops reading (its socket is paused), so that
 * what the monitor sends piles up in the monitor's buffers. It can still write (pongs).
 */
export async function nonReader(port: number, channel: string, protocol?: string): Promise<RawSocket> {
  const raw = new RawSocket(port);
  await raw.connected;
  raw.socket.write(upgradeRequest(port, [], protocol));
  await waitUntil(() => raw.received.includes("\r\n\r\n") || raw.closed, 5000, "the upgrade answer");
  if (!raw.received.startsWith("HTTP/1.1 101")) throw new Error(`upgrade refused: ${raw.received.split("\r\n")[0]}`);
  raw.socket.write(clientFrame(1, channel));
  raw.socket.pause();
  return raw;
}

/** The value of a metric in Prometheus text, 0 when it is not there (yet). */
export function metricValue(text: string, name: string): number {
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ")) return Number(line.slice(name.length + 1));
  }
  return 0;
}

/** The monitor's exit code, or a failure if it is still running after `ms`. */
export async function exitCode(m: MonitorProcess, ms = 10_000): Promise<number | string> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      m.exited,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`still running after ${ms} ms:\n${m.output()}`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A well-behaved client on a channel of its own, and the broker that feeds it: the broker
 * has written to the channel (STARTED) and the client has received that, so the channel is
 * known and the subscription done.
 */
export async function watcher(t: TestContext, m: MonitorProcess, channel: string): Promise<{ broker: Broker; browser: Browser }> {
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  await broker.send(channel, "STARTED");
  const browser = await Browser.open(m.wsPort, channel);
  t.after(() => browser.close());
  await browser.waitMessages(1);
  return { broker, browser };
}
