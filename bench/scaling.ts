// The scaling table (issue 13): how the monitor's cost per message grows with the work it
// holds. Each row is one run of one monitor process, its sizes in ascending order: channels
// kept (preloaded history, idle) under a fixed live load; open connections (idle subscribed
// ones) under the same load; subscribers per channel; the history replayed to a late joiner.
// CPU comes from the scheduler's per-thread counters (cpuMicrosFine): a replay takes a few ms.
import { channelId } from "./jobs.ts";
import { abortRig, closeRig, newPhase, openRig, runWave, type Rig } from "./measure.ts";
import { scrapeMetrics, type RelaySettings, type TargetName } from "./relay.ts";
import { cpuMicrosFine, median, memInfo, openFilesLimitOf, sleep, systemBusyMicros } from "./sampling.ts";
import { SCALING_RETENTION, type ScalingSizes } from "./shapes.ts";

export type ScalingKey = "channels" | "connections" | "subscribers" | "replay";

export type ScalingPoint = {
  size: number;
  /** Frames delivered in the measured windows (replay: frames replayed to all joiners). */
  delivered: number;
  cpuUs: number;
  windowNs: number;
  otherCpuUs: number;
  rssKB: number;
  /** What the monitor's /metrics said at the measurement: channels kept, open connections. */
  channels: number;
  connections: number;
  /** Replay: median ms from the channel id sent to the 1000 close, per joiner. */
  replayMs: number;
  skipped: string;
};

export type ScalingRow = { key: ScalingKey; points: ScalingPoint[]; faults: number; exitCode: number | null };

const HTTP = "http: {enabled: true, on_websocket_port: true}";
const KEPT_WAVE = 0xfffd;
const REPLAY_WAVE = 0xfffc;
const WARM_UP_WAVES = 3;

const point = (size: number): ScalingPoint => ({
  size,
  delivered: 0,
  cpuUs: 0,
  windowNs: 0,
  otherCpuUs: 0,
  rssKB: NaN,
  channels: NaN,
  connections: NaN,
  replayMs: NaN,
  skipped: "",
});

/** Waits until the monitor has stored every broker message sent so far (its /metrics counter). */
async function drained(rig: Rig): Promise<Record<string, number>> {
  const deadline = performance.now() + 300_000;
  for (;;) {
    const m = await scrapeMetrics(rig.server.wsPort);
    if ((m.recodex_monitor_messages_in_total ?? NaN) >= rig.sent) return m;
    if (performance.now() > deadline) throw new Error(`monitor stored ${m.recodex_monitor_messages_in_total} of ${rig.sent} messages after 300 s`);
    await sleep(20);
  }
}

/** History to keep: channels from..to-1 of `wave`, `length` messages each of a job with `tasks` tasks. */
async function preload(rig: Rig, wave: number, from: number, to: number, length: number, tasks: number): Promise<void> {
  if (to <= from) return;
  const r = await rig.sender.request({ type: "preload", tag: rig.tag, wave, from, to, length, tasks }, "preloaded", 1_800_000);
  rig.sent += Number(r.msgs);
  await drained(rig);
}

/** `waves` saturated waves of `jobs` jobs (rig.perChannel tabs each), measured into `p`. */
async function live(rig: Rig, p: ScalingPoint, jobs: number, waves: number): Promise<void> {
  const phase = newPhase();
  for (let i = 0; i < waves; i++) await runWave(rig, jobs, 0, phase);
  p.delivered = phase.delivered;
  p.cpuUs = phase.serverCpuUs;
  p.windowNs = phase.windowNs;
  p.otherCpuUs = phase.otherCpuUs;
}

async function snapshot(rig: Rig, p: ScalingPoint): Promise<void> {
  const m = await scrapeMetrics(rig.server.wsPort);
  p.rssKB = memInfo(rig.server.pid).rssKB;
  p.channels = m.recodex_monitor_channels ?? NaN;
  p.connections = m.recodex_monitor_connections ?? NaN;
}

/** Unmeasured waves before a row's first size: JIT and buffers settle, as the warm-up wave of the shapes. */
async function warmUp(rig: Rig, jobs: number): Promise<void> {
  for (let i = 0; i < WARM_UP_WAVES; i++) await runWave(rig, jobs, 0, null);
}

type RowRun = (rig: Rig, sizes: ScalingSizes, points: ScalingPoint[]) => Promise<number>;

/** Channels kept: 5 messages each (no FINISHED), preloaded up to each size; the live waves' own channels expire 1 s after FINISHED. */
const channelsRow: RowRun = async (rig, sizes, points) => {
  await warmUp(rig, sizes.liveJobs);
  let kept = 0;
  for (const n of sizes.channels) {
    const p = point(n);
    await preload(rig, KEPT_WAVE, kept, n, sizes.keptLength, 50);
    kept = n;
    await snapshot(rig, p);
    await live(rig, p, sizes.liveJobs, sizes.liveWaves);
    points.push(p);
  }
  return 0;
};

/** Open connections: idle subscribed connections up to each size (minus the live tabs), then the live waves. */
const connectionsRow: RowRun = async (rig, sizes, points) => {
  await warmUp(rig, sizes.liveJobs);
  let idle = 0;
  const fdLimit = Math.min(openFilesLimitOf(rig.server.pid), openFilesLimitOf(rig.clients.pid));
  for (const n of sizes.connections) {
    const p = point(n);
    points.push(p);
    if (n + 256 > fdLimit) {
      p.skipped = `open-files limit ${fdLimit} (relay or clients) is too low for ${n} connections`;
      continue;
    }
    const want = Math.max(0, n - sizes.liveJobs);
    const r = await rig.clients.request({ type: "idle", tag: rig.tag, count: want - idle, offset: idle }, "idleOpen", 600_000);
    if (r.ok !== r.n) throw new Error(`only ${String(r.ok)}/${String(r.n)} idle connections opened`);
    idle = want;
    await sleep(1500); // RSS settles after the handshakes (the same wait as the idle shapes)
    await snapshot(rig, p);
    await live(rig, p, sizes.liveJobs, sizes.liveWaves);
  }
  const r = await rig.clients.request({ type: "idleClose" }, "idleClosed");
  return Number(r.unexpected) + Number(r.closedByServer);
};

/** Subscribers per channel: the same number of tabs (fanoutConnections) over connections/subscribers jobs. */
const subscribersRow: RowRun = async (rig, sizes, points) => {
  await warmUp(rig, sizes.fanoutConnections);
  for (const s of sizes.subscribers) {
    const p = point(s);
    rig.perChannel = s;
    const jobs = Math.max(1, Math.round(sizes.fanoutConnections / s));
    await runWave(rig, jobs, 0, null); // this fan-out's warm-up
    await live(rig, p, jobs, sizes.fanoutWaves);
    await snapshot(rig, p);
    points.push(p);
  }
  return 0;
};

/** Replay: one channel per size with a whole job of that many messages, then late joiners one after another. */
const replayRow: RowRun = async (rig, sizes, points) => {
  let faults = 0;
  for (let i = 0; i < sizes.replay.length; i++) {
    const n = Math.max(6, sizes.replay[i]);
    const p = point(n);
    await preload(rig, REPLAY_WAVE, i, i + 1, n, n - 5);
    const channel = channelId(rig.tag, REPLAY_WAVE, i);
    const ms: number[] = [];
    // one unmeasured joiner first: JIT and buffers, as the warm-up wave elsewhere
    for (let j = 0; j <= sizes.replayJoiners; j++) {
      const c0 = rig.cpu(rig.server.pid);
      const b0 = systemBusyMicros();
      const r = await rig.clients.request({ type: "late", channel, expect: n }, "lateDone", 300_000);
      const c1 = rig.cpu(rig.server.pid);
      const b1 = systemBusyMicros();
      faults += Number(r.lost) + Number(r.reordered) + Number(r.malformed) + (r.code === 1000 ? 0 : 1);
      if (j === 0) continue;
      p.delivered += Number(r.got);
      p.cpuUs += c1 - c0;
      p.windowNs += Number(r.ms) * 1e6;
      p.otherCpuUs += Math.max(0, b1 - b0 - (c1 - c0));
      ms.push(Number(r.ms));
    }
    p.replayMs = median(ms);
    await snapshot(rig, p);
    points.push(p);
  }
  return faults;
};

const ROWS: { key: ScalingKey; run: RowRun; retention: Record<string, number> }[] = [
  { key: "channels", run: channelsRow, retention: { ...SCALING_RETENTION, finished_ttl: 1 } },
  { key: "connections", run: connectionsRow, retention: { ...SCALING_RETENTION, finished_ttl: 1 } },
  { key: "subscribers", run: subscribersRow, retention: { ...SCALING_RETENTION, finished_ttl: 1 } },
  { key: "replay", run: replayRow, retention: SCALING_RETENTION },
];

/** Every row against `target` (a monitor: it needs /metrics), one fresh process per row. */
export const SCALING_KEYS: ScalingKey[] = ROWS.map((r) => r.key);

export async function measureScaling(target: TargetName, sizes: ScalingSizes, settings: RelaySettings, progress: (line: string) => void, only: ScalingKey[] = SCALING_KEYS): Promise<ScalingRow[]> {
  const rows: ScalingRow[] = [];
  for (const { key, run, retention } of ROWS.filter((r) => only.includes(r.key))) {
    const rig = await openRig(target, settings, 1, retention, { extraConfig: [HTTP] });
    rig.cpu = cpuMicrosFine;
    const points: ScalingPoint[] = [];
    let extra: number;
    try {
      extra = await run(rig, sizes, points);
    } catch (e) {
      await abortRig(rig, settings, `scaling ${key}: ${String(e)}`);
      throw e;
    }
    const faults = extra + rig.faults.lost + rig.faults.reordered + rig.faults.malformed + rig.faults.badClose;
    const exitCode = await closeRig(rig, settings);
    rows.push({ key, points, faults, exitCode });
    progress(
      `scaling ${key}: ` +
        points.map((p) => (p.skipped ? `${p.size} skipped` : `${p.size}: ${(p.cpuUs / p.delivered).toFixed(1)} µs/frame, ${(p.rssKB / 1024).toFixed(0)} MB`)).join("; ") +
        `, faults ${faults}, exit ${exitCode}`,
    );
  }
  return rows;
}
