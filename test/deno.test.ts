// The same source runs under Deno: one relay round trip with the pinned deno binary,
// offline (no update check, the project's node_modules).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { MAIN, ROOT } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";

const DENO = join(ROOT, "node_modules", ".bin", "deno");

test(
  "under Deno the monitor relays a job from a broker ROUTER to a browser and stops on SIGTERM",
  { skip: existsSync(DENO) ? false : "node_modules/.bin/deno is not installed", timeout: 60_000 },
  async (t) => {
    const s = await relay(t, {
      command: [DENO, "run", "--allow-net", "--allow-read", "--allow-ffi", "--allow-env", "--allow-sys", "--allow-write", MAIN],
      env: { ...process.env, DENO_NO_UPDATE_CHECK: "1", DENO_NO_PROMPT: "1", NO_COLOR: "1" },
    });
    const b = await s.subscribe("student_deno", { path: "/ws/" });
    await s.broker.send("student_deno", "TASK", "úkol 😀", "COMPLETED");
    await s.broker.send("student_deno", "FINISHED");
    assert.deepEqual(await b.waitMessages(2), [
      '{"command": "TASK", "task_id": "\\u00fakol \\ud83d\\ude00", "task_state": "COMPLETED"}',
      '{"command": "FINISHED"}',
    ]);
    assert.equal((await b.waitClose()).code, 1000);
    assert.equal(await s.monitor.stop("SIGTERM"), 0);
    assert.match(s.monitor.output(), /stopping: SIGTERM received/);
  },
);
