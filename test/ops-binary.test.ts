// watch, send and status from the single executable (dist/recodex-monitor, `npm run build`)
// against a monitor run from it: the commands are in the bundle, not only in src/.
// Skipped when the binary has not been built.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { encodeMessage } from "../src/frames.ts";
import { jobMessages } from "../src/send.ts";
import { startWatch } from "./helpers/cli.ts";
import { monitor, ROOT, runCli } from "./helpers/monitor-process.ts";

const BIN = join(ROOT, "dist", "recodex-monitor");
const skip = existsSync(BIN) ? false : `${BIN} not built (run \`npm run build\`)`;

test("the binary's watch, send and status against the binary's monitor", { skip, timeout: 60_000 }, async (t) => {
  const m = await monitor(t, { command: [BIN], extraYaml: "http:\n  enabled: true\n  on_websocket_port: true\n" });
  const config = m.configWithPorts();
  const w = await startWatch(t, m, "student_bin", ["-c", config], [BIN]);
  const sent = await runCli(["send", "student_bin", "--job", "-c", config], { command: [BIN], timeoutMs: 20_000 });
  assert.equal(sent.code, 0, sent.stderr);
  assert.equal(await w.exited, 0, w.stderr());
  assert.deepEqual(w.stdout().trimEnd().split("\n"), jobMessages(4).map((s) => encodeMessage(s)));
  const status = await runCli(["status", "-c", config, "--json"], { command: [BIN], timeoutMs: 20_000 });
  assert.equal(status.code, 0, status.stderr);
  const report = JSON.parse(status.stdout);
  assert.equal(report.jobs.ended.finished, 1);
  assert.equal(report.jobs.tasks.completed, 4);
  assert.equal(report.messages.in, 9);
});
