// A real redis-server of the test's own, and monitors on the Redis store that share it.
// Redis cannot bind port 0 and tell the port it got, so it listens on a unix socket in its
// own temporary directory (no port to pick, nothing to race for; node-redis takes a
// unix:// URL) and on no TCP port at all, unless a test needs TCP itself. Tests skip with
// a clear message when redis-server is not installed (CI installs it: .ci/run).
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { killOnExit, monitor, tempDir, type MonitorProcess, type StartOptions } from "./monitor-process.ts";
import { relay, type Relay } from "./relay.ts";
import { waitUntil } from "./wait.ts";

const REDIS_SERVER = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].find((p) => existsSync(p));
const REDIS_CLI = ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"].find((p) => existsSync(p));

/** `skip` for node:test: false when redis-server and redis-cli are there, else why not. */
export const NO_REDIS: false | string =
  REDIS_SERVER !== undefined && REDIS_CLI !== undefined ? false : "redis-server / redis-cli not installed (apt-get install redis-server)";

// A TCP port has to be chosen before redis-server starts. Below Linux's ephemeral range
// (32768-60999), so that no outgoing connection holds it; another listener may, and then
// redis-server says so and exits, and the start is tried again on another port.
const TCP_PORTS = { first: 20_000, count: 12_000, attempts: 10 };

export interface RedisOptions {
  /** Extra redis-server arguments (e.g. --requirepass). */
  args?: string[];
  /** Also listen on a loopback TCP port (`tcpUrl`). */
  tcp?: boolean;
}

export class RedisServer {
  readonly dir: string;
  readonly socket: string;
  /** The loopback TCP port, with `tcp`; 0 otherwise. */
  port = 0;
  private readonly options: RedisOptions;
  private child: ChildProcess | null = null;
  private log = "";

  private constructor(options: RedisOptions) {
    this.dir = tempDir("rmon-redis-");
    this.socket = join(this.dir, "redis.sock");
    this.options = options;
  }

  /** A server for one test, started; killed when the test ends. */
  static async start(t: TestContext, options: RedisOptions = {}): Promise<RedisServer> {
    const server = RedisServer.unstarted(t, options);
    await server.launch();
    return server;
  }

  /** A server whose URL is known before it runs (a monitor may be told it first); launch() starts it. */
  static unstarted(t: TestContext, options: RedisOptions = {}): RedisServer {
    const server = new RedisServer(options);
    t.after(() => server.stop("SIGKILL"));
    return server;
  }

  /** Its unix socket, database 0. */
  get url(): string {
    return `unix://${this.socket}?db=0`;
  }

  /** Its TCP port, with `credentials` ("user:password") when given. */
  tcpUrl(credentials = ""): string {
    if (this.port === 0) throw new Error("this redis-server was started without tcp");
    return `redis://${credentials === "" ? "" : `${credentials}@`}127.0.0.1:${this.port}/0`;
  }

  get pid(): number {
    return this.child!.pid!;
  }

  /** Starts (again) in the same directory, on the same socket and port: the append-only file there is read back. */
  async launch(): Promise<void> {
    if (!this.options.tcp) return this.spawn(0);
    if (this.port !== 0) return this.spawn(this.port);
    for (let attempt = 1; ; attempt++) {
      const port = TCP_PORTS.first + Math.floor(Math.random() * TCP_PORTS.count);
      try {
        await this.spawn(port);
        this.port = port;
        return;
      } catch (err) {
        if (!/Address already in use/.test(String(err)) || attempt === TCP_PORTS.attempts) throw err;
      }
    }
  }

  private async spawn(port: number): Promise<void> {
    const args = ["--port", String(port), "--bind", "127.0.0.1", "--unixsocket", this.socket, "--unixsocketperm", "700"];
    args.push("--dir", this.dir, "--save", "", "--appendonly", "yes", ...(this.options.args ?? []));
    const child = spawn(REDIS_SERVER!, args, { stdio: ["ignore", "pipe", "pipe"] });
    killOnExit(child);
    this.child = child;
    this.log = "";
    child.stdout!.on("data", (d: Buffer) => (this.log += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (this.log += d.toString()));
    await waitUntil(() => /ready to accept connections/i.test(this.log) || child.exitCode !== null, () => `redis-server to start:\n${this.log}`);
    if (child.exitCode !== null) throw new Error(`redis-server exited (${child.exitCode}):\n${this.log}`);
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

  /** One redis-cli command over the socket; its output trimmed. */
  cli(...args: string[]): string {
    return execFileSync(REDIS_CLI!, ["-s", this.socket, ...args], { encoding: "utf8", timeout: 10_000 }).trim();
  }
}

/** Every key the monitors under test write starts with it. */
export const REDIS_PREFIX = "rmon-test:";

export interface RedisMonitorOptions extends StartOptions {
  /** Lines under store.redis (indented 4 spaces), e.g. "    timeout: 1\n". */
  redisKeys?: string;
  /** The URL instead of the server's unix socket. */
  url?: string;
}

/** The YAML of a monitor on `redis`'s store, its /metrics on, then `extra`. */
export function redisYaml(redis: RedisServer, extra = "", redisKeys = "", url = redis.url): string {
  return `http:\n  enabled: true\n  on_websocket_port: true\nstore:\n  kind: redis\n  redis:\n    url: "${url}"\n    key_prefix: "${REDIS_PREFIX}"\n${redisKeys}${extra}`;
}

function withRedis(redis: RedisServer, options: RedisMonitorOptions): StartOptions {
  return { ...options, extraYaml: redisYaml(redis, options.extraYaml ?? "", options.redisKeys ?? "", options.url) };
}

/** A monitor on the test's Redis, killed when the test ends. */
export function redisMonitor(t: TestContext, redis: RedisServer, options: RedisMonitorOptions = {}): Promise<MonitorProcess> {
  return monitor(t, withRedis(redis, options));
}

/** A relay (monitor + broker peer + subscribe/settled) on the test's Redis, closed when the test ends. */
export function redisRelay(t: TestContext, redis: RedisServer, options: RedisMonitorOptions = {}): Promise<Relay> {
  return relay(t, withRedis(redis, options));
}
