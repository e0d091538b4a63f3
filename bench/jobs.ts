// The jobs the benchmark plays: deterministic scripts (the same in the sender, which sends
// them, and in the clients, which check every frame against them).

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
