// Benchmark of recodex-monitor against a floor relay (issue 4). See bench/README.md.
//
//   npm run bench                 full run (~5-8 min), writes bench/RESULTS.md
//   npm run bench -- --smoke      small shapes (< 60 s), exit 1 on any lost/reordered message
//   npm run bench -- --soak       1,000,000 messages over 100,000 channels, writes bench/SOAK.md
//
// Options: --rounds N (alternating floor/monitor rounds, default 3), --target floor|monitor|both,
// --shapes a,b,c (subset of the shape keys), --out FILE, --no-startup.
//
// The runner: the command line and the order of things. The shapes are in shapes.ts, the
// relay under test in relay.ts, one measured run in measure.ts, the soak in soak.ts and
// bench/RESULTS.md in report.ts.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { bareNodeMs, measureRun, measureStartup, type RunResult, type Startup } from "./measure.ts";
import { BENCH, BINARY, MONITOR_SRC, type RelaySettings, type TargetName } from "./relay.ts";
import { f0, f1, f2, report } from "./report.ts";
import { nowNs } from "./sampling.ts";
import { FULL_SHAPES, SMOKE_SHAPES } from "./shapes.ts";
import { soak } from "./soak.ts";

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
const SETTINGS: RelaySettings = {
  nodeArgs: option("--node-args", "").split(" ").filter((a) => a !== ""),
  keepalive: Number(option("--keepalive", "30")), // the monitor's default ping interval (s)
  serverLog: option("--server-log", ""),
};
const SHAPES = SMOKE ? SMOKE_SHAPES : FULL_SHAPES;

const faultsOf = (r: RunResult) => r.faults.lost + r.faults.reordered + r.faults.malformed + r.faults.badClose + r.idleFaults;

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

  const startups: Startup[] = [];
  let bare: number[] = [];
  if (STARTUP) {
    bare = await bareNodeMs(5);
    const startupTargets: TargetName[] = [...targets];
    if (existsSync(BINARY) && (TARGETS === "both" || TARGETS === "monitor")) startupTargets.push("binary");
    for (const t of startupTargets) {
      console.error(`startup: ${t}`);
      startups.push(await measureStartup(t, SMOKE ? 2 : 5, SETTINGS));
    }
  }

  const results: RunResult[] = [];
  const shapes = SHAPES.filter((s) => SHAPES_WANTED === "" || SHAPES_WANTED.split(",").includes(s.key));
  for (const shape of shapes) {
    const pacing = { rate: 0 }; // set by the first run (the floor's) from its saturated rate
    for (let round = 1; round <= ROUNDS; round++) {
      const order = round % 2 === 1 ? targets : [...targets].reverse();
      for (const target of order) {
        const r = await measureRun(shape, target, round, pacing, SETTINGS);
        console.error(
          `${shape.key} ${target.padEnd(7)} round ${round}: ${f0(r.sat.delivered / (r.sat.windowNs / 1e9))} frames/s, ` +
            `${f1(r.sat.serverCpuUs / r.sat.delivered)} µs/frame, paced p99 ${f2(r.paced.latency.p99 / 1000)} ms, ` +
            `gen ${f1(r.sat.genCpuUs / r.sat.delivered)} µs/frame, other load ${f2(r.sat.otherCpuUs / 1e6 / (r.sat.windowNs / 1e9))} cores` +
            (shape.idle ? `, ${f1(r.idleRssPerConnB / 1024)} KB/idle conn` : "") +
            `, faults ${faultsOf(r)}, exit ${r.exitCode}`,
        );
        results.push(r);
      }
    }
  }
  const text = report(results, startups, bare, (nowNs() - t0) / 1e9, { smoke: SMOKE, rounds: ROUNDS, shapes: SHAPES });
  if (OUT) writeFileSync(OUT, text);
  console.log(text);
  const monitorFaults = results.reduce((a, r) => a + faultsOf(r), 0);
  if (monitorFaults > 0) {
    console.error(`FAIL: ${monitorFaults} lost/reordered/malformed frames or unclean closes`);
    process.exitCode = 1;
  }
}

await main();
