// The Redis shape (issue 9): the same job load as the other shapes, through
//   memory    one monitor, memory store, every tab on it (the reference);
//   redis-1   one monitor on the Redis store, every tab on it;
//   redis-3   one ingest monitor the broker talks to, the tabs spread over two more monitors.
// Every variant delivers the same frames (2 tabs per job). Reported: delivered frames/s,
// monitor CPU per delivered frame summed over the nodes (Redis's own CPU apart), paced p99
// latency (broker send -> browser receive), and any lost or reordered frame. Targets:
// redis-1 >= 0.5x memory's delivered/s, and its paced p99 at most 2 ms above memory's.
// run.ts calls it (`--shapes redis`); it uses run.ts's server and load-generator plumbing.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuMicros, median, sleep, systemBusyMicros, type LatencySummary } from "./lib.ts";

interface Server {
  pid: number;
  wsPort: number;
  zmqPort: number;
  log: string[];
}

interface LoadChild {
  pid: number;
  request(m: Record<string, unknown>, reply: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  wait(type: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  send(m: Record<string, unknown>): void;
  exit(): Promise<void>;
}

/** What run.ts lends: its relay start/stop and its load-generator children. */
export interface Plumbing {
  startServer(extraConfig: string[]): Promise<Server>;
  stopServer(s: Server): Promise<number | null>;
  child(script: string): LoadChild;
  freePort(): Promise<number>;
  nextTag(): number;
}

type Variant = "memory" | "redis-1" | "redis-3";
const VARIANTS: Variant[] = ["memory", "redis-1", "redis-3"];

interface Result {
  variant: Variant;
  round: number;
  delivered: number;
  windowNs: number;
  monitorCpuUs: number;
  redisCpuUs: number;
  otherCpuUs: number;
  p99: number;
  pacedP99: number;
  faults: number;
  exitCodes: (number | null)[];
}

const REDIS_SERVER = "/usr/bin/redis-server";

export async function redisShape(p: Plumbing, opts: { smoke: boolean; rounds: number }): Promise<{ text: string; faults: number }> {
  if (!existsSync(REDIS_SERVER)) return { text: "## Redis shape\n\nskipped: redis-server is not installed (apt-get install redis-server)\n", faults: 0 };
  const shape = opts.smoke
    ? { channels: 20, satWaves: 2, pacedWaves: 1, pacedRate: 1000 }
    : { channels: 100, satWaves: 8, pacedWaves: 2, pacedRate: 2000 };
  const results: Result[] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    const order = round % 2 === 1 ? VARIANTS : [...VARIANTS].reverse();
    for (const variant of order) {
      const r = await runVariant(p, variant, round, shape);
      console.error(
        `redis ${variant.padEnd(7)} round ${round}: ${Math.round(r.delivered / (r.windowNs / 1e9))} frames/s, ` +
          `${(r.monitorCpuUs / r.delivered).toFixed(1)} µs/frame (monitors) + ${(r.redisCpuUs / r.delivered).toFixed(1)} (redis), ` +
          `paced p99 ${(r.pacedP99 / 1000).toFixed(2)} ms, other load ${(r.otherCpuUs / 1e6 / (r.windowNs / 1e9)).toFixed(2)} cores, faults ${r.faults}`,
      );
      results.push(r);
    }
  }
  return { text: report(results, shape), faults: results.reduce((n, r) => n + r.faults, 0) };
}

async function runVariant(
  p: Plumbing,
  variant: Variant,
  round: number,
  shape: { channels: number; satWaves: number; pacedWaves: number; pacedRate: number },
): Promise<Result> {
  let redis: { proc: ChildProcess; dir: string } | null = null;
  const servers: Server[] = [];
  const children: LoadChild[] = [];
  try {
    let extra: string[] = ["http: {enabled: true}"];
    if (variant !== "memory") {
      const port = await p.freePort();
      const dir = mkdtempSync(join(tmpdir(), "recodex-bench-redis-"));
      const proc = spawn(REDIS_SERVER, ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "yes"], { stdio: "ignore" });
      redis = { proc, dir };
      extra = [...extra, `store: {kind: redis, redis: {url: "redis://127.0.0.1:${port}/0"}}`];
      await waitFor(() => ping(port), 10_000, "redis-server");
    }
    const nodes = variant === "redis-3" ? 3 : 1;
    for (let i = 0; i < nodes; i++) servers.push(await p.startServer(extra));
    const ingest = servers[0];
    const subscriberNodes = variant === "redis-3" ? servers.slice(1) : [ingest];
    const perChannel = 2 / subscriberNodes.length;
    for (const s of subscriberNodes) {
      const c = p.child("clients.ts");
      children.push(c);
      await c.request({ type: "init", wsPort: s.wsPort }, "ready");
    }
    const sender = p.child("sender.ts");
    await sender.request({ type: "init", zmqPort: ingest.zmqPort, peers: 2 }, "ready");
    const tag = p.nextTag();
    const monitorCpu = () => servers.reduce((n, s) => n + cpuMicros(s.pid), 0);
    const redisCpu = () => (redis ? cpuMicros(redis.proc.pid!) : 0);
    const loadCpu = () => [...children, sender].reduce((n, c) => n + cpuMicros(c.pid), 0);
    const result: Result = { variant, round, delivered: 0, windowNs: 0, monitorCpuUs: 0, redisCpuUs: 0, otherCpuUs: 0, p99: NaN, pacedP99: NaN, faults: 0, exitCodes: [] };
    let waveNo = 0;
    const wave = async (rate: number, measured: boolean) => {
      const w = waveNo++;
      for (const c of children) {
        const sub = await c.request({ type: "subscribe", tag, wave: w, count: shape.channels, perChannel }, "subscribed");
        if (sub.ok !== sub.n) throw new Error(`only ${String(sub.ok)}/${String(sub.n)} subscriptions opened`);
      }
      // Each subscriber node has answered every subscription (from Redis, for that store)
      // once it counts the wave's channels as waiting for their first message.
      for (const s of subscriberNodes) await waitFor(async () => (await metric(s.wsPort, "recodex_monitor_store_waiting_channels")) >= shape.channels, 30_000, "subscriptions");
      const m0 = monitorCpu();
      const r0 = redisCpu();
      const l0 = loadCpu();
      const b0 = systemBusyMicros();
      const done = children.map((c) => c.wait("waveDone", 600_000));
      const sent = await sender.request({ type: "wave", tag, wave: w, count: shape.channels, rate, seed: tag * 31 + w }, "sent", 600_000);
      const timer = setTimeout(() => children.forEach((c) => c.send({ type: "abortWave" })), 30_000);
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
    const latency = async () => Math.max(...(await Promise.all(children.map((c) => c.request({ type: "stats" }, "stats")))).map((s) => (s.latency as LatencySummary).p99));
    await wave(0, false);
    await latency();
    for (let i = 0; i < shape.satWaves; i++) await wave(0, true);
    result.p99 = await latency();
    // Paced waves count for latency only.
    for (let i = 0; i < shape.pacedWaves; i++) await wave(shape.pacedRate, false);
    result.pacedP99 = await latency();
    await sender.exit();
    for (const c of children) await c.exit();
    children.length = 0;
    for (const s of servers) result.exitCodes.push(await p.stopServer(s));
    servers.length = 0;
    return result;
  } finally {
    for (const s of servers) await p.stopServer(s);
    for (const c of children) await c.exit().catch(() => {});
    if (redis !== null) {
      redis.proc.kill("SIGTERM");
      await new Promise((r) => redis!.proc.once("exit", r));
      rmSync(redis.dir, { recursive: true, force: true });
    }
  }
}

function report(results: Result[], shape: { channels: number; satWaves: number; pacedRate: number }): string {
  const by = (v: Variant) => results.filter((r) => r.variant === v);
  const rate = (rs: Result[]) => median(rs.map((r) => r.delivered / (r.windowNs / 1e9)));
  const cpu = (rs: Result[]) => median(rs.map((r) => r.monitorCpuUs / r.delivered));
  const rcpu = (rs: Result[]) => median(rs.map((r) => r.redisCpuUs / r.delivered));
  const p99 = (rs: Result[]) => median(rs.map((r) => r.pacedP99 / 1000));
  const other = (rs: Result[]) => median(rs.map((r) => r.otherCpuUs / 1e6 / (r.windowNs / 1e9)));
  const mem = by("memory");
  const L = [
    "## Redis shape",
    "",
    `${shape.channels} jobs per wave, 2 tabs per job, ${shape.satWaves} saturated waves, paced waves at ${shape.pacedRate} broker messages/s; ` +
      "memory: one node; redis-1: one node on the Redis store; redis-3: the broker to one node, the tabs on two others (medians over the rounds).",
    "",
    "| variant | delivered/s | vs memory | monitor CPU per delivery (all nodes) | Redis CPU per delivery | paced p99 | vs memory | other processes' load | lost or reordered |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  for (const v of VARIANTS) {
    const rs = by(v);
    L.push(
      `| ${v} | ${Math.round(rate(rs)).toLocaleString("en")} | ${(rate(rs) / rate(mem)).toFixed(2)}x | ${cpu(rs).toFixed(1)} µs | ${rcpu(rs).toFixed(1)} µs | ` +
        `${p99(rs).toFixed(2)} ms | ${v === "memory" ? "" : `${p99(rs) - p99(mem) >= 0 ? "+" : ""}${(p99(rs) - p99(mem)).toFixed(2)} ms`} | ${other(rs).toFixed(2)} cores | ${rs.reduce((n, r) => n + r.faults, 0)} |`,
    );
  }
  const one = by("redis-1");
  const okRate = rate(one) >= 0.5 * rate(mem);
  const okP99 = p99(one) <= p99(mem) + 2;
  L.push("", `Targets: redis-1 delivered/s >= 0.5x memory: ${okRate ? "met" : "NOT met"} (${(rate(one) / rate(mem)).toFixed(2)}x); ` +
    `redis-1 paced p99 at most 2 ms above memory: ${okP99 ? "met" : "NOT met"} (${(p99(one) - p99(mem)).toFixed(2)} ms).`, "");
  return L.join("\n");
}

async function metric(port: number, name: string): Promise<number> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) });
    const m = new RegExp(`^${name} ([\\d.e+-]+)$`, "m").exec(await res.text());
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

async function ping(port: number): Promise<boolean> {
  const { connect } = await import("node:net");
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1", () => s.write("PING\r\n"));
    s.once("data", (d) => {
      s.destroy();
      resolve(d.toString().startsWith("+PONG"));
    });
    s.once("error", () => resolve(false));
  });
}

async function waitFor(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
