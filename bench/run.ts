// Benchmark of recodex-monitor against a floor relay (issues 4 and 13). See bench/README.md.
//
//   npm run bench                 full run (~15 min), writes bench/RESULTS.md
//   npm run bench -- --smoke      small shapes (< 60 s), exit 1 on any lost/reordered message
//   npm run bench -- --quick      every section at small sizes (a check that it works), writes nothing
//   npm run bench -- --scaling    the scaling table only
//   npm run bench -- --soak       1,000,000 messages over 100,000 channels, writes bench/SOAK.md
//   npm run bench -- --attacks    the attacks of issue 10 on the monitor, writes bench/ATTACKS.md
//
// Options: --rounds N (alternating floor/monitor rounds of every shape; by default each shape's
// own, shapes.ts: 8 for a and b, whose paced p99 needs them, 4 for the others), --target T (both = the floor
// and the built binary, or node src/main.ts when it is not built; floor, binary, monitor, or a
// list such as floor,monitor), --shapes a,b,c,i,redis (subset of the shape keys), --out FILE,
// --no-startup, --no-scaling, --state-mb N (the restored state file, 0 = none); with --attacks,
// --only a,b (subset of the attacks) and --target binary (dist/recodex-monitor).
//
// The runner: the command line and the order of things. The shapes are in shapes.ts, the
// relay under test in relay.ts, one measured run in measure.ts (the Redis shape's in
// redis-shape.ts), the scaling rows in scaling.ts, the start-up with a state file in
// state-startup.ts, the soak in soak.ts, the attacks in attacks.ts and bench/RESULTS.md in report.ts.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ATTACK_NAMES, attacks } from "./attacks.ts";
import { bareNodeMs, measureRun, measureStartup, type RunResult, type Startup } from "./measure.ts";
import { measureRedisRun, redisShapeMissing, type RedisRunResult } from "./redis-shape.ts";
import { BENCH, BINARY, MONITOR_SRC, RELAY_NODE, nodeVersionOf, type RelaySettings, type TargetName } from "./relay.ts";
import { f0, f1, f2, redisReport, report, scalingReport, type Versions } from "./report.ts";
import { nowNs } from "./sampling.ts";
import { SCALING_KEYS, measureScaling, type ScalingKey, type ScalingRow } from "./scaling.ts";
import {
  FULL_REDIS_SHAPE,
  FULL_SCALING,
  FULL_SHAPES,
  FULL_STATE_BYTES,
  QUICK_SCALING,
  QUICK_STATE_BYTES,
  REDIS_VARIANTS,
  SMOKE_REDIS_SHAPE,
  SMOKE_SHAPES,
  idleOnly,
} from "./shapes.ts";
import { soak } from "./soak.ts";
import { measureStateStartup, stateSummary, type StateStartup } from "./state-startup.ts";

// ---- command line ---------------------------------------------------------------------------------
const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
const option = (name: string, dflt: string) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
const SMOKE = flag("--smoke");
const QUICK = flag("--quick");
const SCALING_ONLY = flag("--scaling");
const SOAK = flag("--soak");
const ATTACKS = flag("--attacks");
const SMALL = SMOKE || QUICK;
/** --rounds for every shape; without it each shape's own count (shapes.ts), and 4 (1 when small) for the Redis shape. */
const ROUNDS_GIVEN = option("--rounds", "");
const ROUNDS = Number(ROUNDS_GIVEN || (SMALL ? "1" : "4"));
const roundsOf = (shape: { rounds: number }) => (ROUNDS_GIVEN === "" ? shape.rounds : ROUNDS);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) {
  console.error(`bench: --rounds takes a whole number of at least 1, not ${JSON.stringify(ROUNDS_GIVEN)}`);
  process.exit(2);
}
const TARGETS = option("--target", "both");
const SHAPES_WANTED = option("--shapes", "");
const OUT = option("--out", SMALL || SCALING_ONLY ? "" : join(BENCH, SOAK ? "SOAK.md" : ATTACKS ? "ATTACKS.md" : "RESULTS.md"));
const STARTUP = !flag("--no-startup") && !SCALING_ONLY;
const SCALING = SCALING_ONLY || (!SMOKE && !flag("--no-scaling") && SHAPES_WANTED === "");
const STATE_BYTES = Number(option("--state-mb", String((QUICK ? QUICK_STATE_BYTES : SMOKE ? 0 : FULL_STATE_BYTES) / 1048576))) * 1048576;
const SCALING_ROWS = option("--rows", SCALING_KEYS.join(",")).split(",") as ScalingKey[];
const STARTS = Number(option("--starts", SMALL ? "3" : "10"));
const SETTINGS: RelaySettings = {
  nodeArgs: option("--node-args", "").split(" ").filter((a) => a !== ""),
  keepalive: Number(option("--keepalive", "30")), // the monitor's default ping interval (s)
  serverLog: option("--server-log", ""),
};
const SHAPES = SMALL ? SMOKE_SHAPES : FULL_SHAPES;
const REDIS_SHAPE = SMALL ? SMOKE_REDIS_SHAPE : FULL_REDIS_SHAPE;
const wanted = (key: string) => SHAPES_WANTED === "" || SHAPES_WANTED.split(",").includes(key);

const faultsOf = (r: RunResult) => r.faults.lost + r.faults.reordered + r.faults.malformed + r.faults.badClose + r.idleFaults;

async function main(): Promise<void> {
  const t0 = nowNs();
  if (ATTACKS) {
    const binary = TARGETS === "binary";
    const text = await attacks(option("--only", ATTACK_NAMES.join(",")).split(","), binary ? [BINARY] : [process.execPath, MONITOR_SRC], binary ? "dist/recodex-monitor" : "node src/main.ts");
    if (OUT) writeFileSync(OUT, text);
    console.log(text);
    return;
  }
  // The monitor under test: the built binary, as shipped; node src/main.ts when it is not built.
  let monitorDefault: TargetName = "binary";
  if (!existsSync(BINARY)) {
    monitorDefault = "monitor";
    console.error("warning: dist/recodex-monitor not built (npm run build): benchmarking node src/main.ts instead of the binary");
  }
  let targets = [...new Set((TARGETS === "both" ? `floor,${monitorDefault}` : TARGETS).split(",").map((t) => (t === "source" ? "monitor" : t)))] as TargetName[];
  for (const t of targets) if (!["floor", "monitor", "binary"].includes(t)) throw new Error(`--target ${t}: floor, monitor, binary or both`);
  if (!existsSync(MONITOR_SRC) && targets.includes("monitor")) {
    console.error("src/main.ts not found: leaving out node src/main.ts");
    targets = targets.filter((t) => t !== "monitor");
    if (targets.length === 0) targets = ["floor"];
  }
  if (!existsSync(BINARY) && targets.includes("binary")) throw new Error("--target binary: dist/recodex-monitor not built (npm run build)");
  const monitor = targets.find((t) => t === "binary") ?? targets.find((t) => t === "monitor") ?? null;
  const versions: Versions = { relayNode: RELAY_NODE, floor: nodeVersionOf("floor"), binary: existsSync(BINARY) ? nodeVersionOf("binary") : "" };
  if (targets.includes("binary") && versions.binary !== versions.floor)
    console.error(`warning: the floor runs on Node ${versions.floor}, the binary on ${versions.binary}: not the same runtime`);
  console.error(`targets: ${targets.join(", ")}; floor and node src/main.ts on ${RELAY_NODE} (${versions.floor})${versions.binary ? `, dist/recodex-monitor on Node ${versions.binary}` : ""}`);
  const nofile = readFileSync("/proc/self/limits", "utf8").match(/Max open files\s+(\d+)/);
  if (nofile && Number(nofile[1]) < 11000 && !SMALL) console.error(`warning: open files limit ${nofile[1]} is low for 10,000 connections`);

  if (SOAK) {
    // node src/main.ts unless told otherwise: the verdict needs --trace-gc, which NODE_OPTIONS cannot pass to the binary
    const target: TargetName = TARGETS === "both" && existsSync(MONITOR_SRC) ? "monitor" : (monitor ?? targets[0]);
    console.error(`soak against ${target} ...`);
    const load = {
      messages: Number(option("--messages", "1000000")),
      channels: Number(option("--channels", "100000")),
      // 10,000 msgs/s: 1,000,000 messages take 100 s, long enough for V8 to reach its steady heap
      // size (at 25,000/s the 40 s run ends while the old generation is still growing lazily).
      rate: Number(option("--rate", "10000")),
      subscribers: Number(option("--subscribers", "300")),
    };
    const text = await soak(target, load, SETTINGS);
    if (OUT) writeFileSync(OUT, text);
    console.log(text);
    return;
  }

  if (SCALING_ONLY) {
    if (monitor === null) throw new Error("--scaling needs a monitor target");
    const rows = await measureScaling(monitor, QUICK ? QUICK_SCALING : FULL_SCALING, SETTINGS, (l) => console.error(l), SCALING_ROWS);
    const text = scalingReport(rows, monitor, QUICK ? QUICK_SCALING : FULL_SCALING, versions);
    if (OUT) writeFileSync(OUT, text);
    console.log(text);
    if (rows.some((r) => r.faults > 0 || r.exitCode !== 0)) process.exitCode = 1;
    return;
  }

  const startups: Startup[] = [];
  let bare: number[] = [];
  let stateStartup: StateStartup | null = null;
  if (STARTUP) {
    bare = await bareNodeMs(5);
    const startupTargets: TargetName[] = [...targets];
    // node src/main.ts for reference, next to the binary
    if (targets.includes("binary") && !targets.includes("monitor") && existsSync(MONITOR_SRC) && TARGETS === "both") startupTargets.push("monitor");
    for (const t of startupTargets) {
      console.error(`startup: ${t}`);
      startups.push(await measureStartup(t, STARTS, SETTINGS));
    }
    if (monitor !== null && STATE_BYTES > 0) {
      console.error(`startup: ${monitor} with a ${STATE_BYTES / 1048576} MB state file`);
      stateStartup = await measureStateStartup(monitor, STATE_BYTES, Math.max(3, Math.round(STARTS / 2)), SETTINGS);
      console.error(`startup: ${stateSummary(stateStartup)}`);
    }
  }

  const results: RunResult[] = [];
  const shapes = SHAPES.filter((s) => wanted(s.key));
  for (const shape of shapes) {
    const pacing = { rate: 0 }; // set by the first run (the floor's) from its saturated rate
    for (let round = 1; round <= roundsOf(shape); round++) {
      const order = round % 2 === 1 ? targets : [...targets].reverse();
      for (const target of order) {
        const r = await measureRun(shape, target, round, pacing, SETTINGS);
        results.push(r);
        if (idleOnly(shape)) {
          console.error(`${shape.key} ${target.padEnd(7)} round ${round}: ${f1(r.idleRssPerConnB / 1024)} KB/idle conn, faults ${faultsOf(r)}, exit ${r.exitCode}`);
          continue;
        }
        console.error(
          `${shape.key} ${target.padEnd(7)} round ${round}: ${f0(r.sat.delivered / (r.sat.windowNs / 1e9))} frames/s, ` +
            `${f1(r.sat.serverCpuUs / r.sat.delivered)} µs/frame, paced p99 ${f2(r.paced.latency.p99 / 1000)} ms, ` +
            `gen ${f1(r.sat.genCpuUs / r.sat.delivered)} µs/frame, other load ${f2(r.sat.otherCpuUs / 1e6 / (r.sat.windowNs / 1e9))} cores` +
            (shape.idle ? `, ${f1(r.idleRssPerConnB / 1024)} KB/idle conn` : "") +
            `, faults ${faultsOf(r)}, exit ${r.exitCode}`,
        );
      }
    }
  }
  // The Redis shape compares the monitor's stores with each other: the floor takes no part.
  const redisRuns: RedisRunResult[] = [];
  let redisNote = "";
  if (wanted(REDIS_SHAPE.key) && monitor !== null) {
    const missing = redisShapeMissing();
    if (missing !== null) redisNote = `## Redis shape\n\nskipped: ${missing}\n`;
    for (let round = 1; missing === null && round <= ROUNDS; round++) {
      const order = round % 2 === 1 ? REDIS_VARIANTS : [...REDIS_VARIANTS].reverse();
      for (const variant of order) {
        const r = await measureRedisRun(REDIS_SHAPE, variant, round, SETTINGS, monitor);
        console.error(
          `redis ${variant.padEnd(7)} round ${round}: ${f0(r.delivered / (r.windowNs / 1e9))} frames/s, ` +
            `${f1(r.monitorCpuUs / r.delivered)} µs/frame (monitors) + ${f1(r.redisCpuUs / r.delivered)} (redis), ` +
            `paced p99 ${f2(r.pacedP99 / 1000)} ms, other load ${f2(r.otherCpuUs / 1e6 / (r.windowNs / 1e9))} cores, faults ${r.faults}, exit ${r.exitCodes.join(",")}`,
        );
        redisRuns.push(r);
      }
    }
  }
  let scaling: ScalingRow[] = [];
  if (SCALING && monitor !== null) {
    console.error(`scaling: ${monitor}`);
    scaling = await measureScaling(monitor, QUICK ? QUICK_SCALING : FULL_SCALING, SETTINGS, (l) => console.error(l), SCALING_ROWS);
  }
  const mode = SMOKE ? "smoke" : QUICK ? "quick" : "full";
  let text = report(results, startups, bare, stateStartup, (nowNs() - t0) / 1e9, { mode, shapes: SHAPES, versions, scaling });
  if (scaling.length > 0) text += "\n" + scalingReport(scaling, monitor!, QUICK ? QUICK_SCALING : FULL_SCALING, versions);
  if (redisRuns.length > 0) text += "\n" + redisReport(redisRuns, REDIS_SHAPE);
  else if (redisNote !== "") text += "\n" + redisNote;
  if (OUT) writeFileSync(OUT, text);
  console.log(text);
  const monitorFaults =
    results.reduce((a, r) => a + faultsOf(r), 0) +
    redisRuns.reduce((a, r) => a + r.faults + r.exitCodes.filter((c) => c !== 0).length, 0) +
    scaling.reduce((a, r) => a + r.faults + (r.exitCode === 0 ? 0 : 1), 0) +
    (stateStartup === null ? 0 : stateStartup.badRestores + stateStartup.exitCodes.filter((c) => c !== 0).length);
  if (monitorFaults > 0) {
    console.error(`FAIL: ${monitorFaults} lost/reordered/malformed frames or unclean closes`);
    process.exitCode = 1;
  }
}

await main();
