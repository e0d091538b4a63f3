// The single executable dist/recodex-monitor (built by `npm run build`), run the way the
// packages run it: empty environment (`env -i`, so no node on PATH), a private runtime
// directory for the embedded ZeroMQ addon. Skipped when the binary has not been built.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, tempDir } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";

const BIN = join(ROOT, "dist", "recodex-monitor");
const VERSION: string = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
const skip = existsSync(BIN) ? false : `${BIN} not built (run \`npm run build\`)`;
if (skip) console.log(`# binary.test.ts skipped: ${skip}`);

test("--version under env -i prints the package version", { skip }, () => {
  const r = spawnSync("/usr/bin/env", ["-i", BIN, "--version"], { encoding: "utf8", timeout: 20_000 });
  assert.equal(r.status, 0, `exit ${r.status}: ${r.stderr}`);
  assert.equal(r.stdout.trim(), `recodex-monitor ${VERSION}`);
  assert.equal(r.stderr, "", "no warnings (SEA, experimental, missing modules)");
});

test("relay round trip through the binary under env -i; SIGTERM exits 0", { skip, timeout: 60_000 }, async (t) => {
  const runtimeDir = join(tempDir("recodex-binary-test-"), "run");
  mkdirSync(runtimeDir, { mode: 0o700 });
  const s = await relay(t, {
    command: ["/usr/bin/env", "-i", `RUNTIME_DIRECTORY=${runtimeDir}`, BIN],
    extraYaml: 'logger: {file: "-", level: info}\n',
  });
  assert.deepEqual(readdirSync(runtimeDir), [], "the extracted addon is removed after loading");

  const b = await s.subscribe("job1");
  await s.broker.send("job1", "DOWNLOADED");
  await s.broker.send("job1", "FINISHED");
  assert.equal((await b.waitClose()).code, 1000, "close code after FINISHED");
  assert.deepEqual(b.messages.map((m) => JSON.parse(m)), [{ command: "DOWNLOADED" }, { command: "FINISHED" }]);

  const t0 = Date.now();
  assert.equal(await s.monitor.stop("SIGTERM"), 0, `exit after SIGTERM:\n${s.monitor.output()}`);
  assert.ok(Date.now() - t0 < 10_000, "exits within 10 s of SIGTERM");
});
