// The real program as a child process: a monitor started on a generated config (ports 0,
// read back from its ready line), and one-shot command-line runs.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";
import { parse } from "yaml";
import { WAIT_MS, waitUntil } from "./wait.ts";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const MAIN = join(ROOT, "src", "main.ts");

export function tempDir(prefix = "rmon-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Writes `yaml` to a config file in a fresh temporary directory and returns its path. */
export function writeConfig(yaml: string, name = "config.yml"): string {
  const path = join(tempDir(), name);
  writeFileSync(path, yaml);
  return path;
}

// Children still running when the test process exits (a test timeout, an uncaught error)
// are killed synchronously, so that nothing outlives the run.
const live = new Map<ChildProcess, boolean>();
let exitHook = false;

/** Kills `child` (its whole process group when `group`) with SIGKILL if it still runs at exit. */
export function killOnExit(child: ChildProcess, group = false): void {
  if (child.pid === undefined) return;
  live.set(child, group);
  child.once("exit", () => live.delete(child));
  if (!exitHook) {
    exitHook = true;
    process.on("exit", () => {
      for (const [c, g] of live) {
        if (g) killGroup(c.pid!, "SIGKILL");
        else if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
      }
    });
  }
}

export function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // No such group: everything in it has ended.
  }
}

export interface StartOptions {
  /** YAML appended to the generated config (ports, and logger unless it has its own). */
  extraYaml?: string;
  /** The whole config instead of the generated one. */
  config?: string;
  /** Command to run instead of `node src/main.ts` (the built binary, Deno). */
  command?: string[];
  env?: NodeJS.ProcessEnv;
  /** Wait for the ready line (default); false for a monitor expected to fail at start. */
  waitReady?: boolean;
  /** A port the test has bound itself (busy-port tests); otherwise 0. */
  wsPort?: number;
  zmqPort?: number;
}

// The monitor's ready line names the ports it bound: e.g. "recodex-monitor ready:
// ws://127.0.0.1:41235, ZeroMQ tcp://127.0.0.1:39111, HTTP endpoints on port 40001".
const READY = /recodex-monitor ready: (wss?):\/\/\S*:(\d+), ZeroMQ \S*:(\d+)\b(?:, HTTP endpoints on (?:port (\d+)|the WebSocket port))?/;

// Starting takes longest of all on a loaded machine (a runtime, TypeScript, the addon).
const READY_MS = 30_000;

interface Ports {
  scheme: string;
  ws: number;
  zmq: number;
  http: number | null;
}

export class MonitorProcess {
  readonly child: ChildProcess;
  readonly configPath: string;
  readonly dir: string;
  /** Where the log goes: null for stderr ("-"). */
  readonly logFile: string | null;
  /** Resolves with the exit code (or the signal's name) once the process has ended. */
  readonly exited: Promise<number | string>;
  private out = "";
  private readonly listeners = new Set<() => void>();
  private ports: Ports | null = null;

  constructor(child: ChildProcess, configPath: string, dir: string, logFile: string | null) {
    this.child = child;
    this.configPath = configPath;
    this.dir = dir;
    this.logFile = logFile;
    const onData = (d: Buffer) => {
      this.out += d.toString();
      for (const f of [...this.listeners]) f();
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    this.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? "unknown")));
    void this.exited.then(() => {
      for (const f of [...this.listeners]) f();
    });
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  get wsPort(): number {
    return this.bound().ws;
  }

  /** The WebSocket URL of `path` on this monitor (wss:// when it serves TLS). */
  url(path = "/"): string {
    const { scheme, ws } = this.bound();
    return `${scheme}://127.0.0.1:${ws}${path}`;
  }

  get zmqPort(): number {
    return this.bound().zmq;
  }

  /** The port of http.uri (only when the endpoints have a port of their own). */
  get httpPort(): number {
    const http = this.bound().http;
    if (http === null) throw new Error("the monitor serves no HTTP endpoints on a port of their own");
    return http;
  }

  /** Everything written to stdout and stderr so far (the log, with logger.file "-"). */
  output(): string {
    return this.out;
  }

  /** A position in output(), for waitFor(..., { since }). */
  mark(): number {
    return this.out.length;
  }

  /** Resolves with the first match of `pattern` in the output after `since`. */
  waitFor(pattern: RegExp, options: { since?: number; ms?: number } = {}): Promise<string> {
    const { since = 0, ms = WAIT_MS } = options;
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = this.out.slice(since).match(pattern);
        if (m !== null) {
          done();
          resolve(m[0]);
        } else if (!this.running) {
          done();
          reject(new Error(`monitor exited (${this.child.exitCode ?? this.child.signalCode}) before ${pattern}; output:\n${this.out}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${ms} ms waiting for ${pattern}; output so far:\n${this.out}`));
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
      check();
    });
  }

  /** Waits for the ready line (on stderr, or in the log file) and reads the ports from it. */
  async ready(): Promise<void> {
    let line: RegExpMatchArray | null = null;
    if (this.logFile === null) {
      line = (await this.waitFor(READY, { ms: READY_MS })).match(READY);
    } else {
      const file = this.logFile;
      await waitUntil(
        () => {
          if (!this.running) throw new Error(`monitor exited (${this.child.exitCode ?? this.child.signalCode}) before it was ready:\n${this.out}`);
          line = existsSync(file) ? readFileSync(file, "utf8").match(READY) : null;
          return line !== null;
        },
        () => `the ready line in ${file}; stderr:\n${this.out}`,
        READY_MS,
      );
    }
    const [, scheme, ws, zmq, http] = line!;
    this.ports = { scheme, ws: Number(ws), zmq: Number(zmq), http: http === undefined ? null : Number(http) };
  }

  /** Sends `signal` (SIGKILL after WAIT_MS) and resolves with the exit code. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number | string> {
    if (this.running) this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), WAIT_MS);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }

  /** Rewrites the config file: `edit` gets the current text and returns the new one. */
  editConfig(edit: (text: string) => string): void {
    writeFileSync(this.configPath, edit(readFileSync(this.configPath, "utf8")));
  }

  /** Sends SIGHUP and resolves with the reload's log line (either outcome). */
  async reload(): Promise<string> {
    const since = this.mark();
    this.child.kill("SIGHUP");
    return this.waitFor(/[^\n]*configuration (not )?reloaded[^\n]*(?=\n)/, { since });
  }

  /**
   * A copy of the config that names the ports the monitor bound instead of 0: what an
   * operator's config for this monitor says (for `check -c`).
   */
  configWithPorts(): string {
    const { ws, zmq, http } = this.bound();
    let text = readFileSync(this.configPath, "utf8")
      .replace(/^(websocket_uri: \[[^,\]]*, )0\]/m, `$1${ws}]`)
      .replace(/^(zeromq_uri: \[[^,\]]*, )0\]/m, `$1${zmq}]`);
    if (http !== null) text = text.replace(/^(\s+uri: \[[^,\]]*, )0\]/m, `$1${http}]`);
    const path = join(this.dir, "with-ports.yml");
    writeFileSync(path, text);
    return path;
  }

  private bound(): Ports {
    if (this.ports === null) throw new Error("the monitor's ports are known once its ready line has been read");
    return this.ports;
  }
}

function configText(options: StartOptions): string {
  if (options.config !== undefined) return options.config;
  const extra = options.extraYaml ?? "";
  return (
    `websocket_uri: ["127.0.0.1", ${options.wsPort ?? 0}]\nzeromq_uri: ["127.0.0.1", ${options.zmqPort ?? 0}]\n` +
    (/^logger:/m.test(extra) ? "" : `logger:\n  file: "-"\n  level: debug\n`) +
    extra
  );
}

/** Starts the monitor; by default resolves once it is ready, with its ports known. */
export async function startMonitor(options: StartOptions = {}): Promise<MonitorProcess> {
  const dir = tempDir();
  const configPath = join(dir, "config.yml");
  const text = configText(options);
  writeFileSync(configPath, text);
  // Where the ready line will appear; the original's default log file when none is named.
  const logger = (parse(text) as { logger?: { file?: unknown; level?: unknown } } | null)?.logger;
  const file = typeof logger?.file === "string" ? logger.file : "/tmp/recodex-monitor.log";
  const waitReady = options.waitReady !== false;
  if (waitReady && ["warning", "error", "critical"].includes(String(logger?.level))) {
    throw new Error(`at logger.level ${String(logger?.level)} the monitor logs no ready line: start it with waitReady: false`);
  }
  const cmd = options.command ?? [process.execPath, MAIN];
  const child = spawn(cmd[0], [...cmd.slice(1), "-c", configPath], {
    stdio: ["ignore", "pipe", "pipe"],
    env: options.env ?? process.env,
  });
  killOnExit(child);
  const m = new MonitorProcess(child, configPath, dir, file === "-" ? null : file);
  if (waitReady) {
    try {
      await m.ready();
    } catch (err) {
      await m.stop("SIGKILL");
      throw err;
    }
  }
  return m;
}

/** startMonitor() for one test: the monitor is killed when the test ends. */
export async function monitor(t: TestContext, options: StartOptions = {}): Promise<MonitorProcess> {
  const m = await startMonitor(options);
  t.after(() => m.stop("SIGKILL"));
  return m;
}

export interface CliResult {
  code: number | string;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit. */
  ms: number;
}

/** Runs `node src/main.ts ARGS` to completion (killed after `timeoutMs`). */
export async function runCli(
  args: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; command?: string[] } = {},
): Promise<CliResult> {
  const cmd = options.command ?? [process.execPath, MAIN];
  const started = performance.now();
  const child = spawn(cmd[0], [...cmd.slice(1), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: options.env ?? process.env,
  });
  killOnExit(child);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 20_000);
  const code = await new Promise<number | string>((resolve) =>
    child.on("close", (c, signal) => resolve(c ?? signal ?? "unknown")),
  );
  clearTimeout(timer);
  return { code, stdout, stderr, ms: performance.now() - started };
}
