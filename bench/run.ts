// Benchmark of recodex-monitor against a floor relay (issue 4). See bench/README.md.
//
//   npm run bench                 full run (~5-8 min), writes bench/RESULTS.md
//   npm run bench -- --smoke      small shapes (< 60 s), exit 1 on any lost/reordered message
//   npm run bench -- --soak       1,000,000 messages over 100,000 channels, writes bench/SOAK.md
//
// Options: --rounds N (alternating floor/monitor rounds, default 2), --target floor|monitor|both,
// --shapes a,b,c (subset of the shape keys), --out FILE, --no-startup.
import { spawn, fork, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync, rmSync, readFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { availableParallelism, cpus, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { cpuMicros, memInfo, median, nowNs, sleep, systemBusyMicros, type LatencySummary } from "./lib.ts";

const ROOT = resolve(import.meta.dirname, "..");
const BENCH = join(ROOT, "bench");

// ---- command line ---------------------------------------------------------------------------------
const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
const option = (name: string, dflt: string) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
const SMOKE = flag("--smoke");
const SOAK = flag("--soak");
const ROUNDS = Number(option("--rounds", SMOKE ? "1" : "3"));
const TARGETS = option("--target", "both");
const SHAPES_WANTED = option("--shapes", "");
const OUT = option("--out", SMOKE ? "" : join(BENCH, SOAK ? "SOAK.md" : "RESULTS.md"));
const STARTUP = !flag("--no-startup");
/** Extra node options for the relay (floor and node src/main.ts), e.g. "--cpu-prof" (space-separated). */
const NODE_ARGS = option("--node-args", "").split(" ").filter((a) => a !== "");
const KEEPALIVE = Number(option("--keepalive", "30")); // the monitor's default ping interval (s)

// ---- shapes -------------------------------------------------------------------------------------
type Shape = {
  key: string;
  title: string;
  channels: number; // concurrent jobs per wave
  perChannel: number; // browser tabs per job
  idle: number; // idle subscribed connections held open during the run
  satWaves: number;
  pacedWaves: number;
  pacedChannels: number; // jobs per paced wave (same tabs per job)
  pacedRate: number; // cap of the broker messages per second in the paced waves
};
const SHAPES: Shape[] = SMOKE
  ? [
      { key: "a", title: "20 channels x 1 client", channels: 20, perChannel: 1, idle: 0, satWaves: 3, pacedWaves: 1, pacedChannels: 20, pacedRate: 2000 },
      { key: "b", title: "100 channels x 2 clients", channels: 100, perChannel: 2, idle: 0, satWaves: 2, pacedWaves: 1, pacedChannels: 50, pacedRate: 2000 },
      { key: "c", title: "1,000 idle + 20 channels x 1", channels: 20, perChannel: 1, idle: 1000, satWaves: 2, pacedWaves: 1, pacedChannels: 20, pacedRate: 2000 },
    ]
  : [
      { key: "a", title: "100 channels x 1 client", channels: 100, perChannel: 1, idle: 0, satWaves: 10, pacedWaves: 2, pacedChannels: 100, pacedRate: 5000 },
      { key: "b", title: "1,000 channels x 2 clients", channels: 1000, perChannel: 2, idle: 0, satWaves: 2, pacedWaves: 1, pacedChannels: 250, pacedRate: 5000 },
      { key: "c", title: "10,000 idle + 100 channels x 1", channels: 100, perChannel: 1, idle: 10000, satWaves: 8, pacedWaves: 2, pacedChannels: 100, pacedRate: 5000 },
    ];
/** Paced waves run at this fraction of the floor's saturated rate (at most shape.pacedRate). */
const PACED_FRACTION = 0.25;

// ---- servers --------------------------------------------------------------------------------------
type TargetName = "floor" | "monitor" | "binary";
const BINARY = join(ROOT, "dist", "recodex-monitor");
const MONITOR_SRC = join(ROOT, "src", "main.ts");

type Retention = Record<string, number>;
const BENCH_RETENTION: Retention = {
  finished_ttl: 300,
  idle_ttl: 3600,
  max_channels: 200000,
  max_messages_per_channel: 1000,
  max_bytes_per_channel: 1048576,
  max_total_bytes: 1073741824,
};
const SOAK_RETENTION: Retention = {
  finished_ttl: 2,
  idle_ttl: 5,
  max_channels: 20000,
  max_messages_per_channel: 200,
  max_bytes_per_channel: 65536,
  max_total_bytes: 67108864,
};

function configYaml(wsPort: number, zmqPort: number, level: string, retention: Retention, extra: string[] = []): string {
  const ret = Object.entries(retention)
    .map(([k, v]) => `${k}: ${v}`)
    .join(", ");
  return [
    `websocket_uri: ["127.0.0.1", ${wsPort}]`,
    `zeromq_uri: ["127.0.0.1", ${zmqPort}]`,
    `logger: {file: "-", level: ${level}}`,
    `retention: {${ret}}`,
    `limits: {max_buffered_bytes: 4194304, subscribe_timeout: 3600}`,
    `keepalive: {interval: ${KEEPALIVE}}`,
    `websocket: {permessage_deflate: false}`,
    ...extra,
    "",
  ].join("\n");
}

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

type Server = {
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

type ServerOptions = { level?: string; extraConfig?: string[]; nodeArgs?: string[] };

async function startServer(target: TargetName, retention: Retention, opts: ServerOptions = {}): Promise<Server> {
  const level = opts.level ?? "warning";
  const nodeArgs = opts.nodeArgs ?? NODE_ARGS;
  const wsPort = await freePort();
  let zmqPort = await freePort();
  while (zmqPort === wsPort) zmqPort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "recodex-bench-"));
  const cfg = join(dir, "config.yml");
  writeFileSync(cfg, configYaml(wsPort, zmqPort, level, retention, opts.extraConfig));
  const [cmd, args] =
    target === "floor"
      ? [process.execPath, [...nodeArgs, join(BENCH, "floor.ts"), String(wsPort), String(zmqPort)]]
      : target === "binary"
        ? [BINARY, ["-c", cfg]]
        : [process.execPath, [...nodeArgs, MONITOR_SRC, "-c", cfg]];
  const t0 = nowNs();
  const proc = spawn(cmd, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
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

const SERVER_LOG = option("--server-log", "");

async function stopServer(s: Server): Promise<number | null> {
  s.proc.kill("SIGTERM");
  const timer = setTimeout(() => s.proc.kill("SIGKILL"), 10000);
  const code = await s.exited;
  clearTimeout(timer);
  if (SERVER_LOG) writeFileSync(SERVER_LOG, `--- ${s.target} pid ${s.pid} exit ${code}\n${s.log.join("\n")}\n`, { flag: "a" });
  rmSync(s.dir, { recursive: true, force: true });
  return code;
}

// ---- load generator children --------------------------------------------------------------------------
type Msg = { type: string; [k: string]: unknown };

class Child {
  proc: ChildProcess;
  inbox: Msg[] = [];
  waiters: { type: string; resolve: (m: Msg) => void }[] = [];
  onMessage: ((m: Msg) => void) | null = null;
  constructor(script: string) {
    this.proc = fork(join(BENCH, script), [], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    this.proc.on("message", (raw) => {
      const m = raw as Msg;
      if (m.type === "error") {
        console.error(`${script}: ${String(m.error)}`);
        process.exitCode = 2;
      }
      if (this.onMessage) this.onMessage(m);
      const i = this.waiters.findIndex((w) => w.type === m.type);
      if (i >= 0) this.waiters.splice(i, 1)[0].resolve(m);
      else this.inbox.push(m);
    });
  }
  get pid(): number {
    return this.proc.pid!;
  }
  send(m: Msg): void {
    this.proc.send(m);
  }
  /** Next message of `type` (queued or future); rejects after `timeoutMs`. */
  wait(type: string, timeoutMs = 120000): Promise<Msg> {
    const i = this.inbox.findIndex((m) => m.type === type);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]);
    return new Promise((res, rej) => {
      const w = {
        type,
        resolve: (m: Msg) => {
          clearTimeout(t);
          res(m);
        },
      };
      const t = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        rej(new Error(`timeout waiting for ${type}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }
  async request(m: Msg, reply: string, timeoutMs?: number): Promise<Msg> {
    const p = this.wait(reply, timeoutMs);
    this.send(m);
    return p;
  }
  async exit(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const done = new Promise((r) => this.proc.once("exit", r));
    this.send({ type: "exit" });
    await done;
  }
}

// ---- one measured run -----------------------------------------------------------------------------
type Phase = {
  delivered: number;
  expected: number;
  windowNs: number;
  serverCpuUs: number;
  genCpuUs: number;
  otherCpuUs: number; // CPU of every other process on the machine during the windows (noise)
  latency: LatencySummary;
};
type Faults = { lost: number; reordered: number; malformed: number; badClose: number };
type RunResult = {
  shape: string;
  target: TargetName;
  round: number;
  pacedRate: number;
  readyMs: number;
  sat: Phase;
  paced: Phase;
  faults: Faults;
  idleRssPerConnB: number;
  idleFaults: number;
  hwmKB: number;
  exitCode: number | null;
  subscribeMs: number;
};

const newPhase = (): Phase => ({
  delivered: 0,
  expected: 0,
  windowNs: 0,
  serverCpuUs: 0,
  genCpuUs: 0,
  otherCpuUs: 0,
  latency: { n: 0, p50: NaN, p99: NaN, max: NaN },
});

let tagCounter = (Date.now() / 1000) >>> 0;

async function measureRun(shape: Shape, target: TargetName, round: number, pacing: { rate: number }): Promise<RunResult> {
  const server = await startServer(target, BENCH_RETENTION);
  const clients = new Child("clients.ts");
  const sender = new Child("sender.ts");
  const tag = ++tagCounter;
  const faults: Faults = { lost: 0, reordered: 0, malformed: 0, badClose: 0 };
  let subscribeMs = 0;
  try {
    await clients.request({ type: "init", wsPort: server.wsPort }, "ready");
    await sender.request({ type: "init", zmqPort: server.zmqPort, peers: 2 }, "ready");
    const genCpu = () => cpuMicros(clients.pid) + cpuMicros(sender.pid);

    let waveNo = 0;
    const wave = async (count: number, rate: number, phase: Phase | null) => {
      const w = waveNo++;
      const sub = await clients.request(
        { type: "subscribe", tag, wave: w, count, perChannel: shape.perChannel },
        "subscribed",
      );
      subscribeMs += Number(sub.ms);
      if (sub.ok !== sub.n) throw new Error(`only ${sub.ok}/${sub.n} subscriptions opened`);
      // let the relay read every subscription before the first message (the floor keeps no history)
      await sleep(100 + Number(sub.n) * 0.05);
      const s0 = cpuMicros(server.pid);
      const g0 = genCpu();
      const b0 = systemBusyMicros();
      const done = clients.wait("waveDone", 600000);
      const sent = await sender.request({ type: "wave", tag, wave: w, count, rate, seed: tag * 31 + w }, "sent", 600000);
      const timeout = setTimeout(() => clients.send({ type: "abortWave" }), 15000);
      const res = await done;
      clearTimeout(timeout);
      const s1 = cpuMicros(server.pid);
      const g1 = genCpu();
      const b1 = systemBusyMicros();
      faults.lost += Number(res.lost);
      faults.reordered += Number(res.reordered);
      faults.malformed += Number(res.malformed);
      faults.badClose += Number(res.badClose);
      if (phase) {
        phase.delivered += Number(res.delivered);
        phase.expected += Number(res.expected);
        phase.windowNs += Math.max(Number(res.lastRecv), Number(sent.t1)) - Number(sent.t0);
        phase.serverCpuUs += s1 - s0;
        phase.genCpuUs += g1 - g0;
        phase.otherCpuUs += Math.max(0, b1 - b0 - (s1 - s0) - (g1 - g0));
      }
    };

    // warm-up wave: JIT, buffers, first-connection costs; not measured
    await wave(Math.min(shape.channels, 200), 0, null);
    await clients.request({ type: "stats" }, "stats");

    let idleRssPerConnB = NaN;
    let idleFaults = 0;
    if (shape.idle > 0) {
      await sleep(500);
      const before = memInfo(server.pid).rssKB;
      const r = await clients.request({ type: "idle", tag, count: shape.idle }, "idleOpen", 300000);
      if (r.ok !== r.n) throw new Error(`only ${r.ok}/${r.n} idle connections opened`);
      await sleep(1500);
      const after = memInfo(server.pid).rssKB;
      idleRssPerConnB = ((after - before) * 1024) / shape.idle;
    }

    const sat = newPhase();
    for (let i = 0; i < shape.satWaves; i++) await wave(shape.channels, 0, sat);
    sat.latency = (await clients.request({ type: "stats" }, "stats")).latency as LatencySummary;

    const paced = newPhase();
    if (pacing.rate === 0) {
      const ingress = sat.delivered / shape.perChannel / (sat.windowNs / 1e9);
      pacing.rate = Math.max(200, Math.min(shape.pacedRate, Math.round((ingress * PACED_FRACTION) / 100) * 100));
    }
    for (let i = 0; i < shape.pacedWaves; i++) await wave(shape.pacedChannels, pacing.rate, paced);
    paced.latency = (await clients.request({ type: "stats" }, "stats")).latency as LatencySummary;

    if (shape.idle > 0) {
      const r = await clients.request({ type: "idleClose" }, "idleClosed");
      idleFaults = Number(r.unexpected) + Number(r.closedByServer);
    }
    const hwmKB = memInfo(server.pid).hwmKB;
    await sender.exit();
    await clients.exit();
    const exitCode = await stopServer(server);
    return {
      shape: shape.key,
      target,
      round,
      pacedRate: pacing.rate,
      readyMs: server.readyMs,
      sat,
      paced,
      faults,
      idleRssPerConnB,
      idleFaults,
      hwmKB,
      exitCode,
      subscribeMs,
    };
  } catch (e) {
    console.error(`${target} ${shape.key}: ${String(e)}\n--- ${target} log tail ---\n${server.log.slice(-15).join("\n")}`);
    sender.proc.kill();
    clients.proc.kill();
    await stopServer(server);
    throw e;
  }
}

// ---- startup time -------------------------------------------------------------------------------------
type Startup = { target: TargetName; readyMs: number[]; readyLineMs: number[]; exitCodes: (number | null)[] };

async function measureStartup(target: TargetName, times: number): Promise<Startup> {
  const out: Startup = { target, readyMs: [], readyLineMs: [], exitCodes: [] };
  for (let i = 0; i < times; i++) {
    const s = await startServer(target, BENCH_RETENTION, { level: "info" });
    await sleep(50); // the "ready" line may be flushed right after the ports are bound
    out.readyMs.push(s.readyMs);
    out.readyLineMs.push(s.readyLineMs);
    out.exitCodes.push(await stopServer(s));
  }
  return out;
}

/** Reference: spawn to exit of a bare `node -e 0` (the machine's process start-up cost). */
async function bareNodeMs(times: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < times; i++) {
    const t0 = nowNs();
    await new Promise((res) => spawn(process.execPath, ["-e", "0"], { stdio: "ignore" }).once("exit", res));
    out.push((nowNs() - t0) / 1e6);
  }
  return out;
}

// ---- soak ---------------------------------------------------------------------------------------------
async function scrapeMetrics(port: number): Promise<Record<string, number>> {
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

async function soak(target: TargetName): Promise<string> {
  const MESSAGES = Number(option("--messages", "1000000"));
  const CHANNELS = Number(option("--channels", "100000"));
  // 10,000 msgs/s: 1,000,000 messages take 100 s, long enough for V8 to reach its steady heap
  // size (at 25,000/s the 40 s run ends while the old generation is still growing lazily).
  const RATE = Number(option("--rate", "10000"));
  const SUBSCRIBERS = Number(option("--subscribers", "300"));
  const isMonitor = target !== "floor";
  // --trace-gc: the JS heap left after each full GC shows live memory, which RSS (V8 keeps
  // freed pages for a while) does not; /metrics gives the monitor's own channel accounting
  const server = await startServer(target, SOAK_RETENTION, {
    extraConfig: isMonitor ? ["http: {enabled: true, on_websocket_port: true}"] : [],
    nodeArgs: target === "binary" ? [] : ["--trace-gc", ...NODE_ARGS],
  });
  let liveHeapMB = NaN;
  server.onLine = (line) => {
    const m = /Mark-Compact[^>]*-> ([\d.]+) \(/.exec(line);
    if (m) liveHeapMB = Number(m[1]);
  };
  const clients = new Child("clients.ts");
  const sender = new Child("sender.ts");
  const tag = ++tagCounter;
  await clients.request({ type: "init", wsPort: server.wsPort }, "ready");
  await sender.request({ type: "init", zmqPort: server.zmqPort, peers: 1 }, "ready");
  let sent = 0;
  let started = 0;
  sender.onMessage = (m) => {
    if (m.type === "soakProgress") {
      sent = Number(m.sent);
      started = Number(m.started);
      clients.send({ type: "soakProgress", started });
    }
  };
  type Sample = { t: number; sent: number; started: number; rssKB: number; cpuS: number; heapMB: number; channels: number; storedMB: number; conns: number };
  const samples: Sample[] = [];
  const t0 = nowNs();
  const sample = async () => {
    const metrics = isMonitor ? await scrapeMetrics(server.wsPort) : {};
    samples.push({
      t: (nowNs() - t0) / 1e9,
      sent,
      started,
      rssKB: memInfo(server.pid).rssKB,
      cpuS: cpuMicros(server.pid) / 1e6,
      heapMB: liveHeapMB,
      channels: metrics.recodex_monitor_channels ?? NaN,
      storedMB: (metrics.recodex_monitor_stored_bytes ?? NaN) / 1048576,
      conns: metrics.recodex_monitor_connections ?? NaN,
    });
  };
  await sample();
  const timer = setInterval(() => void sample(), 1000);
  clients.send({ type: "soakStart", tag, concurrent: SUBSCRIBERS, seed: tag });
  const done = await sender.request(
    { type: "soak", tag, messages: MESSAGES, channels: CHANNELS, active: 2000, finishedShare: 0.1, rate: RATE, seed: tag },
    "soakDone",
    1800000,
  );
  sent = Number(done.sent);
  const sendEnd = (nowNs() - t0) / 1e9;
  const sendS = (Number(done.t1) - Number(done.t0)) / 1e9;
  const subs = await clients.request({ type: "soakStop" }, "soakStopped", 60000);
  // let retention reclaim the idle channels (idle_ttl) and watch memory settle
  await sleep(Number(SOAK_RETENTION.idle_ttl) * 3000);
  clearInterval(timer);
  await sample();
  // the monitor still relays correctly after the soak
  await clients.request({ type: "subscribe", tag: tag + 1, wave: 0, count: 10, perChannel: 1 }, "subscribed");
  await sleep(200);
  const doneCheck = clients.wait("waveDone", 30000);
  await sender.request({ type: "wave", tag: tag + 1, wave: 0, count: 10, rate: 0, seed: 1 }, "sent");
  const checked = await doneCheck;
  const hwmKB = memInfo(server.pid).hwmKB;
  await sender.exit();
  await clients.exit();
  const exitCode = await stopServer(server);

  // verdict: memory must stop growing while messages keep flowing
  const during = samples.filter((s) => s.t <= sendEnd);
  const between = (lo: number, hi: number, f: (s: Sample) => number) =>
    Math.max(...during.filter((s) => s.sent > lo * sent && s.sent <= hi * sent).map(f).filter(Number.isFinite));
  const rss1 = between(0.25, 0.5, (s) => s.rssKB);
  const rss2 = between(0.5, 1, (s) => s.rssKB);
  const heap1 = between(0.25, 0.5, (s) => s.heapMB);
  const heap2 = between(0.5, 1, (s) => s.heapMB);
  const maxChannels = Math.max(...samples.map((s) => s.channels).filter(Number.isFinite));
  const heapLeveled = Number.isFinite(heap1) && heap2 <= heap1 * 1.2 + 8;
  const rssLeveled = rss2 <= rss1 * 1.2 + 16 * 1024;
  const codes = subs.closeCodes as Record<string, number>;
  const faults =
    Number(subs.reordered) + Number(subs.malformed) + (codes["1006"] ?? 0) + Number(subs.failed) +
    Number(checked.lost) + Number(checked.reordered) + Number(checked.malformed) + Number(checked.badClose);
  const mb = (kb: number) => (kb / 1024).toFixed(1);
  const last = samples[samples.length - 1];
  const L: string[] = [];
  L.push(`# recodex-monitor soak (${target === "floor" ? "floor relay" : target === "binary" ? "dist/recodex-monitor" : "node src/main.ts"})`, "");
  L.push(`Generated by \`npm run bench -- --soak\` on ${new Date().toISOString()}; ${machine()}.`, "");
  L.push(
    `Load: ${sent.toLocaleString("en")} broker messages in ${sendS.toFixed(0)} s (asked ${RATE.toLocaleString("en")}/s, got ${f0(sent / sendS)}/s) over ${started.toLocaleString("en")} channels ` +
      `(2,000 jobs running at once; 10 % run to FINISHED, the others stop midway, 30 % of those with a broker FAILED/ABORTED), ` +
      `${SUBSCRIBERS} churning subscribers (each watches a recent or upcoming channel for 0.2-3.2 s, then closes or is closed; ${Number(subs.subscriptions).toLocaleString("en")} subscriptions in all).`,
    "",
  );
  L.push(`Monitor retention for the soak: \`${JSON.stringify(SOAK_RETENTION)}\`; \`http.enabled\` for /metrics; node \`--trace-gc${NODE_ARGS.map((a) => " " + a).join("")}\` (the JS heap left after each full GC).`, "");
  L.push("| | |", "|---|---|");
  L.push(`| channels kept (max seen / retention.max_channels) | ${f0(maxChannels)} / ${f0(SOAK_RETENTION.max_channels)} |`);
  L.push(`| JS heap after full GC: max in 25-50 % / 50-100 % of the messages | ${f1(heap1)} / ${f1(heap2)} MB |`);
  L.push(`| RSS: max in 25-50 % / 50-100 % of the messages | ${mb(rss1)} / ${mb(rss2)} MB |`);
  L.push(`| RSS, heap after GC, channels kept ${Number(SOAK_RETENTION.idle_ttl) * 3} s after the last message | ${mb(last.rssKB)} MB, ${f1(last.heapMB)} MB, ${f0(last.channels)} |`);
  L.push(`| peak RSS (VmHWM) | ${mb(hwmKB)} MB |`);
  L.push(`| live memory levels off (heap after GC in the 2nd half <= 1.2 x 1st + 8 MB) | **${heapLeveled ? "yes" : "NO"}** |`);
  L.push(`| RSS levels off (2nd-half max <= 1.2 x 25-50 % max + 16 MB) | **${rssLeveled ? "yes" : "NO"}** |`);
  L.push(`| frames delivered to the churning subscribers | ${Number(subs.delivered).toLocaleString("en")} |`);
  L.push(`| close codes seen by the subscribers | ${Object.entries(codes).map(([c, n]) => `${c}: ${n}`).join(", ")} |`);
  L.push(`| reordered / malformed frames, failed connects | ${subs.reordered} / ${subs.malformed} / ${subs.failed} |`);
  L.push(`| post-soak check (10 full jobs): lost / reordered / malformed / unclean closes | ${checked.lost} / ${checked.reordered} / ${checked.malformed} / ${checked.badClose} |`);
  L.push(`| monitor CPU for the whole soak | ${(last.cpuS - samples[0].cpuS).toFixed(1)} s |`);
  L.push(`| exit status after SIGTERM | ${exitCode} |`, "");
  L.push("Over time (one sample per second; heap = JS heap after the latest full GC):", "");
  L.push("| t (s) | messages sent | channels started | channels kept | stored (MB) | connections | heap (MB) | RSS (MB) | CPU (s) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const s of samples) {
    L.push(`| ${s.t.toFixed(1)} | ${s.sent.toLocaleString("en")} | ${s.started.toLocaleString("en")} | ${f0(s.channels)} | ${f1(s.storedMB)} | ${f0(s.conns)} | ${f1(s.heapMB)} | ${mb(s.rssKB)} | ${(s.cpuS - samples[0].cpuS).toFixed(1)} |`);
  }
  L.push("");
  if (!heapLeveled || faults > 0) process.exitCode = 1;
  return L.join("\n");
}

// ---- report ---------------------------------------------------------------------------------------
function machine(): string {
  const model = cpus()[0]?.model ?? "unknown CPU";
  return `${availableParallelism()} cores (${model.trim()}), Node ${process.version}, ${process.platform}`;
}

const f0 = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString("en") : "-");
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : "-");
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "-");

type Agg = {
  rate: number; // delivered / s, saturated
  cpuPerMsg: number; // µs of server CPU per delivered message, saturated
  cpuPerMsgPaced: number;
  genPerMsg: number; // µs of load-generator CPU per delivered message, saturated
  genCores: number; // load generator's CPU use in cores, saturated
  otherCores: number; // every other process, saturated windows
  serverCores: number;
  satP50: number;
  satP99: number;
  satMax: number;
  pacedP50: number;
  pacedP99: number;
  pacedMax: number;
  idleB: number;
  hwmKB: number;
  readyMs: number;
  faults: number;
  delivered: number;
};

function aggregate(runs: RunResult[]): Agg {
  const m = (f: (r: RunResult) => number) => median(runs.map(f));
  return {
    rate: m((r) => r.sat.delivered / (r.sat.windowNs / 1e9)),
    cpuPerMsg: m((r) => r.sat.serverCpuUs / r.sat.delivered),
    cpuPerMsgPaced: m((r) => r.paced.serverCpuUs / r.paced.delivered),
    genPerMsg: m((r) => r.sat.genCpuUs / r.sat.delivered),
    genCores: m((r) => r.sat.genCpuUs / 1e6 / (r.sat.windowNs / 1e9)),
    otherCores: m((r) => r.sat.otherCpuUs / 1e6 / (r.sat.windowNs / 1e9)),
    serverCores: m((r) => r.sat.serverCpuUs / 1e6 / (r.sat.windowNs / 1e9)),
    satP50: m((r) => r.sat.latency.p50),
    satP99: m((r) => r.sat.latency.p99),
    satMax: Math.max(...runs.map((r) => r.sat.latency.max)),
    pacedP50: m((r) => r.paced.latency.p50),
    pacedP99: m((r) => r.paced.latency.p99),
    pacedMax: Math.max(...runs.map((r) => r.paced.latency.max)),
    idleB: m((r) => r.idleRssPerConnB),
    hwmKB: Math.max(...runs.map((r) => r.hwmKB)),
    readyMs: m((r) => r.readyMs),
    faults: runs.reduce((a, r) => a + r.faults.lost + r.faults.reordered + r.faults.malformed + r.faults.badClose + r.idleFaults + (r.exitCode === 0 ? 0 : 1), 0),
    delivered: runs.reduce((a, r) => a + r.sat.delivered + r.paced.delivered, 0),
  };
}

function report(results: RunResult[], startups: Startup[], bare: number[], wallS: number): string {
  const L: string[] = [];
  const mode = SMOKE ? "smoke" : "full";
  L.push(`# recodex-monitor benchmark${SMOKE ? " (smoke)" : ""}`, "");
  L.push(`Generated by \`npm run bench${SMOKE ? " -- --smoke" : ""}\` on ${new Date().toISOString()} (${mode} run, ${ROUNDS} alternating round(s), ${wallS.toFixed(0)} s wall time).`, "");
  L.push(`Machine: ${machine()}. Everything runs on this machine over loopback: the relay under test, the browser clients (one process, \`ws\`, no permessage-deflate) and the broker (one process, 2 ZeroMQ ROUTER peers, \`mandatory\`).`, "");
  L.push(
    "Each shape runs in waves: the clients open and subscribe one connection per (job, tab), then the broker side sends every job of the wave " +
      "(DOWNLOADED, STARTED, TASK x 10-59, ENDED, UPLOADED, FINISHED; jobs interleaved at random), the relay closes each tab with 1000 after FINISHED. " +
      "CPU and throughput count the message windows only (first send to last frame received, connection closes included, connection set-up excluded). " +
      "*Floor* = `bench/floor.ts`, the leanest relay (ROUTER -> JSON -> `ws`, writes batched per socket per event-loop turn, no history/logging/checks); " +
      "floor and monitor runs alternate with the same load; figures are medians over rounds. Latency is measured on TASK frames from the broker's send call to the browser's `message` event.",
    "",
  );
  const targets = [...new Set(results.map((r) => r.target))];
  const hasBoth = targets.includes("floor") && targets.includes("monitor");
  const verdicts: string[] = [];
  for (const shape of SHAPES) {
    const byTarget = new Map<TargetName, Agg>();
    for (const t of targets) {
      const runs = results.filter((r) => r.shape === shape.key && r.target === t);
      if (runs.length > 0) byTarget.set(t, aggregate(runs));
    }
    if (byTarget.size === 0) continue;
    L.push(`## Shape ${shape.key}: ${shape.title}`, "");
    const per = shape.channels * shape.perChannel;
    const rate = results.find((r) => r.shape === shape.key)!.pacedRate;
    L.push(
      `Per run: 1 warm-up wave, ${shape.satWaves} saturated wave(s) of ${shape.channels.toLocaleString("en")} jobs (${per.toLocaleString("en")} connections), ` +
        `${shape.pacedWaves} paced wave(s) of ${shape.pacedChannels.toLocaleString("en")} jobs at ${rate.toLocaleString("en")} broker msgs/s ` +
        `(${(rate * shape.perChannel).toLocaleString("en")} frames/s; ${PACED_FRACTION * 100} % of the floor's saturated rate in round 1, at most ${shape.pacedRate.toLocaleString("en")})` +
        (shape.idle ? `, ${shape.idle.toLocaleString("en")} idle subscribed connections held open meanwhile` : "") +
        ".",
      "",
    );
    const cols = [...byTarget.keys()];
    const header = ["metric", ...cols, ...(hasBoth ? ["monitor / floor"] : [])];
    L.push(`| ${header.join(" | ")} |`, `|${header.map((_, i) => (i === 0 ? "---" : "---:")).join("|")}|`);
    const row = (name: string, get: (a: Agg) => number, fmt: (x: number) => string, ratio = true) => {
      const vals = cols.map((c) => get(byTarget.get(c)!));
      const cells = vals.map(fmt);
      if (hasBoth) {
        const r = get(byTarget.get("monitor")!) / get(byTarget.get("floor")!);
        cells.push(ratio && Number.isFinite(r) ? `${r.toFixed(2)}x` : "");
      }
      L.push(`| ${name} | ${cells.join(" | ")} |`);
    };
    row("delivered frames/s (saturated)", (a) => a.rate, f0);
    row("server CPU µs per delivered frame (saturated)", (a) => a.cpuPerMsg, f1);
    row("server CPU µs per delivered frame (paced)", (a) => a.cpuPerMsgPaced, f1);
    row("server CPU use, saturated (cores)", (a) => a.serverCores, f2);
    row("latency p50 saturated (ms)", (a) => a.satP50, (x) => f2(x / 1000));
    row("latency p99 saturated (ms)", (a) => a.satP99, (x) => f2(x / 1000));
    row("latency max saturated (ms)", (a) => a.satMax, (x) => f2(x / 1000));
    row("latency p50 paced (ms)", (a) => a.pacedP50, (x) => f2(x / 1000));
    row("latency p99 paced (ms)", (a) => a.pacedP99, (x) => f2(x / 1000));
    row("latency max paced (ms)", (a) => a.pacedMax, (x) => f2(x / 1000));
    if (shape.idle) row(`RSS per idle subscribed connection (KB, ${shape.idle.toLocaleString("en")} conns)`, (a) => a.idleB / 1024, f1);
    row("peak RSS, VmHWM (MB)", (a) => a.hwmKB / 1024, f1);
    row("ready: spawn -> both ports accept (ms)", (a) => a.readyMs, f0);
    row("lost + reordered + malformed + unclean closes", (a) => a.faults, f0, false);
    row("frames delivered, all rounds", (a) => a.delivered, f0, false);
    row("load generator CPU µs per frame (saturated)", (a) => a.genPerMsg, f1, false);
    row("load generator CPU use, saturated (cores)", (a) => a.genCores, f2, false);
    row("other processes' CPU use, saturated (cores; noise)", (a) => a.otherCores, f2, false);
    L.push("");
    if (hasBoth) {
      const m = byTarget.get("monitor")!;
      const fl = byTarget.get("floor")!;
      const check = (what: string, ok: boolean, detail: string) => verdicts.push(`| ${shape.key} | ${what} | ${detail} | ${ok ? "met" : "**MISSED**"} |`);
      const cpuR = m.cpuPerMsg / fl.cpuPerMsg;
      check("CPU per frame <= 1.25x floor", cpuR <= 1.25, `${cpuR.toFixed(2)}x (${f1(m.cpuPerMsg)} vs ${f1(fl.cpuPerMsg)} µs)`);
      const thrR = m.rate / fl.rate;
      check("throughput >= 0.8x floor", thrR >= 0.8, `${thrR.toFixed(2)}x (${f0(m.rate)} vs ${f0(fl.rate)} frames/s)`);
      const latR = m.pacedP99 / fl.pacedP99;
      check("paced p99 <= 1.5x floor", latR <= 1.5, `${latR.toFixed(2)}x (${f2(m.pacedP99 / 1000)} vs ${f2(fl.pacedP99 / 1000)} ms)`);
      if (shape.idle >= 10000) check("<= 16 KB RSS per idle connection", m.idleB <= 16384, `${f1(m.idleB / 1024)} KB`);
      check("no lost/reordered/malformed frame, clean closes", m.faults === 0, `${m.faults}`);
    }
  }
  if (startups.length > 0) {
    L.push("## Startup", "");
    L.push("Spawn to both ports accepting TCP connections, and spawn to the log line containing `ready` (config `logger.level: info`), 5 launches each.", "");
    L.push("| server | ports bound, median (ms) | max (ms) | `ready` line, median (ms) | exit status after SIGTERM |", "|---|---:|---:|---:|---|");
    for (const s of startups) {
      L.push(`| ${s.target === "binary" ? "dist/recodex-monitor" : s.target === "monitor" ? "node src/main.ts" : "floor (node bench/floor.ts)"} | ${f0(median(s.readyMs))} | ${f0(Math.max(...s.readyMs))} | ${f0(median(s.readyLineMs))} | ${[...new Set(s.exitCodes)].join(", ")} |`);
      if (s.target === "binary") verdicts.push(`| - | dist/recodex-monitor ready < 150 ms | median ${f0(median(s.readyMs))} ms, max ${f0(Math.max(...s.readyMs))} ms | ${Math.max(...s.readyMs) < 150 ? "met" : "**MISSED**"} |`);
    }
    L.push("", `Reference: a bare \`node -e 0\` takes ${f0(median(bare))} ms (median) from spawn to exit on this machine at this time.`);
    if (!startups.some((s) => s.target === "binary")) L.push("", "dist/recodex-monitor not built (`npm run build`): binary startup not measured.");
    L.push("");
  }
  if (verdicts.length > 0) {
    const noise = median(results.map((r) => r.sat.otherCpuUs / 1e6 / (r.sat.windowNs / 1e9)));
    L.push("## Targets (issue 4)", "");
    if (noise > 0.25) {
      L.push(
        `**Caution:** other processes used a median ${f2(noise)} cores of this ${availableParallelism()}-core machine during the measurement windows; ` +
          "throughput and latency ratios are dominated by that noise (CPU per frame is the most robust figure). Re-run on a quiet machine before drawing conclusions.",
        "",
      );
    }
    L.push("| shape | target | measured | |", "|---|---|---|---|", ...verdicts, "");
  }
  L.push("## Runs", "", "| shape | server | round | frames | frames/s | CPU µs/frame | paced p99 (ms) | gen. CPU µs/frame | other load (cores) | faults | exit |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const r of results) {
    const fl = r.faults.lost + r.faults.reordered + r.faults.malformed + r.faults.badClose + r.idleFaults;
    L.push(
      `| ${r.shape} | ${r.target} | ${r.round} | ${f0(r.sat.delivered)} | ${f0(r.sat.delivered / (r.sat.windowNs / 1e9))} | ${f1(r.sat.serverCpuUs / r.sat.delivered)} | ${f2(r.paced.latency.p99 / 1000)} | ${f1(r.sat.genCpuUs / r.sat.delivered)} | ${f2(r.sat.otherCpuUs / 1e6 / (r.sat.windowNs / 1e9))} | ${fl} | ${r.exitCode} |`,
    );
  }
  L.push("");
  return L.join("\n");
}

// ---- main -------------------------------------------------------------------------------------------
async function main(): Promise<void> {
  const t0 = nowNs();
  const monitorPresent = existsSync(MONITOR_SRC);
  let targets: TargetName[] = TARGETS === "both" ? ["floor", "monitor"] : [TARGETS as TargetName];
  if (!monitorPresent && targets.includes("monitor")) {
    console.error("src/main.ts not found: benchmarking the floor relay only");
    targets = targets.filter((t) => t !== "monitor");
    if (targets.length === 0) targets = ["floor"];
  }
  const nofile = readFileSync("/proc/self/limits", "utf8").match(/Max open files\s+(\d+)/);
  if (nofile && Number(nofile[1]) < 11000 && !SMOKE) console.error(`warning: open files limit ${nofile[1]} is low for 10,000 connections`);

  if (SOAK) {
    const target: TargetName = targets.includes("monitor") ? "monitor" : targets[0];
    console.error(`soak against ${target} ...`);
    const text = await soak(target);
    if (OUT) writeFileSync(OUT, text);
    console.log(text);
    return;
  }

  const startups: Startup[] = [];
  let bare: number[] = [];
  if (STARTUP) {
    bare = await bareNodeMs(5);
    const startupTargets: TargetName[] = [...targets];
    if (existsSync(BINARY) && (TARGETS === "both" || TARGETS === "monitor")) startupTargets.push("binary");
    for (const t of startupTargets) {
      console.error(`startup: ${t}`);
      startups.push(await measureStartup(t, SMOKE ? 2 : 5));
    }
  }

  const results: RunResult[] = [];
  const shapes = SHAPES.filter((s) => SHAPES_WANTED === "" || SHAPES_WANTED.split(",").includes(s.key));
  for (const shape of shapes) {
    const pacing = { rate: 0 }; // set by the first run (the floor's) from its saturated rate
    for (let round = 1; round <= ROUNDS; round++) {
      const order = round % 2 === 1 ? targets : [...targets].reverse();
      for (const target of order) {
        const r = await measureRun(shape, target, round, pacing);
        const faults = r.faults.lost + r.faults.reordered + r.faults.malformed + r.faults.badClose + r.idleFaults;
        console.error(
          `${shape.key} ${target.padEnd(7)} round ${round}: ${f0(r.sat.delivered / (r.sat.windowNs / 1e9))} frames/s, ` +
            `${f1(r.sat.serverCpuUs / r.sat.delivered)} µs/frame, paced p99 ${f2(r.paced.latency.p99 / 1000)} ms, ` +
            `gen ${f1(r.sat.genCpuUs / r.sat.delivered)} µs/frame, other load ${f2(r.sat.otherCpuUs / 1e6 / (r.sat.windowNs / 1e9))} cores` +
            (shape.idle ? `, ${f1(r.idleRssPerConnB / 1024)} KB/idle conn` : "") +
            `, faults ${faults}, exit ${r.exitCode}`,
        );
        results.push(r);
      }
    }
  }
  const text = report(results, startups, bare, (nowNs() - t0) / 1e9);
  if (OUT) writeFileSync(OUT, text);
  console.log(text);
  const monitorFaults = results.reduce(
    (a, r) => a + r.faults.lost + r.faults.reordered + r.faults.malformed + r.faults.badClose + r.idleFaults,
    0,
  );
  if (monitorFaults > 0) {
    console.error(`FAIL: ${monitorFaults} lost/reordered/malformed frames or unclean closes`);
    process.exitCode = 1;
  }
}

await main();
