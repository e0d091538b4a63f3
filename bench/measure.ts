// Measuring one run of a shape: waves of jobs with the relay's and the load generator's CPU
// sampled at each window's edges, latency from the clients, RSS per idle connection; and
// the start-up time of each relay.
import { spawn } from "node:child_process";
import { Child, nextTag } from "./generators.ts";
import { startServer, stopServer, type RelaySettings, type TargetName } from "./relay.ts";
import { cpuMicros, memInfo, nowNs, sleep, systemBusyMicros, type LatencySummary } from "./sampling.ts";
import { BENCH_RETENTION, PACED_FRACTION, type Shape } from "./shapes.ts";

export type Phase = {
  delivered: number;
  expected: number;
  windowNs: number;
  serverCpuUs: number;
  genCpuUs: number;
  otherCpuUs: number; // CPU of every other process on the machine during the windows (noise)
  latency: LatencySummary;
};
export type Faults = { lost: number; reordered: number; malformed: number; badClose: number };
export type RunResult = {
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

/**
 * One run of `shape` against a fresh `target`: a warm-up wave, the saturated waves, the paced
 * waves (at `pacing.rate`, which the first run of a shape sets from its saturated rate).
 */
export async function measureRun(shape: Shape, target: TargetName, round: number, pacing: { rate: number }, settings: RelaySettings): Promise<RunResult> {
  const server = await startServer(target, BENCH_RETENTION, settings);
  const clients = new Child("clients.ts");
  const sender = new Child("sender.ts");
  const tag = nextTag();
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
    const exitCode = await stopServer(server, settings);
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
    await stopServer(server, settings);
    throw e;
  }
}

export type Startup = { target: TargetName; readyMs: number[]; readyLineMs: number[]; exitCodes: (number | null)[] };

export async function measureStartup(target: TargetName, times: number, settings: RelaySettings): Promise<Startup> {
  const out: Startup = { target, readyMs: [], readyLineMs: [], exitCodes: [] };
  for (let i = 0; i < times; i++) {
    const s = await startServer(target, BENCH_RETENTION, settings, { level: "info" });
    await sleep(50); // the "ready" line may be flushed right after the ports are bound
    out.readyMs.push(s.readyMs);
    out.readyLineMs.push(s.readyLineMs);
    out.exitCodes.push(await stopServer(s, settings));
  }
  return out;
}

/** Reference: spawn to exit of a bare `node -e 0` (the machine's process start-up cost). */
export async function bareNodeMs(times: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < times; i++) {
    const t0 = nowNs();
    await new Promise((res) => spawn(process.execPath, ["-e", "0"], { stdio: "ignore" }).once("exit", res));
    out.push((nowNs() - t0) / 1e6);
  }
  return out;
}
