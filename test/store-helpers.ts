// Test tools for the channel stores: a real redis-server of the test's own (loopback port,
// its own temporary directory, append-only file on), several monitors sharing it, and
// reading Prometheus figures. Tests skip with a clear message when redis-server is not
// installed (CI installs it: .ci/run).
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { freePort, httpGet, parseMetrics, startMonitor, tempDir, waitUntil, type MonitorProcess, type StartOptions } from "./helpers.ts";

const REDIS_SERVER = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].find((p) => existsSync(p));
const REDIS_CLI = ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"].find((p) => existsSync(p));

/** `skip` for node:test: false when redis-server and redis-cli are there, else why not. */
export const NO_REDIS: false | string =
  REDIS_SERVER !== undefined && REDIS_CLI !== undefined ? false : "redis-server / redis-cli not installed (apt-get install redis-server)";

export class RedisServer {
  readonly port: number;
  readonly dir: string;
  private child: ChildProcess | null = null;
  private log = "";

  private constructor(port: number, dir: string) {
    this.port = port;
    this.dir = dir;
  }

  static async start(t: TestContext, extra: string[] = []): Promise<RedisServer> {
    return RedisServer.startOn(t, await freePort(), extra);
  }

  /** On a port chosen beforehand (e.g. one a monitor already tries to reach). */
  static async startOn(t: TestContext, port: number, extra: string[] = []): Promise<RedisServer> {
    const server = new RedisServer(port, tempDir("rmon-redis-"));
    await server.launch(extra);
    t.after(() => server.stop("SIGKILL"));
    return server;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  get pid(): number {
    return this.child!.pid!;
  }

  /** Starts (again) on the same port and directory: an append-only file there is read back. */
  async launch(extra: string[] = []): Promise<void> {
    const child = spawn(REDIS_SERVER!, ["--port", String(this.port), "--bind", "127.0.0.1", "--dir", this.dir, "--save", "", "--appendonly", "yes", ...extra], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    child.stdout!.on("data", (d: Buffer) => (this.log += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (this.log += d.toString()));
    await waitUntil(() => /Ready to accept connections/.test(this.log) || child.exitCode !== null, 10_000, "redis-server to start");
    if (child.exitCode !== null) throw new Error(`redis-server exited: ${this.log}`);
    this.log = "";
  }

  /** Stops the server (SIGTERM: it writes its append-only file) and waits for its exit. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.child;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGCONT");
    child.kill(signal);
    await exited;
  }

  signal(signal: NodeJS.Signals): void {
    this.child!.kill(signal);
  }

  /** One redis-cli command; its output trimmed. */
  cli(...args: string[]): string {
    return execFileSync(REDIS_CLI!, ["-p", String(this.port), ...args], { encoding: "utf8", timeout: 10_000 }).trim();
  }
}

export const REDIS_PREFIX = "rmon-test:";

/** The YAML for a monitor on the Redis store (plus `extra`, which may add more sections). */
export function redisYaml(redis: RedisServer, extra = "", redisKeys = ""): string {
  return `http:\n  enabled: true\nstore:\n  kind: redis\n  redis:\n    url: "${redis.url}"\n    key_prefix: "${REDIS_PREFIX}"\n${redisKeys}${extra}`;
}

/** A monitor on the test's Redis, stopped when the test ends. */
export async function redisMonitor(t: TestContext, redis: RedisServer, options: StartOptions & { redisKeys?: string } = {}): Promise<MonitorProcess> {
  const m = await startMonitor({ ...options, extraYaml: redisYaml(redis, options.extraYaml ?? "", options.redisKeys ?? "") });
  t.after(() => m.stop("SIGKILL"));
  return m;
}

/** The figures of a monitor's /metrics. */
export async function figures(port: number): Promise<Map<string, number>> {
  return parseMetrics((await httpGet(port, "/metrics")).body);
}

export async function figure(port: number, name: string): Promise<number> {
  const value = (await figures(port)).get(name);
  if (value === undefined) throw new Error(`metric ${name} not found`);
  return value;
}

/** Waits until a monitor's /metrics figure satisfies `ok`. */
export async function waitFigure(port: number, name: string, ok: (v: number) => boolean, ms = 15_000): Promise<number> {
  let last = NaN;
  await waitUntil(async () => ok((last = await figure(port, name))), ms, () => `${name} (last ${last})`);
  return last;
}

/** The frames a resumable client got, as offsets and messages (and gap notices). */
export function unwrap(frames: readonly string[]): ({ offset: number; message: string } | { gap: number })[] {
  return frames.map((f) => {
    const gap = f.match(/^\{"gap": \{"first_offset": (\d+)\}\}$/);
    if (gap) return { gap: Number(gap[1]) };
    // The message's own bytes, exactly as the broker side made them.
    const m = f.match(/^\{"offset": (\d+), "message": (.*)\}$/);
    if (!m) throw new Error(`not a resumable frame: ${f}`);
    return { offset: Number(m[1]), message: m[2] };
  });
}

/** Where a state file goes in a fresh directory. */
export function statePath(): string {
  return join(tempDir("rmon-state-"), "channels.state");
}
