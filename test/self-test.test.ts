// `recodex-monitor check -c CONFIG`: the operator's self-test, run against a real monitor
// (or against nothing) with the same config file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { monitor, runCli, tempDir } from "./helpers/monitor-process.ts";
import { CERT_A } from "./helpers/tls.ts";

// tcpmux: a privileged port that no service here listens on, so a connection is refused.
const NOBODY = 1;

const STEP = /^ok {4}.+ \(\d+\.\d ms\)$/gm;

function assertPass(r: { code: number | string; stdout: string; stderr: string }): void {
  assert.equal(r.code, 0, `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.match(r.stdout, /^PASS {2}round trip through the monitor in \d+\.\d ms$/m);
  assert.doesNotMatch(r.stdout, /FAIL/);
}

test("check against a running monitor exits 0 and prints PASS with a timing for every step", async (t) => {
  const m = await monitor(t);
  const r = await runCli(["check", "-c", m.configWithPorts()]);
  assertPass(r);
  const steps = r.stdout.match(STEP) ?? [];
  for (const step of [
    "WebSocket connection",
    "ZeroMQ connection",
    "relay of DOWNLOADED",
    "relay of TASK selftest-task COMPLETED",
    "relay of FINISHED",
    "close with 1000 after FINISHED",
    "second WebSocket connection",
    "history replay to a late subscriber",
  ]) {
    assert.ok(steps.some((s) => s.includes(step)), `a timed step "${step}" in:\n${r.stdout}`);
  }
  assert.match(r.stdout, new RegExp(`WebSocket ws://127\\.0\\.0\\.1:${m.wsPort}/, ZeroMQ tcp://127\\.0\\.0\\.1:${m.zmqPort}`));
  assert.match(m.output(), /subscribed to channel selftest_[0-9a-f]{16}/, "the monitor saw the test job");
  assert.equal(m.child.exitCode, null, "the monitor keeps running");
});

test("check against nothing listening exits 6 with a FAIL line, quickly", async () => {
  const dir = tempDir();
  const config = join(dir, "config.yml");
  writeFileSync(config, `websocket_uri: ["127.0.0.1", ${NOBODY}]\nzeromq_uri: ["127.0.0.1", ${NOBODY}]\n`);
  const r = await runCli(["check", "-c", config, "--timeout", "1"]);
  assert.equal(r.code, 6, `exit ${r.code}\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /^FAIL {2}WebSocket connection: /m);
  assert.doesNotMatch(r.stdout, /PASS/);
  assert.ok(r.ms < 8000, `took ${r.ms} ms`);
});

test("check fails with exit 6 within --timeout when the WebSocket port answers but no monitor is on the ZeroMQ port", async (t) => {
  const m = await monitor(t);
  const config = join(m.dir, "check.yml");
  writeFileSync(config, readFileSync(m.configWithPorts(), "utf8").replace(`"127.0.0.1", ${m.zmqPort}]`, `"127.0.0.1", ${NOBODY}]`));
  const r = await runCli(["check", "-c", config, "--timeout", "1"]);
  assert.equal(r.code, 6, `exit ${r.code}\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /^ok {4}WebSocket connection/m);
  assert.match(r.stdout, /^FAIL {2}ZeroMQ connection.*: /m);
  assert.ok(r.ms < 8000, `took ${r.ms} ms`);
});

test("with http.enabled, check also requires /readyz to answer 200", async (t) => {
  const m = await monitor(t, { extraYaml: "http:\n  enabled: true\n" });
  const r = await runCli(["check", "-c", m.configWithPorts()]);
  assertPass(r);
  assert.match(r.stdout, new RegExp(`^ok {4}GET http://127\\.0\\.0\\.1:${m.wsPort}/readyz \\(`, "m"));
});

test("with http.uri, check asks /readyz on that port", async (t) => {
  const m = await monitor(t, { extraYaml: 'http:\n  enabled: true\n  uri: ["127.0.0.1", 0]\n' });
  const r = await runCli(["check", "-c", m.configWithPorts()]);
  assertPass(r);
  assert.match(r.stdout, new RegExp(`^ok {4}GET http://127\\.0\\.0\\.1:${m.httpPort}/readyz `, "m"));
});

test("check fails (exit 6) when /readyz does not answer 200, naming the HTTP status", async (t) => {
  const m = await monitor(t); // no HTTP endpoints: the WebSocket port answers 426
  const config = join(m.dir, "check.yml");
  writeFileSync(config, readFileSync(m.configWithPorts(), "utf8") + "http:\n  enabled: true\n");
  const r = await runCli(["check", "-c", config, "--timeout", "2"]);
  assert.equal(r.code, 6, r.stdout);
  assert.match(r.stdout, /^FAIL {2}GET .*\/readyz: HTTP 426/m);
});

test("check works against a wss monitor with a self-signed certificate", async (t) => {
  const m = await monitor(t, { extraYaml: `websocket:\n  tls_cert: ${JSON.stringify(CERT_A.cert)}\n  tls_key: ${JSON.stringify(CERT_A.key)}\n` });
  const r = await runCli(["check", "-c", m.configWithPorts()]);
  assertPass(r);
  assert.match(r.stdout, new RegExp(`WebSocket wss://127\\.0\\.0\\.1:${m.wsPort}/`));
});

test("check with wss and http.enabled checks /readyz over https even with a self-signed certificate", async (t) => {
  const m = await monitor(t, {
    extraYaml: `websocket:\n  tls_cert: ${JSON.stringify(CERT_A.cert)}\n  tls_key: ${JSON.stringify(CERT_A.key)}\nhttp:\n  enabled: true\n`,
  });
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  const r = await runCli(["check", "-c", m.configWithPorts()], { env });
  assertPass(r);
  assert.match(r.stdout, new RegExp(`^ok {4}GET https://127\\.0\\.0\\.1:${m.wsPort}/readyz `, "m"));
});

test("check passes against a monitor that allows one connection per address", async (t) => {
  const m = await monitor(t, { extraYaml: "access:\n  max_connections_per_ip: 1\n" });
  const config = m.configWithPorts();
  for (let i = 0; i < 3; i++) assertPass(await runCli(["check", "-c", config]));
});

for (const bad of ["abc", "0", "-1", "", "Infinity"]) {
  test(`check --timeout ${JSON.stringify(bad)} is a usage error (exit 2)`, async () => {
    const r = await runCli(["check", `--timeout=${bad}`]);
    assert.equal(r.code, 2, `${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /--timeout/);
  });
}

test("--timeout without the check command is a usage error (exit 2)", async () => {
  const r = await runCli(["--timeout", "3"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--timeout .*goes with 'check'/);
});

test("check with a config file that does not exist exits 3", async () => {
  const r = await runCli(["check", "-c", join(tempDir(), "missing.yml")]);
  assert.equal(r.code, 3);
  assert.match(r.stderr, /does not exist/);
});

test("a very large --timeout (3000000 s) is either refused as a usage error or works; it never fails every step at once", async (t) => {
  const m = await monitor(t);
  const r = await runCli(["check", "-c", m.configWithPorts(), "--timeout", "3000000"]);
  if (r.code === 2) {
    assert.match(r.stderr, /--timeout/);
    return;
  }
  assertPass(r);
});
