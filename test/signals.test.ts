// Signals right after start-up: once the monitor has logged that it is ready, SIGHUP
// reloads and SIGTERM stops it gracefully (exit 0), however soon they arrive.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startMonitor, type MonitorProcess } from "./helpers/monitor-process.ts";
import { withTimeout } from "./helpers/wait.ts";

/** Starts a monitor and sends `signal` from the very data event that carries the ready line. */
async function signalAtReady(signal: NodeJS.Signals): Promise<MonitorProcess> {
  const m = await startMonitor({ waitReady: false });
  await withTimeout(
    new Promise<void>((resolve) => {
      const onData = (d: Buffer) => {
        if (/recodex-monitor ready/.test(d.toString())) {
          m.child.stderr!.off("data", onData);
          m.child.kill(signal);
          resolve();
        }
      };
      m.child.stderr!.on("data", onData);
    }),
    "the ready line",
    20_000,
  );
  return m;
}

test("SIGHUP sent the moment the ready line appears reloads the configuration instead of killing the monitor", async (t) => {
  const monitors = await Promise.all(Array.from({ length: 6 }, () => signalAtReady("SIGHUP")));
  t.after(() => Promise.all(monitors.map((m) => m.stop("SIGKILL"))));
  for (const m of monitors) {
    await m.waitFor(/configuration reloaded: nothing changed/);
    assert.ok(m.running, `ended with ${m.child.exitCode ?? m.child.signalCode}; output:\n${m.output()}`);
  }
});

test("SIGTERM sent the moment the ready line appears stops the monitor gracefully with exit 0", async (t) => {
  const monitors = await Promise.all(Array.from({ length: 6 }, () => signalAtReady("SIGTERM")));
  t.after(() => Promise.all(monitors.map((m) => m.stop("SIGKILL"))));
  for (const m of monitors) {
    const code = await withTimeout(m.exited, "the monitor to exit");
    assert.equal(code, 0, `ended with ${code}; output:\n${m.output()}`);
    assert.match(m.output(), /stopping: SIGTERM received/);
  }
});
