// Shared helpers of the benchmark: deterministic job scripts, /proc readers, statistics.
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";

// ---- deterministic job scripts -------------------------------------------------------------

/** 32-bit integer hash (xorshift-multiply), deterministic across processes. */
export function hash32(a: number, b: number, c: number): number {
  let h = (a * 0x9e3779b1) ^ (b * 0x85ebca77) ^ (c * 0xc2b2ae3d);
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Small seeded PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hex(n: number, width: number): string {
  return (n >>> 0).toString(16).padStart(width, "0").slice(-width);
}

/** A realistic-looking channel (job) id: `student_<uuid>`; unique per (run tag, wave, index). */
export function channelId(tag: number, wave: number, index: number): string {
  return `student_${hex(tag, 8)}-${hex(wave, 4)}-4${hex(index >>> 24, 3)}-8${hex(index >>> 12, 3)}-${hex(index, 12)}`;
}

/** Number of tasks of a job: 10..59, like a test suite of a ReCodEx exercise. */
export function jobTasks(tag: number, wave: number, index: number): number {
  return 10 + (hash32(tag, wave, index) % 50);
}

/** Messages of a full job: DOWNLOADED, STARTED, TASK x n, ENDED, UPLOADED, FINISHED. */
export function jobLength(nTasks: number): number {
  return nTasks + 5;
}

export function taskState(k: number): string {
  return k % 13 === 0 ? "FAILED" : k % 17 === 0 ? "SKIPPED" : "COMPLETED";
}

/** Command of message k (0-based) of a job with n tasks. */
export function jobCommand(k: number, nTasks: number): string {
  if (k === 0) return "DOWNLOADED";
  if (k === 1) return "STARTED";
  if (k < nTasks + 2) return "TASK";
  if (k === nTasks + 2) return "ENDED";
  if (k === nTasks + 3) return "UPLOADED";
  return "FINISHED";
}

/** Exact bytes the monitor must produce for the fixed (non-TASK) commands. */
export const FIXED_JSON: Record<string, string> = Object.fromEntries(
  ["DOWNLOADED", "STARTED", "ENDED", "UPLOADED", "FINISHED", "FAILED", "ABORTED"].map((c) => [c, `{"command": "${c}"}`]),
);

/** Current monotonic time in ns as a Number (exact: CLOCK_MONOTONIC is far below 2^53 ns). */
export function nowNs(): number {
  const t = process.hrtime();
  return t[0] * 1e9 + t[1];
}

// ---- /proc ---------------------------------------------------------------------------------

let clkTck = 0;
function ticksPerSecond(): number {
  if (clkTck === 0) {
    try {
      clkTck = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** utime+stime of a process (all threads), in microseconds; NaN when the process is gone. */
export function cpuMicros(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // the command name (field 2) may contain spaces; fields after the last ')' are fixed
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const utime = Number(rest[11]);
    const stime = Number(rest[12]);
    return ((utime + stime) * 1e6) / ticksPerSecond();
  } catch {
    return NaN;
  }
}

/** CPU time all processes of the machine spent busy (not idle/iowait), in microseconds. */
export function systemBusyMicros(): number {
  const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0];
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  return ((total - v[3] - v[4]) * 1e6) / ticksPerSecond();
}

export type MemInfo = { rssKB: number; hwmKB: number };

export function memInfo(pid: number): MemInfo {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const rss = /VmRSS:\s+(\d+)/.exec(status);
    const hwm = /VmHWM:\s+(\d+)/.exec(status);
    return { rssKB: rss ? Number(rss[1]) : NaN, hwmKB: hwm ? Number(hwm[1]) : NaN };
  } catch {
    return { rssKB: NaN, hwmKB: NaN };
  }
}

// ---- statistics ----------------------------------------------------------------------------

export type LatencySummary = { n: number; p50: number; p99: number; max: number };

/** Percentiles (µs) of the first `n` values of `values` (sorted in place). */
export function summarize(values: Float64Array, n: number): LatencySummary {
  if (n === 0) return { n: 0, p50: NaN, p99: NaN, max: NaN };
  const v = values.subarray(0, n).sort();
  const at = (q: number) => v[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))];
  return { n, p50: at(0.5), p99: at(0.99), max: v[n - 1] };
}

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
