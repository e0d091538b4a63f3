// Measuring: monotonic time, CPU, memory and descriptors of a process from /proc, latency
// percentiles.
import { readdirSync, readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";

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

/**
 * CPU time of all threads of a process from the scheduler (/proc/PID/task/TID/schedstat, ns),
 * in microseconds: finer than utime+stime's clock ticks, for short windows (a replay takes a few
 * ms). A thread that exits between two samples takes its share with it. NaN when unavailable.
 */
export function cpuMicrosFine(pid: number): number {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ", 1)[0]);
      } catch {
        // the thread ended while we looked
      }
    }
    return ns / 1000;
  } catch {
    return NaN;
  }
}

/** The soft open-files limit of a process (/proc/PID/limits); NaN when unknown, Infinity when unlimited. */
export function openFilesLimitOf(pid: number): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, "utf8"));
    return m === null ? NaN : m[1] === "unlimited" ? Infinity : Number(m[1]);
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

/** How many file descriptors the process has open; NaN when the process is gone. */
export function openFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return NaN;
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
