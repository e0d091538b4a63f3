// Observability: /livez, /readyz and /metrics (http.enabled, on the WebSocket port or on
// http.uri), the 426 answer to plain HTTP otherwise, and SIGHUP reloads of the config.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Broker, Browser, delay, freePort } from "./helpers.ts";
import {
  editConfig,
  httpGet,
  metric,
  metrics,
  monitor,
  rawWebSocket,
  reload,
  waitUntil,
} from "./feature-helpers.ts";

const DOWNLOADED = '{"command": "DOWNLOADED"}';
const TASK = '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}';
const FINISHED = '{"command": "FINISHED"}';

test("without http.enabled a plain GET on the WebSocket port gets 426 Upgrade Required, on any path", async (t) => {
  const m = await monitor(t);
  for (const path of ["/", "/metrics", "/livez", "/readyz"]) {
    const r = await httpGet(m.wsPort, path);
    assert.equal(r.status, 426, path);
    assert.equal(r.headers.upgrade, "websocket");
    assert.match(r.body, /WebSocket/);
  }
});

test("http.enabled serves /livez, /readyz and /metrics on the WebSocket port, which still relays", async (t) => {
  const m = await monitor(t, { extraYaml: "http:\n  enabled: true\n" });
  const live = await httpGet(m.wsPort, "/livez");
  assert.equal(live.status, 200);
  assert.equal(live.body, "ok\n");
  const ready = await httpGet(m.wsPort, "/readyz?verbose=1");
  assert.equal(ready.status, 200);
  assert.equal(ready.body, "ready\n");
  const prom = await httpGet(m.wsPort, "/metrics");
  assert.equal(prom.status, 200);
  assert.match(String(prom.headers["content-type"]), /^text\/plain; version=0\.0\.4/);
  assert.match(prom.body, /^# HELP recodex_monitor_connections /m);
  assert.match(prom.body, /^# TYPE recodex_monitor_messages_in_total counter$/m);
  assert.equal((await httpGet(m.wsPort, "/nothing-here")).status, 404);
  assert.equal((await httpGet(m.wsPort, "/livez", { method: "POST" })).status, 405);

  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const b = await Browser.open(m.wsPort, "job_http");
  t.after(() => b.close());
  await broker.send("job_http", "FINISHED");
  assert.deepEqual(await b.waitMessages(1), [FINISHED]);
  assert.equal((await b.waitClose()).code, 1000);
});

test("http.uri serves the endpoints on a port of their own; the WebSocket port keeps answering 426", async (t) => {
  const port = await freePort();
  const m = await monitor(t, { extraYaml: `http:\n  enabled: true\n  uri: ["127.0.0.1", ${port}]\n` });
  assert.match(m.output(), new RegExp(`HTTP endpoints on port ${port}`));
  assert.equal((await httpGet(port, "/livez")).status, 200);
  assert.equal((await httpGet(port, "/readyz")).body, "ready\n");
  assert.match((await httpGet(port, "/metrics")).body, /recodex_monitor_ready 1/);
  assert.equal((await httpGet(m.wsPort, "/metrics")).status, 426);
  const b = await Browser.open(m.wsPort, "job_x");
  t.after(() => b.close());
});

test("http.uri without http.enabled is a config error (exit 3)", async (t) => {
  const port = await freePort();
  const { startMonitor } = await import("./helpers.ts");
  const m = await startMonitor({ extraYaml: `http:\n  uri: ["127.0.0.1", ${port}]\n`, waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  assert.equal(await m.exited, 3);
  assert.match(m.output(), /http\.enabled/);
});

test("/metrics counts connections, channels, stored messages and bytes, messages in and out, replays, peers and malformed ZeroMQ messages", async (t) => {
  const m = await monitor(t, { extraYaml: "http:\n  enabled: true\n" });
  const before = await metrics(m.wsPort);
  assert.equal(metric(before, "recodex_monitor_zeromq_peers"), 0);
  assert.equal(metric(before, "recodex_monitor_connections"), 0);
  assert.equal(metric(before, "recodex_monitor_ready"), 1);

  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const live = await Browser.open(m.wsPort, "job_m");
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
  await waitUntil(() => (m.output().match(/ZeroMQ message skipped/g) ?? []).length >= 3, "three 'ZeroMQ message skipped' warnings");
  // A late subscriber gets the two messages from history.
  const late = await Browser.open(m.wsPort, "job_m");
  t.after(() => late.close());
  assert.deepEqual(await late.waitMessages(2), [DOWNLOADED, TASK]);

  const got = await metrics(m.wsPort);
  const bytes = DOWNLOADED.length + TASK.length;
  assert.equal(metric(got, "recodex_monitor_zeromq_peers"), 1);
  assert.equal(metric(got, "recodex_monitor_connections"), 2);
  assert.equal(metric(got, "recodex_monitor_channels"), 1);
  assert.equal(metric(got, "recodex_monitor_stored_messages"), 2);
  assert.equal(metric(got, "recodex_monitor_stored_bytes"), bytes);
  assert.equal(metric(got, "recodex_monitor_messages_in_total"), 2);
  assert.equal(metric(got, "recodex_monitor_messages_out_total"), 4);
  assert.equal(metric(got, "recodex_monitor_messages_out_bytes_total"), 2 * bytes);
  assert.equal(metric(got, "recodex_monitor_subscriptions_total"), 2);
  assert.equal(metric(got, "recodex_monitor_replays_total"), 2);
  assert.equal(metric(got, "recodex_monitor_replayed_messages_total"), 2);
  assert.equal(metric(got, "recodex_monitor_malformed_zeromq_messages_total"), 3);

  // FINISHED closes both, a message after it is late; counters only grow.
  await broker.send("job_m", "FINISHED");
  await live.waitClose();
  await late.waitClose();
  await broker.send("job_m", "UPLOADED");
  await waitUntil(async () => metric(await metrics(m.wsPort), "recodex_monitor_late_messages_total") === 1, "late_messages_total 1");
  const after = await metrics(m.wsPort);
  assert.equal(metric(after, "recodex_monitor_connections"), 0);
  assert.equal(metric(after, "recodex_monitor_messages_in_total"), 3);
  assert.equal(metric(after, "recodex_monitor_messages_out_total"), 6);
  assert.equal(metric(after, "recodex_monitor_stored_messages"), 3);
  assert.equal(metric(after, "recodex_monitor_malformed_zeromq_messages_total"), 3);

  broker.close();
  await waitUntil(async () => metric(await metrics(m.wsPort), "recodex_monitor_zeromq_peers") === 0, "zeromq_peers back to 0");
});

test("/metrics counts evictions at retention.max_channels, idle expiry, and finished channels dropped", async (t) => {
  const m = await monitor(t, {
    extraYaml: "http:\n  enabled: true\nretention:\n  max_channels: 2\n  idle_ttl: 60\n  finished_ttl: 0.2\n",
  });
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const first = await Browser.open(m.wsPort, "e1");
  t.after(() => first.close());
  await waitUntil(async () => metric(await metrics(m.wsPort), "recodex_monitor_channels") === 1, "channel e1 kept");
  await broker.send("e2", "DOWNLOADED");
  await broker.send("e3", "DOWNLOADED");
  assert.equal((await first.waitClose()).code, 4001, "the evicted channel's subscriber is told why");
  let got = await metrics(m.wsPort);
  assert.equal(metric(got, "recodex_monitor_channels_evicted_total"), 1);
  assert.equal(metric(got, "recodex_monitor_channels"), 2);

  await broker.send("e3", "FINISHED");
  await waitUntil(
    async () => metric(await metrics(m.wsPort), "recodex_monitor_channels_finished_total") === 1,
    "channels_finished_total 1 after finished_ttl",
  );
  got = await metrics(m.wsPort);
  assert.equal(metric(got, "recodex_monitor_channels"), 1);
  assert.equal(metric(got, "recodex_monitor_channels_expired_total"), 0);
});

test("/metrics counts channels expired after retention.idle_ttl; their subscribers are closed with 4000", async (t) => {
  const m = await monitor(t, { extraYaml: "http:\n  enabled: true\nretention:\n  idle_ttl: 0.3\n" });
  const b = await Browser.open(m.wsPort, "idle_job");
  t.after(() => b.close());
  assert.equal((await b.waitClose(5000)).code, 4000);
  const got = await metrics(m.wsPort);
  assert.equal(metric(got, "recodex_monitor_channels_expired_total"), 1);
  assert.equal(metric(got, "recodex_monitor_channels"), 0);
});

test("/metrics counts subscribe timeouts and keepalive (ping) timeouts", async (t) => {
  const m = await monitor(t, {
    extraYaml: "http:\n  enabled: true\nlimits:\n  subscribe_timeout: 0.3\nkeepalive:\n  interval: 0.2\n",
  });
  const silent = new Browser(`ws://127.0.0.1:${m.wsPort}/`);
  t.after(() => silent.close());
  await silent.opened;
  assert.equal((await silent.waitClose()).code, 4002);

  // A client that subscribes but never answers a ping is cut off.
  const raw = await rawWebSocket(m.wsPort);
  t.after(() => raw.socket.destroy());
  raw.send("ping_job");
  raw.socket.resume(); // read (and ignore) the pings, answer nothing
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("not disconnected for a missing pong")), 5000);
    raw.socket.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  const got = await metrics(m.wsPort);
  assert.equal(metric(got, "recodex_monitor_subscribe_timeouts_total"), 1);
  assert.equal(metric(got, "recodex_monitor_ping_timeout_disconnects_total"), 1);
  assert.match(m.output(), /did not answer a keepalive ping: disconnected/);
});

test("/metrics counts slow-client disconnects: a client that stops reading is dropped at limits.max_buffered_bytes", async (t) => {
  const m = await monitor(t, {
    extraYaml:
      "http:\n  enabled: true\nlogger:\n  file: \"-\"\n  level: info\n" +
      "retention:\n  max_bytes_per_channel: 65536\nlimits:\n  max_buffered_bytes: 65536\n",
  });
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const raw = await rawWebSocket(m.wsPort);
  t.after(() => raw.socket.destroy());
  raw.send("slow_job"); // and never read
  const reader = await Browser.open(m.wsPort, "slow_job");
  t.after(() => reader.close());
  await waitUntil(async () => metric(await metrics(m.wsPort), "recodex_monitor_subscriptions_total") === 2, "two subscriptions");
  // Paced: a few KB per event-loop turn, so only a client that does not read piles up data.
  const big = "x".repeat(1000);
  let sent = 0;
  while (!/fell behind/.test(m.output()) && sent < 40_000) {
    for (let i = 0; i < 4; i++) await broker.send("slow_job", "TASK", `t${sent++}`, big);
    await delay(1);
  }
  await waitUntil(() => /fell behind/.test(m.output()), "a 'fell behind' warning", 10_000);
  await delay(100);
  const got = await metrics(m.wsPort);
  assert.equal(metric(got, "recodex_monitor_slow_client_disconnects_total"), 1);
  assert.equal(reader.closed, null, "the client that reads is not dropped");
  await reader.waitMessages(sent, 20_000);
});

test("a client that reads is not dropped as slow when the broker sends a burst larger than limits.max_buffered_bytes", async (t) => {
  const m = await monitor(t, {
    extraYaml:
      "logger:\n  file: \"-\"\n  level: info\n" +
      "retention:\n  max_bytes_per_channel: 65536\nlimits:\n  max_buffered_bytes: 65536\n",
  });
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const reader = await Browser.open(m.wsPort, "burst_job");
  t.after(() => reader.close());
  await waitUntil(() => /subscribed to channel burst_job/.test(m.output()), "the subscription");
  // 200 KB in 200 messages, sent back to back: the reader reads all the time.
  const big = "x".repeat(1000);
  await Promise.all(Array.from({ length: 200 }, (_, i) => broker.send("burst_job", "TASK", `t${i}`, big)));
  await broker.send("burst_job", "FINISHED");
  const close = await reader.waitClose(10_000);
  assert.equal(close.code, 1000, `closed with ${close.code} (${close.reason}) after ${reader.messages.length}/201 messages`);
  assert.equal(reader.messages.length, 201);
});

test("/readyz answers 503 and recodex_monitor_ready is 0 while the monitor drains its clients on SIGTERM", async (t) => {
  const port = await freePort();
  const m = await monitor(t, {
    extraYaml: `http:\n  enabled: true\n  uri: ["127.0.0.1", ${port}]\nlimits:\n  drain_timeout: 3\n`,
  });
  // This client never answers the closing handshake, so the drain lasts drain_timeout.
  const raw = await rawWebSocket(m.wsPort);
  t.after(() => raw.socket.destroy());
  raw.send("drain_job");
  await waitUntil(() => /subscribed to channel drain_job/.test(m.output()), "the subscription");
  assert.equal((await httpGet(port, "/readyz")).status, 200);
  m.child.kill("SIGTERM");
  await waitUntil(() => /stopping: SIGTERM received/.test(m.output()), "the stopping line");
  const r = await httpGet(port, "/readyz");
  assert.equal(r.status, 503);
  assert.equal(r.body, "draining\n");
  assert.equal(metric(await metrics(port), "recodex_monitor_ready"), 0);
  const timer = setTimeout(() => m.child.kill("SIGKILL"), 10_000);
  assert.equal(await m.exited, 0);
  clearTimeout(timer);
});

test("SIGHUP applies a new logger.level and limits, and names each change in 'configuration reloaded'", async (t) => {
  const m = await monitor(t);
  const probe = await Browser.open(m.wsPort);
  t.after(() => probe.close());
  await waitUntil(() => /\[DEBUG\] client #1 connected/.test(m.output()), "a debug line before the reload");
  editConfig(m, (text) => text.replace("level: debug", "level: info") + "limits:\n  subscribe_timeout: 0.3\n");
  const line = await reload(m);
  assert.match(line, /configuration reloaded: /);
  assert.match(line, /logger\.level: "debug" -> "info"/);
  assert.match(line, /limits\.subscribe_timeout: 10 -> 0\.3/);
  assert.doesNotMatch(line, /retention\./, "unchanged keys are not listed");

  const mark = m.output().length;
  const b = new Browser(`ws://127.0.0.1:${m.wsPort}/`);
  t.after(() => b.close());
  await b.opened;
  assert.equal((await b.waitClose(3000)).code, 4002, "the new subscribe_timeout applies to new clients");
  await delay(200);
  assert.match(m.output().slice(mark), /\[INFO\] client #\d+ .*sent no channel id within 0\.3 s/);
  assert.doesNotMatch(m.output().slice(mark), /\[DEBUG\]/, "debug lines stop");
});

test("SIGHUP that raises logger.level to warning still logs which keys changed", async (t) => {
  const m = await monitor(t);
  editConfig(m, (text) => text.replace("level: debug", "level: warning") + "limits:\n  subscribe_timeout: 0.3\n");
  const mark = m.output().length;
  m.child.kill("SIGHUP");
  await waitUntil(
    () => /configuration reloaded: .*logger\.level: "debug" -> "warning"/.test(m.output().slice(mark)),
    () => `a 'configuration reloaded' line naming logger.level; output since SIGHUP:\n${m.output().slice(mark)}`,
    3000,
  );
  assert.match(m.output().slice(mark), /limits\.subscribe_timeout: 10 -> 0\.3/);
  const b = new Browser(`ws://127.0.0.1:${m.wsPort}/`);
  t.after(() => b.close());
  await b.opened;
  assert.equal((await b.waitClose(3000)).code, 4002);
  assert.doesNotMatch(m.output().slice(mark), /\[DEBUG\]|\[INFO\] client/, "debug and info lines stop");
});

test("SIGHUP reports keys that need a restart and keeps their running values", async (t) => {
  const m = await monitor(t);
  const other = await freePort();
  editConfig(m, (text) => text.replace(`"127.0.0.1", ${m.wsPort}]`, `"127.0.0.1", ${other}]`) + "websocket:\n  resumable: false\n");
  const line = await reload(m);
  assert.match(line, /websocket_uri changed but needs a restart: kept the running value/);
  assert.match(line, /websocket\.resumable changed but needs a restart/);
  const b = await Browser.open(m.wsPort, "still_here");
  t.after(() => b.close());
  assert.equal(b.ws.readyState, b.ws.OPEN);
});

test("SIGHUP with no change logs 'configuration reloaded: nothing changed'", async (t) => {
  const m = await monitor(t);
  assert.match(await reload(m), /configuration reloaded: nothing changed/);
});

for (const [what, bad, expect] of [
  ["invalid YAML", "limits: [\n", /not valid YAML/],
  ["an invalid value", "limits:\n  subscribe_timeout: -1\n", /limits\.subscribe_timeout/],
] as const) {
  test(`SIGHUP with ${what} in the config keeps the running configuration and logs an error`, async (t) => {
    const m = await monitor(t, { extraYaml: "limits:\n  subscribe_timeout: 0.4\n" });
    editConfig(m, (text) => text.replace("level: debug", "level: critical").replace("limits:\n  subscribe_timeout: 0.4\n", bad));
    const line = await reload(m);
    assert.match(line, /\[ERROR\] configuration not reloaded, keeping the running one: /);
    assert.match(line, expect);
    const mark = m.output().length;
    const b = new Browser(`ws://127.0.0.1:${m.wsPort}/`);
    t.after(() => b.close());
    await b.opened;
    assert.equal((await b.waitClose(3000)).code, 4002, "the running subscribe_timeout (0.4 s) still applies");
    await waitUntil(() => /\[DEBUG\]/.test(m.output().slice(mark)), "debug lines (level kept at debug)");
    assert.equal(m.child.exitCode, null);
  });
}

test("SIGHUP applies a new limits.max_client_message to new connections", async (t) => {
  const m = await monitor(t, { extraYaml: "limits:\n  max_client_message: 1024\n  max_channel_id_length: 65536\n" });
  const before = await Browser.open(m.wsPort, "x".repeat(2000));
  assert.equal((await before.waitClose()).code, 1009);
  editConfig(m, (text) => text.replace("max_client_message: 1024", "max_client_message: 4096"));
  assert.match(await reload(m), /limits\.max_client_message: 1024 -> 4096/);
  const after = await Browser.open(m.wsPort, "x".repeat(2000));
  t.after(() => after.close());
  await m.waitFor(/subscribed to channel x{2000}/);
  assert.equal(after.closed, null);
});
