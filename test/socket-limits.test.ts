// Sockets an attacker opens and never turns into WebSocket clients (slowloris): they count
// against the connection caps from the moment they are accepted, they must send their
// headers (and finish TLS) within limits.handshake_timeout, and the default cap keeps enough
// file descriptors free that neither the gateway nor libzmq runs out.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { upgradeOutcome } from "./helpers/browser.ts";
import { HTTP_OWN_PORT, metric } from "./helpers/http.ts";
import { monitor, underFileLimit } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { partialUpgrade, RawSocket } from "./helpers/tcp.ts";
import { CERT_A } from "./helpers/tls.ts";
import { count, waitUntil } from "./helpers/wait.ts";

const FINISHED = '{"command": "FINISHED"}';

/** `n` sockets that each send half an upgrade request once connected, and then nothing. */
function slowloris(port: number, n: number): RawSocket[] {
  return Array.from({ length: n }, () => {
    const s = new RawSocket(port);
    s.socket.on("connect", () => s.socket.write(partialUpgrade(port)));
    return s;
  });
}

test("sockets that never finish the upgrade count against access.max_connections from accept: the next connection gets 503, a watcher keeps receiving", async (t) => {
  // handshake_timeout far above the test's run time: the idle sockets stay held.
  const s = await relay(t, { extraYaml: HTTP_OWN_PORT + "access:\n  max_connections: 20\nlimits:\n  handshake_timeout: 300\n" });
  const m = s.monitor;
  const watching = await s.subscribe("watched");

  const idle = slowloris(m.wsPort, 19);
  t.after(() => idle.forEach((i) => i.destroy()));
  await waitUntil(async () => (await metric(m.httpPort, "recodex_monitor_sockets")) === 20, "20 sockets counted");
  const late = await upgradeOutcome(m.url());
  t.after(() => late.browser.close());
  assert.equal(late.status, 503);
  assert.match(late.body, /access\.max_connections/);
  await m.waitFor(/refused connection from 127\.0\.0\.1: connection limit reached \(access\.max_connections\)/);
  assert.ok(idle.every((i) => !i.closed), "the idle sockets are still held");

  await s.broker.send("watched", "TASK", "t1", "COMPLETED");
  await s.broker.send("watched", "FINISHED");
  assert.equal((await watching.waitMessages(2))[1], FINISHED);
  assert.equal(await metric(m.httpPort, 'recodex_monitor_refused_upgrades_total{reason="capacity"}'), 1);
});

test("limits.handshake_timeout closes a socket that sends half a request and one that sends nothing", async (t) => {
  // 1 s: short for the attackers, long enough for a client that sends its request at once
  // to get it read on a loaded machine.
  const s = await relay(t, { extraYaml: HTTP_OWN_PORT + "limits:\n  handshake_timeout: 1\n" });
  const m = s.monitor;
  const [half] = slowloris(m.wsPort, 1);
  const silent = new RawSocket(m.wsPort);
  t.after(() => [half, silent].forEach((i) => i.destroy()));
  await Promise.all([half.waitClosed("the half request to be cut"), silent.waitClosed("the silent socket to be cut")]);
  assert.equal(await metric(m.httpPort, "recodex_monitor_handshake_timeouts_total"), 2);
  // A client that completes its upgrade in time is not affected.
  const b = await s.subscribe("in_time");
  await s.broker.send("in_time", "FINISHED");
  assert.deepEqual(await b.waitMessages(1), [FINISHED]);
  assert.equal(await metric(m.httpPort, "recodex_monitor_handshake_timeouts_total"), 2);
});

test("limits.handshake_timeout also closes a TLS connection whose handshake never completes", async (t) => {
  const m = await monitor(t, {
    extraYaml:
      HTTP_OWN_PORT +
      `limits:\n  handshake_timeout: 0.3\nwebsocket:\n  tls_cert: ${JSON.stringify(CERT_A.cert)}\n  tls_key: ${JSON.stringify(CERT_A.key)}\n`,
  });
  const stuck = new RawSocket(m.wsPort);
  t.after(() => stuck.destroy());
  await stuck.connected;
  // The first bytes of a ClientHello record, and then nothing.
  stuck.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
  await stuck.waitClosed("the stuck TLS handshake to be cut");
  assert.equal(await metric(m.httpPort, "recodex_monitor_handshake_timeouts_total"), 1);
});

test("under ulimit -n 256 a flood of 600 idle sockets meets the default cap, not EMFILE: the excess is refused and logged, a ZeroMQ broker still connects and a watcher gets its job", async (t) => {
  const s = await relay(t, { extraYaml: HTTP_OWN_PORT + "limits:\n  handshake_timeout: 300\n", command: underFileLimit(256) });
  const m = s.monitor;
  const cap = await metric(m.httpPort, "recodex_monitor_max_connections");
  assert.ok(cap > 0 && cap <= 256 - 64, `default cap ${cap} keeps a reserve below 256 open files`);
  assert.match(m.output(), /access\.max_connections: \d+ \(open-files limit 256/);
  const watching = await s.subscribe("watched_flood");

  const flood = slowloris(m.wsPort, 600);
  t.after(() => flood.forEach((i) => i.destroy()));
  // The watcher holds a seat too.
  const excess = 600 - (cap - 1);
  await waitUntil(
    () => flood.filter((i) => i.closed).length >= excess,
    () => `${excess} refused sockets (closed: ${flood.filter((i) => i.closed).length})`,
    30_000,
  );
  const refused = flood.filter((i) => i.closed);
  const answered = refused.filter((i) => i.received.startsWith("HTTP/1.1 503 ")).length;
  assert.equal(answered, refused.length, `every refused connection got its 503 (${answered} of ${refused.length})`);
  const held = await metric(m.httpPort, "recodex_monitor_sockets");
  assert.ok(held <= cap, `${held} sockets held, cap ${cap}`);

  // A broker that connects now gets through, and so do its messages to the watcher.
  const broker = await s.peer();
  await broker.send("watched_flood", "TASK", "t1", "COMPLETED");
  await broker.send("watched_flood", "FINISHED");
  assert.equal((await watching.waitMessages(2))[1], FINISHED);
  t.diagnostic(`flood of 600 under 256 open files: ${held} sockets held, cap ${cap}`);
  await m.waitFor(/refused connection from 127\.0\.0\.1: connection limit reached/);
  assert.doesNotMatch(m.output(), /EMFILE|ENFILE/);
  const warnings = count(m.output(), /refused connection from/);
  assert.ok(warnings <= 21, `refusals are rate-limited in the log (${warnings} lines)`);
});

/** CPU time (user + system, all threads) the process `pid` has used, in seconds (Linux /proc, USER_HZ 100). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

test("if the process does run out of descriptors (a flood on the ZeroMQ port), it says so at most 20 times a minute, nothing spins, and relaying resumes once the flood is gone", async (t) => {
  const s = await relay(t, { command: underFileLimit(256) });
  const m = s.monitor;
  const pid = m.child.pid!;
  const watching = await s.subscribe("after_zmq_flood");
  const started = performance.now();
  const openFiles = () => readdirSync(`/proc/${pid}/fd`).length;
  const sockets: RawSocket[] = [];
  t.after(() => sockets.forEach((i) => i.destroy()));
  // Raw TCP connections (no ZeroMQ handshake) until the monitor has no descriptor left: in
  // waves, since the listen backlog holds only so many connections at a time.
  const exhaust = async () => {
    await waitUntil(() => {
      if (openFiles() >= 256) return true;
      if (sockets.length < 2000) for (let i = 0; i < 50; i++) sockets.push(new RawSocket(m.zmqPort));
      return false;
    }, "the monitor to have no file descriptor left", 30_000);
  };
  const report = /ZeroMQ could not accept a broker connection: EMFILE|no file descriptor left, near the open-files limit 256|files open, near the open-files limit 256/;

  // Out of descriptors until the monitor drops the junk for not finishing the ZeroMQ
  // handshake (10 s after its accept): meanwhile the monitor says so, and stays nearly idle.
  await exhaust();
  const cpu0 = cpuSeconds(pid);
  const wall0 = performance.now();
  await m.waitFor(report, { ms: 30_000 });
  await waitUntil(() => openFiles() < 200, "the monitor to drop the peers that never spoke ZeroMQ", 30_000);
  const cpu = cpuSeconds(pid) - cpu0;
  const wall = (performance.now() - wall0) / 1000;
  t.diagnostic(`out of descriptors: ${cpu.toFixed(2)} s CPU in ${wall.toFixed(2)} s`);
  assert.ok(cpu < wall / 2, `${cpu.toFixed(2)} s CPU in ${wall.toFixed(2)} s: something spins`);

  // Out of descriptors again, and the flood's sender goes away: a broker that connects then
  // is accepted and relayed.
  sockets.forEach((i) => i.destroy());
  sockets.length = 0;
  await exhaust();
  sockets.forEach((i) => i.destroy());
  const broker = await s.peer();
  await broker.send("after_zmq_flood", "FINISHED");
  assert.deepEqual(await watching.waitMessages(1), [FINISHED]);
  // 20 lines a minute for each kind: at most 20 for each minute (begun) since the first flood.
  const allowed = 20 * Math.ceil((performance.now() - started) / 60_000);
  for (const kind of [/ZeroMQ could not accept/, /near the open-files limit/]) {
    const lines = count(m.output(), kind);
    assert.ok(lines <= allowed, `${lines} lines of ${kind} (${allowed} allowed): rate-limited`);
  }
});
