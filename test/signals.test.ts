// Signals right after start-up: once the monitor has logged that it is ready, SIGHUP
// reloads and SIGTERM stops it gracefully (exit 0), however soon they arrive.
import { test } from "node:test";
import assert from "node:assert/strict";
import { delay, startMonitor, type MonitorProcess } from "./helpers.ts";

/** Starts a monitor and sends `signal` from the very data event that carries the ready line. */
async function signalAtReady(signal: NodeJS.Signals): Promise<MonitorProcess> {
  const m = await startMonitor({ waitReady: false });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line:\n${m.output()}`)), 15_000);
    const onData = (d: Buffer) => {
      if (/ready/.test(d.toString())) {
        m.child.stderr!.off("data", onData);
        clearTimeout(timer);
        m.child.kill(signal);
        resolve();
      }
    };
    m.child.stderr!.on("data", onData);
  });
  return m;
}

test("SIGHUP sent the moment the ready line appears reloads the configuration instead of killing the monitor", async (t) => {
  const monitors = await Promise.all(Array.from({ length: 6 }, () => signalAtReady("SIGHUP")));
  t.after(() => Promise.all(monitors.map((m) => m.stop("SIGKILL"))));
  await delay(1500);
  for (const m of monitors) {
    assert.equal(m.child.signalCode, null, `killed by ${m.child.signalCode}; output:\n${m.output()}`);
    assert.equal(m.child.exitCode, null);
    assert.match(m.output(), /configuration reloaded: nothing changed/);
  }
});

test("SIGTERM sent the moment the ready line appears stops the monitor gracefully with exit 0", async (t) => {
  const monitors = await Promise.all(Array.from({ length: 6 }, () => signalAtReady("SIGTERM")));
  t.after(() => Promise.all(monitors.map((m) => m.stop("SIGKILL"))));
  for (const m of monitors) {
    const timer = setTimeout(() => m.child.kill("SIGKILL"), 10_000);
    const code = await m.exited;
    clearTimeout(timer);
    assert.equal(code, 0, `ended with ${code}; output:\n${m.output()}`);
    assert.match(m.output(), /stopping: SIGTERM received/);
  }
});
