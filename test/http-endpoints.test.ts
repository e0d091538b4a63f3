// Observability: /livez, /readyz and /metrics (http.enabled, on http.uri or, with
// http.on_websocket_port, on the WebSocket port), the 426 answer to plain HTTP otherwise,
// and SIGHUP reloads of the config.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { Broker } from "./helpers/broker.ts";
import { Browser, RawWebSocket } from "./helpers/browser.ts";
import { HTTP_OWN_PORT, httpGet, metric, metrics } from "./helpers/http.ts";
import { monitor, startMonitor, type MonitorProcess } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { count, waitUntil, withTimeout } from "./helpers/wait.ts";

const DOWNLOADED = '{"command": "DOWNLOADED"}';
const TASK = '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}';
const FINISHED = '{"command": "FINISHED"}';

const HTTP = "http:\n  enabled: true\n  on_websocket_port: true\n";

/** The close code of a client that connects to `m` and never names a channel. */
async function silentClientClosed(t: TestContext, m: MonitorProcess): Promise<number> {
  const b = new Browser(`ws://127.0.0.1:${m.wsPort}/`);
  t.after(() => b.close());
  await b.opened;
  return (await b.waitClose()).code;
}

test("without http.enabled a plain GET on the WebSocket port gets 426 Upgrade Required, on any path", async (t) => {
  const m = await monitor(t);
  for (const path of ["/", "/metrics", "/livez", "/readyz"]) {
    const r = await httpGet(m.wsPort, path);
    assert.equal(r.status, 426, path);
    assert.equal(r.headers.upgrade, "websocket");
    assert.match(r.body, /WebSocket/);
  }
});

test("http.on_websocket_port serves /livez, /readyz and /metrics on the WebSocket port, which still relays", async (t) => {
  const s = await relay(t, { extraYaml: HTTP });
  const port = s.monitor.wsPort;
  const live = await httpGet(port, "/livez");
  assert.equal(live.status, 200);
  assert.equal(live.body, "ok\n");
  const ready = await httpGet(port, "/readyz?verbose=1");
  assert.equal(ready.status, 200);
  assert.equal(ready.body, "ready\n");
  const prom = await httpGet(port, "/metrics");
  assert.equal(prom.status, 200);
  assert.match(String(prom.headers["content-type"]), /^text\/plain; version=0\.0\.4/);
  assert.match(prom.body, /^# HELP recodex_monitor_connections /m);
  assert.match(prom.body, /^# TYPE recodex_monitor_messages_in_total counter$/m);
  assert.equal((await httpGet(port, "/nothing-here")).status, 404);
  assert.equal((await httpGet(port, "/livez", { method: "POST" })).status, 405);

  const b = await s.subscribe("job_http");
  await s.broker.send("job_http", "FINISHED");
  assert.deepEqual(await b.waitMessages(1), [FINISHED]);
  assert.equal((await b.waitClose()).code, 1000);
});

test("http.uri serves the endpoints on a port of their own; the WebSocket port keeps answering 426", async (t) => {
  const s = await relay(t, { extraYaml: HTTP_OWN_PORT });
  const port = s.monitor.httpPort;
  assert.notEqual(port, s.monitor.wsPort);
  assert.equal((await httpGet(port, "/livez")).status, 200);
  assert.equal((await httpGet(port, "/readyz")).body, "ready\n");
  assert.match((await httpGet(port, "/metrics")).body, /recodex_monitor_ready 1/);
  assert.equal((await httpGet(s.monitor.wsPort, "/metrics")).status, 426);
  const b = await s.subscribe("job_x");
  await s.broker.send("job_x", "STARTED");
  assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
});

test("http.uri without http.enabled is a config error (exit 3)", async (t) => {
  const m = await startMonitor({ extraYaml: 'http:\n  uri: ["127.0.0.1", 0]\n', waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  assert.equal(await m.exited, 3);
  assert.match(m.output(), /http\.enabled/);
});

test("/metrics counts connections, channels, stored messages and bytes, messages in and out, replays, peers and malformed ZeroMQ messages", async (t) => {
  const m = await monitor(t, { extraYaml: HTTP });
  const port = m.wsPort;
  const before = await metrics(port);
  assert.equal(before.value("recodex_monitor_zeromq_peers"), 0);
  assert.equal(before.value("recodex_monitor_connections"), 0);
  assert.equal(before.value("recodex_monitor_ready"), 1);

  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const live = await Browser.open(port, "job_m");
  t.after(() => live.close());
  // Live, not replayed: the subscription must be in before the first message.
  await m.waitFor(/subscribed to channel job_m/);
  await broker.send("job_m", "DOWNLOADED");
  await broker.send("job_m", "TASK", "t1", "COMPLETED");
  await live.waitMessages(2);
  // Malformed: no command frame, a channel id over the length limit, a command that is not UTF-8.
  await broker.sendFrames(["job_m"]);
  await broker.sendFrames(["x".repeat(300), "DOWNLOADED"]);
  await broker.sendFrames(["job_m", Buffer.from([0xff, 0xfe])]);
  await waitUntil(() => count(m.output(), /ZeroMQ message skipped/) === 3, "three 'ZeroMQ message skipped' warnings");
  // A late subscriber gets the two messages from history.
  const late = await Browser.open(port, "job_m");
  t.after(() => late.close());
  assert.deepEqual(await late.waitMessages(2), [DOWNLOADED, TASK]);

  const got = await metrics(port);
  const bytes = DOWNLOADED.length + TASK.length;
  assert.equal(got.value("recodex_monitor_zeromq_peers"), 1);
  assert.equal(got.value("recodex_monitor_connections"), 2);
  assert.equal(got.value("recodex_monitor_channels"), 1);
  assert.equal(got.value("recodex_monitor_stored_messages"), 2);
  assert.equal(got.value("recodex_monitor_stored_bytes"), bytes);
  // The first of the memory store's 1 MB buffers of history blocks.
  assert.equal(got.value("recodex_monitor_history_buffer_bytes"), 1024 * 1024);
  assert.equal(got.value("recodex_monitor_messages_in_total"), 2);
  assert.equal(got.value("recodex_monitor_messages_out_total"), 4);
  assert.equal(got.value("recodex_monitor_messages_out_bytes_total"), 2 * bytes);
  assert.equal(got.value("recodex_monitor_subscriptions_total"), 2);
  assert.equal(got.value("recodex_monitor_replays_total"), 2);
  assert.equal(got.value("recodex_monitor_replayed_messages_total"), 2);
  assert.equal(got.value("recodex_monitor_malformed_zeromq_messages_total"), 3);

  // FINISHED closes both, a message after it is late; counters only grow.
  await broker.send("job_m", "FINISHED");
  await live.waitClose();
  await late.waitClose();
  await broker.send("job_m", "UPLOADED");
  await waitUntil(async () => (await metric(port, "recodex_monitor_late_messages_total")) === 1, "late_messages_total 1");
  await waitUntil(async () => (await metric(port, "recodex_monitor_connections")) === 0, "both connections gone");
  const after = await metrics(port);
  assert.equal(after.value("recodex_monitor_messages_in_total"), 3);
  assert.equal(after.value("recodex_monitor_messages_out_total"), 6);
  assert.equal(after.value("recodex_monitor_stored_messages"), 3);
  assert.equal(after.value("recodex_monitor_malformed_zeromq_messages_total"), 3);

  broker.close();
  await waitUntil(async () => (await metric(port, "recodex_monitor_zeromq_peers")) === 0, "zeromq_peers back to 0");
});

test("/metrics counts evictions at retention.max_channels, idle expiry, and finished channels dropped", async (t) => {
  const m = await monitor(t, { extraYaml: HTTP + "retention:\n  max_channels: 2\n  idle_ttl: 60\n  finished_ttl: 0.2\n" });
  const port = m.wsPort;
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  // A channel counts once the broker has written to it (a browser's subscription alone does not).
  await broker.send("e1", "DOWNLOADED");
  await waitUntil(async () => (await metric(port, "recodex_monitor_channels")) === 1, "channel e1 kept");
  const first = await Browser.open(port, "e1");
  t.after(() => first.close());
  await first.waitMessages(1);
  await broker.send("e2", "DOWNLOADED");
  await broker.send("e3", "DOWNLOADED");
  assert.equal((await first.waitClose()).code, 4001, "the evicted channel's subscriber is told why");
  let got = await metrics(port);
  assert.equal(got.value("recodex_monitor_channels_evicted_total"), 1);
  assert.equal(got.value("recodex_monitor_channels"), 2);

  await broker.send("e3", "FINISHED");
  await waitUntil(async () => (await metric(port, "recodex_monitor_channels_finished_total")) === 1, "channels_finished_total 1 after finished_ttl");
  got = await metrics(port);
  assert.equal(got.value("recodex_monitor_channels"), 1);
  assert.equal(got.value("recodex_monitor_channels_expired_total"), 0);
});

test("/metrics counts channels expired after retention.idle_ttl; their subscribers are closed with 4000", async (t) => {
  const m = await monitor(t, { extraYaml: HTTP + "retention:\n  idle_ttl: 0.3\n" });
  const b = await Browser.open(m.wsPort, "idle_job");
  t.after(() => b.close());
  assert.equal((await b.waitClose()).code, 4000);
  const got = await metrics(m.wsPort);
  assert.equal(got.value("recodex_monitor_channels_expired_total"), 1);
  assert.equal(got.value("recodex_monitor_channels"), 0);
});

test("/metrics counts subscribe timeouts and keepalive (ping) timeouts", async (t) => {
  // The silent client is closed (1 s) before its first ping is due (1-2 s).
  const m = await monitor(t, { extraYaml: HTTP + "limits:\n  subscribe_timeout: 1\nkeepalive:\n  interval: 2\n" });
  assert.equal(await silentClientClosed(t, m), 4002);

  // A client that subscribes, reads the pings and answers none of them is cut off.
  const raw = await RawWebSocket.open(m.wsPort);
  t.after(() => raw.destroy());
  raw.sendText("ping_job");
  await raw.waitClose();
  const got = await metrics(m.wsPort);
  assert.equal(got.value("recodex_monitor_subscribe_timeouts_total"), 1);
  assert.equal(got.value("recodex_monitor_ping_timeout_disconnects_total"), 1);
  await m.waitFor(/did not answer a keepalive ping: disconnected/);
});

test("/metrics counts slow-client disconnects: a client that stops reading is dropped at limits.max_buffered_bytes", async (t) => {
  const m = await monitor(t, {
    extraYaml: HTTP + 'logger:\n  file: "-"\n  level: info\n' + "retention:\n  max_bytes_per_channel: 65536\nlimits:\n  max_buffered_bytes: 65536\n",
  });
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const raw = await RawWebSocket.open(m.wsPort);
  t.after(() => raw.destroy());
  raw.sendText("slow_job"); // and never read
  const reader = await Browser.open(m.wsPort, "slow_job");
  t.after(() => reader.close());
  await waitUntil(async () => (await metric(m.wsPort, "recodex_monitor_subscriptions_total")) === 2, "two subscriptions");
  // Paced by the reader (never more than 8 KB ahead of it), so only the client that does not
  // read piles up data.
  const big = "x".repeat(1000);
  let sent = 0;
  while (!/fell behind/.test(m.output()) && sent < 40_000) {
    if (sent > 8) await reader.waitMessages(sent - 8, 30_000);
    await broker.send("slow_job", "TASK", `t${sent++}`, big);
  }
  await m.waitFor(/fell behind/);
  assert.equal(await metric(m.wsPort, "recodex_monitor_slow_client_disconnects_total"), 1);
  assert.equal(reader.closed, null, "the client that reads is not dropped");
  await reader.waitMessages(sent, 30_000);
});

test("/readyz answers 503 and recodex_monitor_ready is 0 while the monitor drains its clients on SIGTERM", async (t) => {
  const m = await monitor(t, { extraYaml: HTTP_OWN_PORT + "limits:\n  drain_timeout: 30\n" });
  const port = m.httpPort;
  // This client never answers the closing handshake, so the drain lasts until it goes.
  const raw = await RawWebSocket.open(m.wsPort);
  t.after(() => raw.destroy());
  raw.sendText("drain_job");
  await m.waitFor(/subscribed to channel drain_job/);
  assert.equal((await httpGet(port, "/readyz")).status, 200);
  m.child.kill("SIGTERM");
  await m.waitFor(/stopping: SIGTERM received/);
  const r = await httpGet(port, "/readyz");
  assert.equal(r.status, 503);
  assert.equal(r.body, "draining\n");
  assert.equal(await metric(port, "recodex_monitor_ready"), 0);
  raw.destroy();
  assert.equal(await withTimeout(m.exited, "the monitor to exit once the last client has gone"), 0);
});

test("SIGHUP applies a new logger.level and limits, and names each change in 'configuration reloaded'", async (t) => {
  const m = await monitor(t);
  const probe = await Browser.open(m.wsPort);
  t.after(() => probe.close());
  await m.waitFor(/\[DEBUG\] client #1 connected/);
  m.editConfig((text) => text.replace("level: debug", "level: info") + "limits:\n  subscribe_timeout: 0.3\n");
  const line = await m.reload();
  assert.match(line, /configuration reloaded: /);
  assert.match(line, /logger\.level: "debug" -> "info"/);
  assert.match(line, /limits\.subscribe_timeout: 10 -> 0\.3/);
  assert.doesNotMatch(line, /retention\./, "unchanged keys are not listed");

  const since = m.mark();
  assert.equal(await silentClientClosed(t, m), 4002, "the new subscribe_timeout applies to new clients");
  await m.waitFor(/\[INFO\] client #\d+ .*sent no channel id within 0\.3 s/, { since });
  assert.doesNotMatch(m.output().slice(since), /\[DEBUG\]/, "debug lines stop");
});

test("SIGHUP that raises logger.level to warning still logs which keys changed", async (t) => {
  const m = await monitor(t);
  m.editConfig((text) => text.replace("level: debug", "level: warning") + "limits:\n  subscribe_timeout: 0.3\n");
  const since = m.mark();
  const line = await m.reload();
  assert.match(line, /configuration reloaded: .*logger\.level: "debug" -> "warning"/);
  assert.match(line, /limits\.subscribe_timeout: 10 -> 0\.3/);
  assert.equal(await silentClientClosed(t, m), 4002);
  // A warning that must be logged, after whatever the client's visit wrongly logged.
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  await broker.sendFrames(["log_marker"]);
  await m.waitFor(/\[WARNING\] ZeroMQ message skipped: no command frame/, { since });
  assert.doesNotMatch(m.output().slice(since), /\[DEBUG\]|\[INFO\] client/, "debug and info lines stop");
});

test("SIGHUP reports keys that need a restart and keeps their running values", async (t) => {
  const s = await relay(t);
  s.monitor.editConfig((text) => text.replace(/^websocket_uri: .*$/m, 'websocket_uri: ["127.0.0.1", 4567]') + "websocket:\n  resumable: false\n");
  const line = await s.monitor.reload();
  assert.match(line, /websocket_uri changed but needs a restart: kept the running value/);
  assert.match(line, /websocket\.resumable changed but needs a restart/);
  const b = await s.subscribe("still_here");
  await s.broker.send("still_here", "STARTED");
  assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}'], "still serving on the running port");
});

test("SIGHUP with no change logs 'configuration reloaded: nothing changed'", async (t) => {
  const m = await monitor(t);
  assert.match(await m.reload(), /configuration reloaded: nothing changed/);
});

for (const [what, bad, expect] of [
  ["invalid YAML", "limits: [\n", /not valid YAML/],
  ["an invalid value", "limits:\n  subscribe_timeout: -1\n", /limits\.subscribe_timeout/],
] as const) {
  test(`SIGHUP with ${what} in the config keeps the running configuration and logs an error`, async (t) => {
    const m = await monitor(t, { extraYaml: "limits:\n  subscribe_timeout: 0.4\n" });
    m.editConfig((text) => text.replace("level: debug", "level: critical").replace("limits:\n  subscribe_timeout: 0.4\n", bad));
    const line = await m.reload();
    assert.match(line, /\[ERROR\] configuration not reloaded, keeping the running one: /);
    assert.match(line, expect);
    const since = m.mark();
    assert.equal(await silentClientClosed(t, m), 4002, "the running subscribe_timeout (0.4 s) still applies");
    await m.waitFor(/\[DEBUG\]/, { since });
    assert.equal(m.child.exitCode, null);
  });
}

test("SIGHUP applies a new limits.max_client_message to new connections", async (t) => {
  const s = await relay(t, { extraYaml: "limits:\n  max_client_message: 1024\n  max_channel_id_length: 65536\n" });
  const channel = "x".repeat(2000);
  const before = await s.connect();
  before.ws.send(channel);
  assert.equal((await before.waitClose()).code, 1009);
  s.monitor.editConfig((text) => text.replace("max_client_message: 1024", "max_client_message: 4096"));
  assert.match(await s.monitor.reload(), /limits\.max_client_message: 1024 -> 4096/);
  const after = await s.subscribe(channel);
  await s.broker.send(channel, "STARTED");
  assert.deepEqual(await after.waitMessages(1), ['{"command": "STARTED"}']);
});
