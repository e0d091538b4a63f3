// The process's file descriptors: its open-files limit and how many are open (Linux /proc).
// Running out (EMFILE) is silent in node (libuv accepts and drops the connection) and makes
// libzmq's listener spin, so the connection cap is derived from the limit, with a reserve.
import { readdirSync, readFileSync } from "node:fs";

/** Open files kept free for everything that is not a WebSocket-port connection (log, ZeroMQ, libuv, HTTP endpoints). */
export const FD_RESERVE = 128;
/** Assumed when the open-files limit cannot be read (not Linux). */
export const FD_LIMIT_FALLBACK = 1024;

/** The soft open-files limit of this process, or null when unknown or unlimited. */
export function openFilesLimit(): number | null {
  try {
    const line = readFileSync("/proc/self/limits", "utf8").match(/^Max open files\s+(\d+|unlimited)/m);
    return line === null || line[1] === "unlimited" ? null : Number(line[1]);
  } catch {
    return null;
  }
}

/**
 * How many descriptors are open now, null when unknown, or "exhausted" when not even the one
 * descriptor that counting them takes is left.
 */
export function openFiles(): number | "exhausted" | null {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch (err) {
    const code = (err as { code?: string }).code;
    return code === "EMFILE" || code === "ENFILE" ? "exhausted" : null;
  }
}

/** The connection cap that leaves FD_RESERVE descriptors (at most half the limit) to the rest of the process. */
export function descriptorCap(limit: number): number {
  return Math.max(limit - FD_RESERVE, Math.floor(limit / 2));
}
