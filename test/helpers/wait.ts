// Waiting on observables. Every wait has a deadline, so that a broken monitor fails a test
// with a message instead of hanging it; the deadlines are generous because the suite must
// pass on a loaded 2-core machine, and a deadline is never what a test waits for.

/** How long a wait may take before it fails the test. */
export const WAIT_MS = 10_000;

/** How often waitUntil looks again: a poll interval, not a wait for anything in particular. */
const POLL_MS = 10;

/** Polls `check` until it returns true; fails after `ms`, saying what it waited for. */
export async function waitUntil(
  check: () => boolean | Promise<boolean>,
  what: string | (() => string),
  ms = WAIT_MS,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${typeof what === "string" ? what : what()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** `promise`, or a rejection naming `what` once `ms` have passed. */
export async function withTimeout<T>(promise: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** How many times `pattern` occurs in `text`. */
export function count(text: string, pattern: RegExp): number {
  const flags = pattern.flags.includes("g") ? pattern.flags : pattern.flags + "g";
  return (text.match(new RegExp(pattern.source, flags)) ?? []).length;
}

/** `text` as a regular expression that matches exactly it. */
export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
