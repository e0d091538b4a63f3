// Measuring one run of a shape: waves of jobs with the relay's and the load generator's CPU
// sampled at each window's edges, latency from the clients, RSS per idle connection; and
// the start-up time of each relay.
import { spawn } from "node:child_process";
import { Child, nextTag } from "./generators.ts";
import { RELAY_NODE, startServer, stopServer, type RelaySettings, type Server, type ServerOptions, type TargetName } from "./relay.ts";
import { cpuMicros, memInfo, nowNs, sleep, systemBusyMicros, type LatencySummary } from "./sampling.ts";
import { BENCH_RETENTION, PACED_FRACTION, type Retention, type Shape } from "./shapes.ts";

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


/** A relay under test with its two load generators, and the waves played through them so far. */
export type Rig = {
  server: Server;
  clients: Child;
  sender: Child;
  tag: number;
  perChannel: number;
  faults: Faults;
  waveNo: number;
  subscribeMs: number;
  /** Broker messages sent so far (waves and preloads). */
  sent: number;
  /** How the relay's CPU time is read (µs): clock ticks, or the scheduler's ns for short windows. */
  cpu: (pid: number) => number;
};

/** A fresh `target` (retention, extra config) with its clients and a 2-peer sender, connected. */
export async function openRig(target: TargetName, settings: RelaySettings, perChannel: number, retention: Retention = BENCH_RETENTION, opts: ServerOptions = {}): Promise<Rig> {
  const server = await startServer(target, retention, settings, opts);
  const rig: Rig = {
    server,
    clients: new Child("clients.ts"),
    sender: new Child("sender.ts"),
    tag: nextTag(),
    perChannel,
    faults: { lost: 0, reordered: 0, malformed: 0, badClose: 0 },
    waveNo: 0,
    subscribeMs: 0,
    sent: 0,
    cpu: cpuMicros,
  };
  try {
    await rig.clients.request({ type: "init", wsPort: server.wsPort }, "ready");
    await rig.sender.request({ type: "init", zmqPort: server.zmqPort, peers: 2 }, "ready");
  } catch (e) {
    await abortRig(rig, settings, String(e));
    throw e;
  }
  return rig;
}

/** Stops the generators and the relay; the relay's exit status. */
export async function closeRig(rig: Rig, settings: RelaySettings): Promise<number | null> {
  await rig.sender.exit();
  await rig.clients.exit();
  return stopServer(rig.server, settings);
}

/** After a failure: the relay's log tail on stderr, everything stopped. */
export async function abortRig(rig: Rig, settings: RelaySettings, why: string): Promise<void> {
  console.error(`${rig.server.target}: ${why}\n--- ${rig.server.target} log tail ---\n${rig.server.log.slice(-15).join("\n")}`);
  rig.sender.proc.kill();
  rig.clients.proc.kill();
  await stopServer(rig.server, settings);
}

/**
 * One wave: `count` jobs with `rig.perChannel` tabs each, subscribed first, then sent (rate 0 =
 * as fast as ZeroMQ takes them); its window's figures are added to `phase` (null: unmeasured).
 */
export async function runWave(rig: Rig, count: number, rate: number, phase: Phase | null): Promise<void> {
  const { server, clients, sender, tag, faults } = rig;
  const genCpu = () => cpuMicros(clients.pid) + cpuMicros(sender.pid);
  const w = rig.waveNo++;
  const sub = await clients.request({ type: "subscribe", tag, wave: w, count, perChannel: rig.perChannel }, "subscribed");
  rig.subscribeMs += Number(sub.ms);
  if (sub.ok !== sub.n) throw new Error(`only ${String(sub.ok)}/${String(sub.n)} subscriptions opened`);
  // let the relay read every subscription before the first message (the floor keeps no history)
  await sleep(100 + Number(sub.n) * 0.05);
  const s0 = rig.cpu(server.pid);
  const g0 = genCpu();
  const b0 = systemBusyMicros();
  const done = clients.wait("waveDone", 600000);
  const sent = await sender.request({ type: "wave", tag, wave: w, count, rate, seed: tag * 31 + w }, "sent", 600000);
  rig.sent += Number(sent.msgs);
  const timeout = setTimeout(() => clients.send({ type: "abortWave" }), 15000);
  const res = await done;
  clearTimeout(timeout);
  const s1 = rig.cpu(server.pid);
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
}

export const newPhase = (): Phase => ({
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
 * waves (at `pacing.rate`, which the first run of a shape sets from its saturated rate). A shape
 * without waves (idle only) opens its idle connections after the warm-up wave and stops.
 */
export async function measureRun(shape: Shape, target: TargetName, round: number, pacing: { rate: number }, settings: RelaySettings): Promise<RunResult> {
  const rig = await openRig(target, settings, shape.perChannel);
  const { server, clients, tag, faults } = rig;
  const wave = (count: number, rate: number, phase: Phase | null) => runWave(rig, count, rate, phase);
  try {
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
    if (pacing.rate === 0 && shape.satWaves > 0) {
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
    const exitCode = await closeRig(rig, settings);
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
      subscribeMs: rig.subscribeMs,
    };
  } catch (e) {
    await abortRig(rig, settings, `${shape.key}: ${String(e)}`);
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
    await new Promise((res) => spawn(RELAY_NODE, ["-e", "0"], { stdio: "ignore" }).once("exit", res));
    out.push((nowNs() - t0) / 1e6);
  }
  return out;
}
