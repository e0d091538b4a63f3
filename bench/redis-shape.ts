// The Redis shape (issue 9): one measured run of a variant (bench/shapes.ts: REDIS_VARIANTS)
// with the same job load as the other shapes, 2 tabs per job:
//   memory    one monitor, memory store, every tab on it (the reference);
//   redis-1   one monitor on the Redis store, every tab on it;
//   redis-3   one ingest monitor the broker talks to, the tabs spread over two more monitors.
// Each Redis variant gets its own redis-server (append-only file on, as the README advises)
// on a unix socket in a temporary directory. Measured: delivered frames/s, monitor CPU per
// delivered frame summed over the nodes, Redis's own CPU apart, paced p99 latency (broker
// send -> browser receive), and any lost or reordered frame. report.ts writes its section.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Child, nextTag } from "./generators.ts";
import { scrapeMetrics, startServer, stopServer, type RelaySettings, type Server, type TargetName } from "./relay.ts";
import { cpuMicros, sleep, systemBusyMicros, type LatencySummary } from "./sampling.ts";
import { BENCH_RETENTION, type RedisShape, type RedisVariant } from "./shapes.ts";

const REDIS_SERVER = "/usr/bin/redis-server";

/** Why the Redis shape cannot run here, or null when it can. */
export function redisShapeMissing(): string | null {
  return existsSync(REDIS_SERVER) ? null : "redis-server is not installed (apt-get install redis-server)";
}

export type RedisRunResult = {
  variant: RedisVariant;
  round: number;
  delivered: number;
  windowNs: number;
  monitorCpuUs: number;
  redisCpuUs: number;
  otherCpuUs: number;
  pacedP99: number;
  faults: number;
  exitCodes: (number | null)[];
};

type Redis = { proc: ChildProcess; dir: string; socket: string };

async function startRedis(): Promise<Redis> {
  const dir = mkdtempSync(join(tmpdir(), "recodex-bench-redis-"));
  const socket = join(dir, "redis.sock");
  const proc = spawn(REDIS_SERVER, ["--port", "0", "--unixsocket", socket, "--unixsocketperm", "700", "--dir", dir, "--save", "", "--appendonly", "yes"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const ready = new Promise<void>((resolve, reject) => {
    const onData = (d: Buffer) => {
      log += d.toString();
      if (/ready to accept connections/i.test(log)) resolve();
    };
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", onData);
    proc.once("exit", (code) => reject(new Error(`redis-server exited (${code}):\n${log}`)));
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
  try {
    await ready;
  } finally {
    clearTimeout(timer);
  }
  return { proc, dir, socket };
}

async function stopRedis(r: Redis): Promise<void> {
  if (r.proc.exitCode === null && r.proc.signalCode === null) {
    const exited = new Promise((res) => r.proc.once("exit", res));
    r.proc.kill("SIGTERM");
    await exited;
  }
  rmSync(r.dir, { recursive: true, force: true });
}

/** One run of `variant`: a warm-up wave, the saturated waves, the paced waves. */
export async function measureRedisRun(shape: RedisShape, variant: RedisVariant, round: number, settings: RelaySettings, target: TargetName = "monitor"): Promise<RedisRunResult> {
  let redis: Redis | null = null;
  const servers: Server[] = [];
  const children: Child[] = []; // the clients, then the sender
  try {
    const extra = ["http: {enabled: true, on_websocket_port: true}"];
    let store: string[] = [];
    if (variant !== "memory") {
      redis = await startRedis();
      store = ["kind: redis", `redis: {url: "unix://${redis.socket}?db=0"}`];
    }
    const nodes = variant === "redis-3" ? 3 : 1;
    for (let i = 0; i < nodes; i++) servers.push(await startServer(target, BENCH_RETENTION, settings, { extraConfig: extra, store }));
    const ingest = servers[0];
    const subscriberNodes = variant === "redis-3" ? servers.slice(1) : [ingest];
    const perChannel = 2 / subscriberNodes.length;
    for (const s of subscriberNodes) {
      const c = new Child("clients.ts");
      children.push(c);
      await c.request({ type: "init", wsPort: s.wsPort }, "ready");
    }
    const clients = [...children];
    const sender = new Child("sender.ts");
    children.push(sender);
    await sender.request({ type: "init", zmqPort: ingest.zmqPort, peers: 2 }, "ready");
    const tag = nextTag();
    const monitorCpu = () => servers.reduce((n, s) => n + cpuMicros(s.pid), 0);
    const redisCpu = () => (redis !== null ? cpuMicros(redis.proc.pid!) : 0);
    const loadCpu = () => children.reduce((n, c) => n + cpuMicros(c.pid), 0);
    const result: RedisRunResult = { variant, round, delivered: 0, windowNs: 0, monitorCpuUs: 0, redisCpuUs: 0, otherCpuUs: 0, pacedP99: NaN, faults: 0, exitCodes: [] };
    let waveNo = 0;
    const wave = async (rate: number, measured: boolean) => {
      const w = waveNo++;
      for (const c of clients) {
        const sub = await c.request({ type: "subscribe", tag, wave: w, count: shape.channels, perChannel }, "subscribed");
        if (sub.ok !== sub.n) throw new Error(`only ${String(sub.ok)}/${String(sub.n)} subscriptions opened`);
      }
      // Each subscriber node has answered every subscription (from Redis, for that store)
      // once it counts the wave's channels as waiting for their first message.
      for (const s of subscriberNodes) {
        const deadline = performance.now() + 30_000;
        while (!(((await scrapeMetrics(s.wsPort)).recodex_monitor_store_waiting_channels ?? NaN) >= shape.channels)) {
          if (performance.now() > deadline) throw new Error(`${variant}: the subscriptions of wave ${w} not taken after 30 s`);
          await sleep(10);
        }
      }
      const m0 = monitorCpu();
      const r0 = redisCpu();
      const l0 = loadCpu();
      const b0 = systemBusyMicros();
      const done = clients.map((c) => c.wait("waveDone", 600_000));
      const sent = await sender.request({ type: "wave", tag, wave: w, count: shape.channels, rate, seed: tag * 31 + w }, "sent", 600_000);
      const timer = setTimeout(() => clients.forEach((c) => c.send({ type: "abortWave" })), 30_000);
      const res = await Promise.all(done);
      clearTimeout(timer);
      const m1 = monitorCpu();
      const r1 = redisCpu();
      const l1 = loadCpu();
      const b1 = systemBusyMicros();
      for (const r of res) result.faults += Number(r.lost) + Number(r.reordered) + Number(r.malformed) + Number(r.badClose);
      if (!measured) return;
      result.delivered += res.reduce((n, r) => n + Number(r.delivered), 0);
      result.windowNs += Math.max(...res.map((r) => Number(r.lastRecv)), Number(sent.t1)) - Number(sent.t0);
      result.monitorCpuUs += m1 - m0;
      result.redisCpuUs += r1 - r0;
      result.otherCpuUs += Math.max(0, b1 - b0 - (m1 - m0) - (r1 - r0) - (l1 - l0));
    };
    const p99 = async () => Math.max(...(await Promise.all(clients.map((c) => c.request({ type: "stats" }, "stats")))).map((s) => (s.latency as LatencySummary).p99));
    await wave(0, false);
    await p99(); // resets the clients' latency samples
    for (let i = 0; i < shape.satWaves; i++) await wave(0, true);
    await p99();
    // Paced waves count for latency only.
    for (let i = 0; i < shape.pacedWaves; i++) await wave(shape.pacedRate, false);
    result.pacedP99 = await p99();
    for (const c of children) await c.exit();
    children.length = 0;
    for (const s of servers) result.exitCodes.push(await stopServer(s, settings));
    servers.length = 0;
    return result;
  } finally {
    for (const s of servers) await stopServer(s, settings);
    for (const c of children) await c.exit().catch(() => {});
    if (redis !== null) await stopRedis(redis);
  }
}
