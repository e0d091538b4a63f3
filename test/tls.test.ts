// TLS: the monitor can serve wss itself (websocket.tls_cert / tls_key), re-reads the
// certificate on SIGHUP without dropping connections, and refuses bad TLS settings at start.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Broker, Browser, startMonitor, tempDir } from "./helpers.ts";
import {
  browserFingerprint,
  editConfig,
  httpGet,
  makeCert,
  monitor,
  reload,
  replaceFile,
  serverFingerprint,
  waitUntil,
} from "./feature-helpers.ts";

function tlsYaml(cert: string, key: string): string {
  return `websocket:\n  tls_cert: ${JSON.stringify(cert)}\n  tls_key: ${JSON.stringify(key)}\n`;
}

test("with tls_cert and tls_key the monitor serves wss and relays a job to a browser that trusts the certificate", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const m = await monitor(t, { extraYaml: tlsYaml(a.cert, a.key) });
  assert.match(m.output(), /ready: wss:\/\//);
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const b = new Browser(`wss://127.0.0.1:${m.wsPort}/`, undefined, { ca: readFileSync(a.cert) });
  t.after(() => b.close());
  await b.opened;
  assert.equal(browserFingerprint(b), a.fingerprint);
  b.ws.send("job_tls");
  await broker.send("job_tls", "DOWNLOADED");
  await broker.send("job_tls", "FINISHED");
  assert.deepEqual(await b.waitMessages(2), ['{"command": "DOWNLOADED"}', '{"command": "FINISHED"}']);
  assert.equal((await b.waitClose()).code, 1000);
});

test("a TLS monitor does not speak plain ws on its port", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const m = await monitor(t, { extraYaml: tlsYaml(a.cert, a.key) });
  const b = new Browser(`ws://127.0.0.1:${m.wsPort}/`);
  t.after(() => b.close());
  await assert.rejects(b.opened);
});

test("SIGHUP re-reads the certificate: open connections stay and keep receiving, new ones see the new certificate", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const b2 = makeCert(dir, "b");
  assert.notEqual(a.fingerprint, b2.fingerprint);
  const live = { cert: join(dir, "live.crt"), key: join(dir, "live.key") };
  replaceFile(a.cert, live.cert);
  replaceFile(a.key, live.key);
  const m = await monitor(t, { extraYaml: tlsYaml(live.cert, live.key) });
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());

  const old = new Browser(`wss://127.0.0.1:${m.wsPort}/`, undefined, { rejectUnauthorized: false });
  t.after(() => old.close());
  await old.opened;
  assert.equal(browserFingerprint(old), a.fingerprint);
  old.ws.send("job_rotate");
  await broker.send("job_rotate", "DOWNLOADED");
  await old.waitMessages(1);

  replaceFile(b2.cert, live.cert);
  replaceFile(b2.key, live.key);
  const line = await reload(m);
  assert.match(line, /configuration reloaded: .*TLS certificate and key re-read/);

  assert.equal(await serverFingerprint(m.wsPort), b2.fingerprint, "a new TLS handshake presents the new certificate");
  const fresh = new Browser(`wss://127.0.0.1:${m.wsPort}/`, undefined, { ca: readFileSync(b2.cert) });
  t.after(() => fresh.close());
  await fresh.opened;
  assert.equal(browserFingerprint(fresh), b2.fingerprint);
  fresh.ws.send("job_rotate");

  // The connection opened before the reload is still there and still gets live messages.
  assert.equal(old.closed, null);
  await broker.send("job_rotate", "TASK", "t1", "COMPLETED");
  await old.waitMessages(2);
  // Read while the connection is surely open: after FINISHED the server closes it.
  assert.equal(browserFingerprint(old), a.fingerprint, "the old connection kept its session");
  await broker.send("job_rotate", "FINISHED");
  const expected = ['{"command": "DOWNLOADED"}', '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}', '{"command": "FINISHED"}'];
  assert.deepEqual(await old.waitMessages(3), expected);
  assert.deepEqual(await fresh.waitMessages(3), expected);
  assert.equal((await old.waitClose()).code, 1000);
  assert.equal((await fresh.waitClose()).code, 1000);
});

test("a certificate that cannot be read on SIGHUP keeps the running certificate and logs an error", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const m = await monitor(t, { extraYaml: tlsYaml(a.cert, a.key) });
  editConfig(m, (text) => text.replace(a.cert, join(dir, "missing.crt")));
  const line = await reload(m);
  assert.match(line, /\[ERROR\] configuration not reloaded, keeping the running one: .*missing\.crt/);
  assert.equal(await serverFingerprint(m.wsPort), a.fingerprint);
  assert.equal(m.child.exitCode, null, "still running");
});

test("a SIGHUP whose TLS files cannot be read applies none of the new configuration (not the log level either)", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const m = await monitor(t, { extraYaml: tlsYaml(a.cert, a.key) });
  editConfig(m, (text) => text.replace("level: debug", "level: warning").replace(a.cert, join(dir, "missing.crt")));
  const line = await reload(m);
  assert.match(line, /configuration not reloaded, keeping the running one/);
  // The running configuration logs at debug: a client connecting is logged.
  const b = new Browser(`wss://127.0.0.1:${m.wsPort}/`, undefined, { rejectUnauthorized: false });
  t.after(() => b.close());
  await b.opened;
  await waitUntil(() => /\[DEBUG\] client #\d+ connected/.test(m.output()), "a debug line for the new client (logger.level kept at debug)", 3000);
});

test("removing TLS from the config on SIGHUP is reported as needing a restart and keeps serving wss", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const m = await monitor(t, { extraYaml: tlsYaml(a.cert, a.key) });
  editConfig(m, (text) => text.replace(/websocket:\n  tls_cert: .*\n  tls_key: .*\n/, ""));
  const line = await reload(m);
  assert.match(line, /configuration reloaded: .*websocket\.tls_cert changed but needs a restart/);
  assert.equal(await serverFingerprint(m.wsPort), a.fingerprint);
});

test("a missing certificate file stops the start with exit 3 and a message naming the file and key", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const missing = join(dir, "nope.crt");
  const m = await startMonitor({ extraYaml: tlsYaml(missing, a.key), waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  assert.equal(await m.exited, 3);
  assert.match(m.output(), /nope\.crt/);
  assert.match(m.output(), /websocket\.tls_cert/);
  assert.match(m.output(), /RMON_ERR_TLS/);
});

test("a missing key file stops the start with exit 3", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  rmSync(a.key);
  const m = await startMonitor({ extraYaml: tlsYaml(a.cert, a.key), waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  assert.equal(await m.exited, 3);
  assert.match(m.output(), /websocket\.tls_key/);
});

for (const only of ["tls_cert", "tls_key"] as const) {
  test(`only websocket.${only} set (without the other) stops the start with exit 3`, async (t) => {
    const dir = tempDir();
    const a = makeCert(dir, "a");
    const m = await startMonitor({
      extraYaml: `websocket:\n  ${only}: ${JSON.stringify(only === "tls_cert" ? a.cert : a.key)}\n`,
      waitReady: false,
    });
    t.after(() => m.stop("SIGKILL"));
    assert.equal(await m.exited, 3);
    assert.match(m.output(), /TLS needs both websocket\.tls_cert and websocket\.tls_key/);
  });
}

test("a certificate file that is not a PEM certificate stops the start with exit 3 (not an internal error)", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const garbage = join(dir, "garbage.crt");
  writeFileSync(garbage, "this is not a certificate\n");
  const m = await startMonitor({ extraYaml: tlsYaml(garbage, a.key), waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  const code = await m.exited;
  assert.equal(code, 3, `exit ${code}; output:\n${m.output()}`);
  assert.doesNotMatch(m.output(), /internal error/);
});

test("a key that does not match the certificate stops the start with exit 3", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const b = makeCert(dir, "b");
  const m = await startMonitor({ extraYaml: tlsYaml(a.cert, b.key), waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  const code = await m.exited;
  assert.equal(code, 3, `exit ${code}; output:\n${m.output()}`);
});

test("with TLS and http.enabled the endpoints are served over https on the WebSocket port", async (t) => {
  const dir = tempDir();
  const a = makeCert(dir, "a");
  const m = await monitor(t, { extraYaml: tlsYaml(a.cert, a.key) + "http:\n  enabled: true\n  on_websocket_port: true\n" });
  const r = await httpGet(m.wsPort, "/readyz", { tls: true, ca: readFileSync(a.cert) });
  assert.equal(r.status, 200);
  assert.equal(r.body, "ready\n");
});
