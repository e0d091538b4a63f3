// Memory a browser can make the monitor hold: the bytes waiting in client buffers are
// bounded in total (limits.max_total_buffered_bytes; the clients furthest behind are cut with
// 4003), and a client whose backlog does not shrink is cut after limits.backlog_timeout even
// if it keeps sending pongs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Broker, Browser, httpGet, waitUntil } from "./helpers.ts";
import { clientFrame, metricValue, monitorWithMetrics, nonReader, processCost, type RawSocket } from "./attack-helpers.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

async function metricsText(port: number): Promise<string> {
  return (await httpGet(port, "/metrics")).body;
}

test("limits.max_total_buffered_bytes: non-readers on a live channel are cut with 4003 once all buffers together pass it; a reader on another channel gets every message", async (t) => {
  const m = await monitorWithMetrics(
    t,
    "retention:\n  max_bytes_per_channel: 65536\n" +
      `limits:\n  max_buffered_bytes: ${MiB}\n  max_total_buffered_bytes: ${2 * MiB}\n` +
      'logger:\n  file: "-"\n  level: info\n',
  );
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const reader = await Browser.open(m.wsPort, "quiet_channel");
  t.after(() => reader.close());
  await broker.send("live_channel", "STARTED");
  const attackers: RawSocket[] = [];
  t.after(() => attackers.forEach((a) => a.destroy()));
  // Resumable clients: each one's frames carry its own offsets, so nothing is shared.
  for (let i = 0; i < 6; i++) attackers.push(await nonReader(m.wsPort, "live_channel", "recodex-monitor.resume.v1"));
  await waitUntil(() => (m.output().match(/subscribed to channel live_channel/g) ?? []).length === 6, 5000, "6 subscriptions");

  const payload = "x".repeat(40 * KiB);
  let sent = 0;
  let peak = 0;
  let lastMetrics = "";
  const cut = () => metricValue(lastMetrics, "recodex_monitor_buffer_limit_disconnects_total");
  const slow = () => metricValue(lastMetrics, "recodex_monitor_slow_client_disconnects_total");
  // Pump until every attacker is cut (the kernel takes a few MB per socket first); at most 4,000 messages.
  while (sent < 4000) {
    await broker.send("live_channel", "TASK", `t${sent}`, payload);
    sent++;
    if (sent % 50 === 0) {
      lastMetrics = await metricsText(m.httpPort);
      peak = Math.max(peak, metricValue(lastMetrics, "recodex_monitor_buffered_bytes"));
      if (cut() + slow() >= 6) break;
    }
  }
  // All six grow alike, so the total (2 MiB) is reached long before one client's 1 MiB: the
  // first cuts are at the total bound; the last two or so may meet their own bound.
  assert.ok(cut() >= 2 && cut() + slow() >= 6, `after ${sent} messages: ${cut()} cut at the total bound, ${slow()} at their own (peak ${peak} bytes buffered)`);
  // Cut clients keep what they hold until their grace ends or the next check drops them:
  // below twice the bound, plus what one turn writes (a few 40 KiB messages to 6 clients).
  assert.ok(peak <= 2 * 2 * MiB + 2 * MiB, `buffered bytes stayed within twice the bound plus a turn: peak ${peak}`);
  await m.waitFor(/limits\.max_total_buffered_bytes/);
  await broker.send("quiet_channel", "FINISHED");
  assert.deepEqual(await reader.waitMessages(1), ['{"command": "FINISHED"}']);
  const cost = processCost(m.child.pid!);
  t.diagnostic(`${sent} messages of 40 KiB to 6 non-readers: ${cut()} cut at the total bound, ${slow()} at their own, peak ${peak} bytes buffered, RSS ${cost.rssMB} MB`);
});

test("limits.backlog_timeout: a client that stops reading but keeps sending pongs is cut with 4003", async (t) => {
  const m = await monitorWithMetrics(
    t,
    "retention:\n  max_bytes_per_channel: 65536\nlimits:\n  backlog_timeout: 1\nkeepalive:\n  interval: 0.3\n" +
      'logger:\n  file: "-"\n  level: info\n',
  );
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  await broker.send("stall_channel", "STARTED");
  const stalled = await nonReader(m.wsPort, "stall_channel", "recodex-monitor.resume.v1");
  t.after(() => stalled.destroy());
  // Unsolicited pongs keep the keepalive satisfied while nothing is read.
  const pongs = setInterval(() => stalled.socket.write(clientFrame(0xa, "")), 100);
  t.after(() => clearInterval(pongs));
  await m.waitFor(/subscribed to channel stall_channel/);
  const payload = "y".repeat(40 * KiB);
  // Enough to fill the kernel's buffers for the socket (a few MB on loopback) and leave a backlog.
  let sent = 0;
  while (metricValue(await metricsText(m.httpPort), "recodex_monitor_buffered_bytes") === 0 && sent < 600) {
    for (let i = 0; i < 20; i++) await broker.send("stall_channel", "TASK", `t${sent++}`, payload);
  }
  await stalled.waitClosed(10_000, "the monitor to cut the stalled client");
  await m.waitFor(/took none of its \d+-byte backlog for 1 s \(limits\.backlog_timeout\)/, 10_000);
  await waitUntil(async () => metricValue(await metricsText(m.httpPort), "recodex_monitor_stalled_client_disconnects_total") === 1, 5000, "the stalled-client counter");
  assert.doesNotMatch(m.output(), /did not answer a keepalive ping/, "it answered every ping");
});

test("resumable clients sharing a large message's bytes each get it whole, with their own offset, byte for byte", async (t) => {
  const m = await monitorWithMetrics(t);
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const clients = await Promise.all(
    [0, 1, 2].map(async () => {
      const b = new Browser(`ws://127.0.0.1:${m.wsPort}/`, "recodex-monitor.resume.v1");
      await b.opened;
      b.ws.send("shared_big");
      t.after(() => b.close());
      return b;
    }),
  );
  await waitUntil(() => (m.output().match(/subscribed to channel shared_big/g) ?? []).length === 3, 5000, "3 subscriptions");
  const big = "b".repeat(100 * KiB);
  await broker.send("shared_big", "TASK", "t1", big);
  await broker.send("shared_big", "TASK", "t2", "small");
  for (const c of clients) {
    const [first, second] = await c.waitMessages(2);
    assert.equal(first, `{"offset": ${JSON.parse(first).offset}, "message": {"command": "TASK", "task_id": "t1", "task_state": "${big}"}}`);
    assert.equal(JSON.parse(second).offset, JSON.parse(first).offset + 1);
    assert.equal(second, `{"offset": ${JSON.parse(second).offset}, "message": {"command": "TASK", "task_id": "t2", "task_state": "small"}}`);
  }
});
