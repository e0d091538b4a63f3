// The single executable dist/recodex-monitor (built by `npm run build`), run the way the
// packages run it: empty environment (`env -i`, so no node on PATH), a private runtime
// directory for the embedded ZeroMQ addon. Skipped when the binary has not been built.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
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

test("the binary runs with the young generation capped at 4 MB per semi-space (build.mjs V8_OPTIONS), and NODE_OPTIONS still adds to it", { skip }, () => {
  // V8 reports the cap only as a limit it grows towards, so the options the process started
  // with are what is checked: a probe loaded through NODE_OPTIONS prints them.
  const probe = join(tempDir("recodex-binary-argv-"), "probe.cjs");
  writeFileSync(probe, "process.stderr.write('execArgv ' + JSON.stringify(process.execArgv) + '\\n');\n");
  const r = spawnSync("/usr/bin/env", ["-i", `NODE_OPTIONS=--require ${probe}`, BIN, "--version"], { encoding: "utf8", timeout: 20_000 });
  assert.equal(r.status, 0, `exit ${r.status}: ${r.stderr}`);
  const line = /^execArgv (.*)$/m.exec(r.stderr);
  assert.ok(line, `the probe ran: ${r.stderr}`);
  assert.ok((JSON.parse(line[1]) as string[]).includes("--max-semi-space-size=4"), line[1]);
  assert.equal(r.stdout.trim(), `recodex-monitor ${VERSION}`);
});

test("relay round trip through the binary under env -i; SIGTERM exits 0", { skip, timeout: 60_000 }, async (t) => {
  const runtimeDir = join(tempDir("recodex-binary-test-"), "run");
  mkdirSync(runtimeDir, { mode: 0o700 });
  const s = await relay(t, {
    command: ["/usr/bin/env", "-i", `RUNTIME_DIRECTORY=${runtimeDir}`, BIN],
    // debug: subscribe() waits for the subscription's line, which for a channel the broker
    // has not written to yet is a debug line
    extraYaml: 'logger: {file: "-", level: debug}\n',
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
