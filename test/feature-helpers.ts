// Test tools for the opt-in features (TLS, HTTP endpoints, access limits, resumable
// streams, the self-test command). Everything runs on loopback against the real program.
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import type { TestContext } from "node:test";
import {
  Browser,
  httpGet,
  parseMetrics,
  runCli as baseRunCli,
  startMonitor,
  waitUntil as baseWaitUntil,
  type CliResult as BaseCliResult,
  type MonitorProcess,
  type StartOptions,
} from "./helpers.ts";

export { httpGet, parseMetrics, type HttpReply } from "./helpers.ts";

export { RESUME_PROTOCOL as RESUME } from "../src/subscription.ts";

/**
 * startMonitor() that retries when a port picked by freePort() was taken in between
 * (exit 4, e.g. by an outgoing connection's ephemeral port), and stops the monitor when
 * the test ends.
 */
export async function monitor(t: TestContext, options: StartOptions = {}): Promise<MonitorProcess> {
  for (let attempt = 1; ; attempt++) {
    try {
      const m = await startMonitor(options);
      t.after(() => m.stop("SIGKILL"));
      return m;
    } catch (err) {
      if (attempt >= 3 || !/exited \(4\)/.test((err as Error).message)) throw err;
    }
  }
}

export interface CertFiles {
  cert: string;
  key: string;
  /** SHA-256 fingerprint as node reports it (AA:BB:...). */
  fingerprint: string;
}

/** A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI. */
export function makeCert(dir: string, name: string): CertFiles {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout", key, "-out", cert,
    ],
    { stdio: "ignore", timeout: 30_000 },
  );
  return { cert, key, fingerprint: new X509Certificate(readFileSync(cert)).fingerprint256 };
}

/** Replaces the contents of `target` by those of `source` atomically (write + rename). */
export function replaceFile(source: string, target: string): void {
  const tmp = `${target}.tmp`;
  writeFileSync(tmp, readFileSync(source));
  renameSync(tmp, target);
}

/** The SHA-256 fingerprint of the certificate a TLS server at port presents. */
export function serverFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false, servername: "localhost" }, () => {
      const fp = socket.getPeerCertificate().fingerprint256;
      socket.destroy();
      resolve(fp);
    });
    socket.setTimeout(5000, () => {
      socket.destroy();
      reject(new Error("TLS handshake timed out"));
    });
    socket.once("error", reject);
  });
}

/** The fingerprint of the certificate seen by an open wss Browser. */
export function browserFingerprint(b: Browser): string {
  const socket = (b.ws as unknown as { _socket: import("node:tls").TLSSocket })._socket;
  return socket.getPeerCertificate().fingerprint256;
}

export async function metrics(port: number): Promise<Map<string, number>> {
  const reply = await httpGet(port, "/metrics");
  if (reply.status !== 200) throw new Error(`/metrics answered ${reply.status}: ${reply.body}`);
  return parseMetrics(reply.body);
}

/** The value of one metric; fails the test when the metric is not exported at all. */
export function metric(all: Map<string, number>, name: string): number {
  const v = all.get(name);
  if (v === undefined) throw new Error(`metric ${name} not exported; have: ${[...all.keys()].join(", ")}`);
  return v;
}

/** helpers.waitUntil with the description first, as these tests call it. */
export function waitUntil(check: () => boolean | Promise<boolean>, what: string | (() => string), ms = 5000): Promise<void> {
  return baseWaitUntil(check, ms, what);
}

/** How an upgrade attempt ended: open, or the HTTP status of the refusal. */
export async function upgradeOutcome(
  url: string,
  options: ConstructorParameters<typeof Browser>[2] = {},
  protocols?: string | string[],
): Promise<{ browser: Browser; status: number | "open"; body: string }> {
  const b = new Browser(url, protocols, options);
  let body = "";
  const status = await new Promise<number | "open">((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to the upgrade of ${url}`)), 5000);
    b.ws.once("open", () => {
      clearTimeout(timer);
      resolve("open");
    });
    b.ws.once("unexpected-response", (_req, res) => {
      clearTimeout(timer);
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve(res.statusCode ?? 0));
      res.on("error", () => resolve(res.statusCode ?? 0));
    });
    b.ws.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
  return { browser: b, status, body };
}

/**
 * A WebSocket client made by hand on a raw TCP socket: it completes the opening handshake
 * and then does nothing at all (never answers a ping or a close, and can stop reading).
 */
export async function rawWebSocket(port: number, path = "/"): Promise<{ socket: Socket; head: string; send(text: string): void }> {
  const socket = netConnect({ host: "127.0.0.1", port });
  socket.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => resolve());
    socket.once("error", reject);
  });
  socket.write(
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );
  const head = await new Promise<string>((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error("no handshake answer")), 5000);
    const onData = (d: Buffer) => {
      buf += d.toString("latin1");
      const end = buf.indexOf("\r\n\r\n");
      if (end >= 0) {
        clearTimeout(timer);
        socket.off("data", onData);
        socket.pause();
        resolve(buf.slice(0, end));
      }
    };
    socket.on("data", onData);
  });
  return {
    socket,
    head,
    send(text: string) {
      // A masked text frame (clients must mask); payloads below 126 bytes only.
      const payload = Buffer.from(text, "utf8");
      if (payload.length >= 126) throw new Error("rawWebSocket.send: payload too long");
      const mask = Buffer.from([1, 2, 3, 4]);
      const frame = Buffer.alloc(6 + payload.length);
      frame[0] = 0x81;
      frame[1] = 0x80 | payload.length;
      mask.copy(frame, 2);
      for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i] ^ mask[i % 4];
      socket.write(frame);
    },
  };
}

export interface CliResult extends BaseCliResult {
  ms: number;
}

/** helpers.runCli, also timed. */
export async function runCli(args: string[], timeoutMs = 20_000, env: NodeJS.ProcessEnv = process.env): Promise<CliResult> {
  const t0 = Date.now();
  const result = await baseRunCli(args, { timeoutMs, env });
  return { ...result, ms: Date.now() - t0 };
}

/** Rewrites the monitor's config file: `edit` gets the current text and returns the new one. */
export function editConfig(m: MonitorProcess, edit: (text: string) => string): void {
  writeFileSync(m.configPath, edit(readFileSync(m.configPath, "utf8")));
}

/** Sends SIGHUP and waits for the reload's log line (either outcome); returns that line. */
export async function reload(m: MonitorProcess): Promise<string> {
  const before = m.output().length;
  m.child.kill("SIGHUP");
  await waitUntil(
    () => /configuration (not )?reloaded[^\n]*\n/.test(m.output().slice(before)),
    () => `the SIGHUP reload log line (exit ${m.child.exitCode ?? m.child.signalCode ?? "not yet"}); output since SIGHUP:\n${m.output().slice(before)}`,
  );
  return m.output().slice(before).match(/[^\n]*configuration (not )?reloaded[^\n]*/)![0];
}
