// Sockets an attacker opens and never turns into WebSocket clients (slowloris): they count
// against the connection caps from the moment they are accepted, they must send their
// headers (and finish TLS) within limits.handshake_timeout, and the default cap keeps enough
// file descriptors free that neither the gateway nor libzmq runs out.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Broker, Browser, httpGet, tempDir, waitUntil } from "./helpers.ts";
import { makeCert, upgradeOutcome } from "./feature-helpers.ts";
import {
  metricValue,
  monitorWithMetrics,
  partialUpgrade,
  processCost,
  RawSocket,
  underFileLimit,
  watcher,
} from "./attack-helpers.ts";

async function metricsText(port: number): Promise<string> {
  return (await httpGet(port, "/metrics")).body;
}

test("sockets that never finish the upgrade count against access.max_connections from accept: the next connection gets 503, a watcher keeps receiving", async (t) => {
  const m = await monitorWithMetrics(t, "access:\n  max_connections: 20\nlogger:\n  file: \"-\"\n  level: info\n");
  const { broker, browser: watching } = await watcher(t, m, "watched");

  const idle: RawSocket[] = [];
  t.after(() => idle.forEach((s) => s.destroy()));
  for (let i = 0; i < 19; i++) {
    const s = new RawSocket(m.wsPort);
    idle.push(s);
    await s.connected;
    s.socket.write(partialUpgrade(m.wsPort));
  }
  await waitUntil(async () => metricValue(await metricsText(m.httpPort), "recodex_monitor_sockets") === 20, 5000, "20 sockets counted");
  const late = await upgradeOutcome(`ws://127.0.0.1:${m.wsPort}/`);
  t.after(() => late.browser.close());
  assert.equal(late.status, 503);
  assert.match(late.body, /access\.max_connections/);
  await m.waitFor(/refused connection from 127\.0\.0\.1: connection limit reached \(access\.max_connections\)/);
  assert.ok(idle.every((s) => !s.closed), "the idle sockets are still within their handshake time");

  await broker.send("watched", "TASK", "t1", "COMPLETED");
  await broker.send("watched", "FINISHED");
  assert.equal((await watching.waitMessages(3)).length, 3);
  assert.equal(metricValue(await metricsText(m.httpPort), 'recodex_monitor_refused_upgrades_total{reason="capacity"}'), 1);
});

test("limits.handshake_timeout closes a socket that sends half a request and one that sends nothing", async (t) => {
  const m = await monitorWithMetrics(t, "limits:\n  handshake_timeout: 0.3\n");
  const half = new RawSocket(m.wsPort);
  const silent = new RawSocket(m.wsPort);
  t.after(() => [half, silent].forEach((s) => s.destroy()));
  await Promise.all([half.connected, silent.connected]);
  half.socket.write(partialUpgrade(m.wsPort));
  await Promise.all([half.waitClosed(5000, "the half request to be cut"), silent.waitClosed(5000, "the silent socket to be cut")]);
  assert.equal(metricValue(await metricsText(m.httpPort), "recodex_monitor_handshake_timeouts_total"), 2);
  // A client that completes its upgrade in time is not affected.
  const b = await Browser.open(m.wsPort, "in_time");
  t.after(() => b.close());
  await m.waitFor(/subscribed to channel in_time/);
  assert.equal(b.closed, null);
  assert.equal(metricValue(await metricsText(m.httpPort), "recodex_monitor_handshake_timeouts_total"), 2);
});

test("limits.handshake_timeout also closes a TLS connection whose handshake never completes", async (t) => {
  const c = makeCert(tempDir(), "slow");
  const m = await monitorWithMetrics(
    t,
    `limits:\n  handshake_timeout: 0.3\nwebsocket:\n  tls_cert: ${JSON.stringify(c.cert)}\n  tls_key: ${JSON.stringify(c.key)}\n`,
  );
  const stuck = new RawSocket(m.wsPort);
  t.after(() => stuck.destroy());
  await stuck.connected;
  // The first bytes of a ClientHello record, and then nothing.
  stuck.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
  await stuck.waitClosed(5000, "the stuck TLS handshake to be cut");
  assert.equal(metricValue(await metricsText(m.httpPort), "recodex_monitor_handshake_timeouts_total"), 1);
});

test("under ulimit -n 256 a flood of 600 idle sockets meets the default cap, not EMFILE: the excess is refused and logged, a ZeroMQ broker still connects and a watcher gets its job", async (t) => {
  const m = await monitorWithMetrics(t, 'logger:\n  file: "-"\n  level: info\n', { command: underFileLimit(256) });
  const cap = metricValue(await metricsText(m.httpPort), "recodex_monitor_max_connections");
  assert.ok(cap > 0 && cap <= 256 - 64, `default cap ${cap} keeps a reserve below 256 open files`);
  assert.match(m.output(), /access\.max_connections: \d+ \(open-files limit 256/);
  const { browser: watching } = await watcher(t, m, "watched_flood");

  const before = processCost(m.child.pid!);
  const flood: RawSocket[] = [];
  t.after(() => flood.forEach((s) => s.destroy()));
  for (let i = 0; i < 600; i++) {
    const s = new RawSocket(m.wsPort);
    flood.push(s);
    s.socket.on("connect", () => s.socket.write(partialUpgrade(m.wsPort)));
  }
  await waitUntil(() => flood.filter((s) => s.closed).length >= 600 - cap, 20_000, () => `${600 - cap} refused sockets (closed: ${flood.filter((s) => s.closed).length})`);
  const refused = flood.filter((s) => s.closed);
  const answered = refused.filter((s) => s.received.startsWith("HTTP/1.1 503 ")).length;
  assert.equal(answered, refused.length, `every refused connection got its 503 (${answered} of ${refused.length})`);
  const held = metricValue(await metricsText(m.httpPort), "recodex_monitor_sockets");
  assert.ok(held <= cap, `${held} sockets held, cap ${cap}`);

  // A broker that connects now gets through, and so do its messages to the watcher.
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  await broker.send("watched_flood", "TASK", "t1", "COMPLETED");
  await broker.send("watched_flood", "FINISHED");
  assert.equal((await watching.waitMessages(3, 10_000)).length, 3);
  const after = processCost(m.child.pid!);
  t.diagnostic(`flood of 600: held ${held}, cap ${cap}, fds ${after.fds}, monitor CPU ${(after.cpu - before.cpu).toFixed(2)} s, RSS ${after.rssMB} MB`);
  await m.waitFor(/refused connection from 127\.0\.0\.1: connection limit reached/);
  assert.doesNotMatch(m.output(), /EMFILE|ENFILE/);
  const warnings = m.output().match(/refused connection from/g)?.length ?? 0;
  assert.ok(warnings <= 21, `refusals are rate-limited in the log (${warnings} lines)`);
});

test("if the process does run out of descriptors (a flood on the ZeroMQ port), libzmq's failed accepts are logged at most 20 times a minute, and relaying resumes once the flood is gone", async (t) => {
  const m = await monitorWithMetrics(t, 'logger:\n  file: "-"\n  level: info\n', { command: underFileLimit(256) });
  const { browser: watching } = await watcher(t, m, "after_zmq_flood");
  const flood: RawSocket[] = [];
  t.after(() => flood.forEach((s) => s.destroy()));
  for (let i = 0; i < 300; i++) flood.push(new RawSocket(m.zmqPort));
  await m.waitFor(/ZeroMQ could not accept a broker connection: EMFILE/);
  flood.forEach((s) => s.destroy());
  // A broker that connects after the flood is accepted and relayed.
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  await broker.send("after_zmq_flood", "FINISHED");
  assert.equal((await watching.waitMessages(2, 10_000))[1], '{"command": "FINISHED"}');
  const lines = m.output().match(/ZeroMQ could not accept/g)?.length ?? 0;
  assert.ok(lines <= 20, `${lines} lines: rate-limited`);
});
