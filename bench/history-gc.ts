// What kept history costs the young-generation GC, outside the rig: one process plays paced
// messages into 100 running jobs of 40 messages each (finished jobs stay kept) with a turn's
// worth of short-lived garbage per message, and counts the scavenges (a PerformanceObserver
// on `gc` entries). The variants keep each message's JSON
//   none    not at all (the floor),
//   keep    as a string in the channel's array (what src/channel-store.ts does),
//   chunk8  joined into one string per 8 messages of a channel,
//   pool    as src/history.ts keeps it (what the monitor does): bytes in pooled 512-byte blocks
//           outside the V8 heap, each message's end in an array of numbers.
// bench/README.md, "The paced p99", quotes what it measured.
//
//   node --max-semi-space-size=4 bench/history-gc.ts VARIANT [MESSAGES]
import { PerformanceObserver, constants } from "node:perf_hooks";
import { BlockPool, History } from "../src/history.ts";

const VARIANTS = ["none", "keep", "chunk8", "pool"] as const;
type Variant = (typeof VARIANTS)[number];
const variant = process.argv[2] as Variant;
const messages = Number(process.argv[3] ?? 400_000);
if (!VARIANTS.includes(variant) || !Number.isInteger(messages) || messages < 1) {
  console.error(`usage: node --max-semi-space-size=4 bench/history-gc.ts ${VARIANTS.join("|")} [MESSAGES]`);
  process.exit(2);
}

const ACTIVE = 100;
const PER_JOB = 40;

let scavenges = 0;
let scavengeMs = 0;
let longestMs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if ((e as { detail?: { kind?: number } }).detail?.kind !== constants.NODE_PERFORMANCE_GC_MINOR) continue;
    scavenges++;
    scavengeMs += e.duration;
    longestMs = Math.max(longestMs, e.duration);
  }
}).observe({ entryTypes: ["gc"] });

const pool = new BlockPool();
type Job = { strings: string[]; tail: string[]; history: History; count: number };
const newJob = (): Job => ({ strings: [], tail: [], history: new History(pool), count: 0 });

const kept: Job[] = [];
const running: Job[] = Array.from({ length: ACTIVE }, newJob);
const frame = Buffer.from('{"command": "TASK", "task_id": "12:1733149812345678901", "task_state": "COMPLETED"}', "latin1");
let sink: unknown = null;

const t0 = performance.now();
for (let i = 0; i < messages; i++) {
  const k = (i * 7919) % ACTIVE;
  const job = running[k];
  frame[17 + (i % 10)] = 48 + (i % 10);
  const json = frame.toString("latin1");
  for (let g = 0; g < 30; g++) sink = { a: i, b: g, c: [i, g], d: null };
  if (variant === "keep") {
    job.strings.push(json);
  } else if (variant === "chunk8") {
    job.tail.push(json);
    if (job.tail.length === 8) {
      job.strings.push(job.tail.join("\n"));
      job.tail.length = 0;
    }
  } else if (variant === "pool") {
    job.history.push(json);
  }
  if (++job.count === PER_JOB) {
    kept.push(job);
    running[k] = newJob();
  }
}
const ms = performance.now() - t0;
void sink;

// The observer reports in a later turn.
setTimeout(() => {
  const mem = process.memoryUsage();
  console.log(
    `${variant.padEnd(6)} ${messages} messages: ${((ms * 1000) / messages).toFixed(2)} µs each; ` +
      `${scavenges} scavenges, ${scavengeMs.toFixed(0)} ms in all, ${(scavengeMs / scavenges).toFixed(2)} ms mean, ${longestMs.toFixed(2)} ms longest; ` +
      `${kept.length} jobs kept, heap ${(mem.heapUsed / 1e6).toFixed(0)} MB, array buffers ${(mem.arrayBuffers / 1e6).toFixed(0)} MB`,
  );
}, 100);
