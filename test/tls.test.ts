// TLS: the monitor can serve wss itself (websocket.tls_cert / tls_key), re-reads the
// certificate on SIGHUP without dropping connections, and refuses bad TLS settings at start.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Browser } from "./helpers/browser.ts";
import { httpGet } from "./helpers/http.ts";
import { monitor, startMonitor, tempDir } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { CERT_A, CERT_B, peerFingerprint, replaceFile, serverFingerprint } from "./helpers/tls.ts";

function tlsYaml(cert: string, key: string): string {
  return `websocket:\n  tls_cert: ${JSON.stringify(cert)}\n  tls_key: ${JSON.stringify(key)}\n`;
}

/** Starts a monitor with `yaml` that must refuse to start; resolves with its exit code. */
async function refusedStart(t: TestContext, yaml: string): Promise<number | string> {
  const m = await startMonitor({ extraYaml: yaml, waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  const code = await m.exited;
  assert.doesNotMatch(m.output(), /internal error/);
  return code;
}

test("with tls_cert and tls_key the monitor serves wss and relays a job to a browser that trusts the certificate", async (t) => {
  const s = await relay(t, { extraYaml: tlsYaml(CERT_A.cert, CERT_A.key) });
  assert.match(s.monitor.output(), /ready: wss:\/\//);
  const b = await s.subscribe("job_tls", { ws: { ca: readFileSync(CERT_A.cert) } });
  assert.equal(peerFingerprint(b), CERT_A.fingerprint);
  await s.broker.send("job_tls", "DOWNLOADED");
  await s.broker.send("job_tls", "FINISHED");
  assert.deepEqual(await b.waitMessages(2), ['{"command": "DOWNLOADED"}', '{"command": "FINISHED"}']);
  assert.equal((await b.waitClose()).code, 1000);
});

test("a TLS monitor does not speak plain ws on its port", async (t) => {
  const m = await monitor(t, { extraYaml: tlsYaml(CERT_A.cert, CERT_A.key) });
  const b = new Browser(`ws://127.0.0.1:${m.wsPort}/`);
  t.after(() => b.close());
  await assert.rejects(b.opened);
});

test("SIGHUP re-reads the certificate: open connections stay and keep receiving, new ones see the new certificate", async (t) => {
  assert.notEqual(CERT_A.fingerprint, CERT_B.fingerprint);
  const dir = tempDir();
  const live = { cert: join(dir, "live.crt"), key: join(dir, "live.key") };
  replaceFile(CERT_A.cert, live.cert);
  replaceFile(CERT_A.key, live.key);
  const s = await relay(t, { extraYaml: tlsYaml(live.cert, live.key) });

  const old = await s.subscribe("job_rotate", { ws: { rejectUnauthorized: false } });
  assert.equal(peerFingerprint(old), CERT_A.fingerprint);
  await s.broker.send("job_rotate", "DOWNLOADED");
  await old.waitMessages(1);

  replaceFile(CERT_B.cert, live.cert);
  replaceFile(CERT_B.key, live.key);
  const line = await s.monitor.reload();
  assert.match(line, /configuration reloaded: .*TLS certificate and key re-read/);

  assert.equal(await serverFingerprint(s.monitor.wsPort), CERT_B.fingerprint, "a new TLS handshake presents the new certificate");
  const fresh = await s.subscribe("job_rotate", { ws: { ca: readFileSync(CERT_B.cert) } });
  assert.equal(peerFingerprint(fresh), CERT_B.fingerprint);

  // The connection opened before the reload is still there and still gets live messages.
  assert.equal(old.closed, null);
  await s.broker.send("job_rotate", "TASK", "t1", "COMPLETED");
  await old.waitMessages(2);
  // Read while the connection is surely open: after FINISHED the server closes it.
  assert.equal(peerFingerprint(old), CERT_A.fingerprint, "the old connection kept its session");
  await s.broker.send("job_rotate", "FINISHED");
  const expected = ['{"command": "DOWNLOADED"}', '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}', '{"command": "FINISHED"}'];
  assert.deepEqual(await old.waitMessages(3), expected);
  assert.deepEqual(await fresh.waitMessages(3), expected);
  assert.equal((await old.waitClose()).code, 1000);
  assert.equal((await fresh.waitClose()).code, 1000);
});

test("a certificate that cannot be read on SIGHUP keeps the running certificate and logs an error", async (t) => {
  const m = await monitor(t, { extraYaml: tlsYaml(CERT_A.cert, CERT_A.key) });
  m.editConfig((text) => text.replace(CERT_A.cert, join(tempDir(), "missing.crt")));
  const line = await m.reload();
  assert.match(line, /\[ERROR\] configuration not reloaded, keeping the running one: .*missing\.crt/);
  assert.equal(await serverFingerprint(m.wsPort), CERT_A.fingerprint);
  assert.equal(m.child.exitCode, null, "still running");
});

test("a SIGHUP whose TLS files cannot be read applies none of the new configuration (not the log level either)", async (t) => {
  const s = await relay(t, { extraYaml: tlsYaml(CERT_A.cert, CERT_A.key) });
  s.monitor.editConfig((text) => text.replace("level: debug", "level: warning").replace(CERT_A.cert, join(tempDir(), "missing.crt")));
  const line = await s.monitor.reload();
  assert.match(line, /configuration not reloaded, keeping the running one/);
  // The running configuration logs at debug: a client connecting is logged.
  const since = s.monitor.mark();
  await s.connect({ ws: { rejectUnauthorized: false } });
  await s.monitor.waitFor(/\[DEBUG\] client #\d+ connected/, { since });
});

test("removing TLS from the config on SIGHUP is reported as needing a restart and keeps serving wss", async (t) => {
  const m = await monitor(t, { extraYaml: tlsYaml(CERT_A.cert, CERT_A.key) });
  m.editConfig((text) => text.replace(/websocket:\n  tls_cert: .*\n  tls_key: .*\n/, ""));
  const line = await m.reload();
  assert.match(line, /configuration reloaded: .*websocket\.tls_cert changed but needs a restart/);
  assert.equal(await serverFingerprint(m.wsPort), CERT_A.fingerprint);
});

test("a missing certificate file stops the start with exit 3 and a message naming the file and key", async (t) => {
  const m = await startMonitor({ extraYaml: tlsYaml(join(tempDir(), "nope.crt"), CERT_A.key), waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  assert.equal(await m.exited, 3);
  assert.match(m.output(), /nope\.crt/);
  assert.match(m.output(), /websocket\.tls_cert/);
  assert.match(m.output(), /RMON_ERR_TLS/);
});

test("a missing key file stops the start with exit 3", async (t) => {
  const m = await startMonitor({ extraYaml: tlsYaml(CERT_A.cert, join(tempDir(), "nope.key")), waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  assert.equal(await m.exited, 3);
  assert.match(m.output(), /websocket\.tls_key/);
});

for (const only of ["tls_cert", "tls_key"] as const) {
  test(`only websocket.${only} set (without the other) stops the start with exit 3`, async (t) => {
    const m = await startMonitor({
      extraYaml: `websocket:\n  ${only}: ${JSON.stringify(only === "tls_cert" ? CERT_A.cert : CERT_A.key)}\n`,
      waitReady: false,
    });
    t.after(() => m.stop("SIGKILL"));
    assert.equal(await m.exited, 3);
    assert.match(m.output(), /TLS needs both websocket\.tls_cert and websocket\.tls_key/);
  });
}

test("a certificate file that is not a PEM certificate stops the start with exit 3 (not an internal error)", async (t) => {
  const garbage = join(tempDir(), "garbage.crt");
  writeFileSync(garbage, "this is not a certificate\n");
  assert.equal(await refusedStart(t, tlsYaml(garbage, CERT_A.key)), 3);
});

test("a key that does not match the certificate stops the start with exit 3", async (t) => {
  assert.equal(await refusedStart(t, tlsYaml(CERT_A.cert, CERT_B.key)), 3);
});

test("with TLS and http.enabled the endpoints are served over https on the WebSocket port", async (t) => {
  const m = await monitor(t, { extraYaml: tlsYaml(CERT_A.cert, CERT_A.key) + "http:\n  enabled: true\n" });
  const r = await httpGet(m.wsPort, "/readyz", { tls: true, ca: readFileSync(CERT_A.cert) });
  assert.equal(r.status, 200);
  assert.equal(r.body, "ready\n");
});
