// Memory a browser can make the monitor hold: the bytes waiting in client buffers are
// bounded in total (limits.max_total_buffered_bytes; the clients furthest behind are cut with
// 4003), and a client whose backlog does not shrink is cut after limits.backlog_timeout even
// if it keeps sending pongs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RawWebSocket, RESUME } from "./helpers/browser.ts";
import { HTTP_OWN_PORT, metric, metrics } from "./helpers/http.ts";
import { relay } from "./helpers/relay.ts";
import { count, waitUntil, withTimeout } from "./helpers/wait.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** A resumable client that subscribes to `channel` and then reads nothing (see RawWebSocket). */
async function nonReader(port: number, channel: string): Promise<RawWebSocket> {
  const raw = await RawWebSocket.open(port, "/", RESUME);
  raw.sendText(channel);
  return raw;
}

test("limits.max_total_buffered_bytes: non-readers on a live channel are cut with 4003 once all buffers together pass it; a reader on another channel gets every message", async (t) => {
  const s = await relay(t, {
    extraYaml: HTTP_OWN_PORT + "retention:\n  max_bytes_per_channel: 65536\n" + `limits:\n  max_buffered_bytes: ${MiB}\n  max_total_buffered_bytes: ${2 * MiB}\n`,
  });
  const m = s.monitor;
  const reader = await s.subscribe("quiet_channel");
  await s.broker.send("live_channel", "STARTED");
  const attackers: RawWebSocket[] = [];
  t.after(() => attackers.forEach((a) => a.destroy()));
  // Resumable clients: each one's frames carry its own offsets, so nothing is shared.
  for (let i = 0; i < 6; i++) attackers.push(await nonReader(m.wsPort, "live_channel"));
  await waitUntil(() => count(m.output(), /subscribed to channel live_channel/) === 6, "6 subscriptions");

  const payload = "x".repeat(40 * KiB);
  let sent = 0;
  let peak = 0;
  let cut = 0;
  let slow = 0;
  // Pump until every attacker is cut (the kernel takes a few MB per socket first); at most 4,000 messages.
  while (sent < 4000) {
    await s.broker.send("live_channel", "TASK", `t${sent}`, payload);
    sent++;
    if (sent % 50 === 0) {
      const now = await metrics(m.httpPort);
      peak = Math.max(peak, now.value("recodex_monitor_buffered_bytes"));
      cut = now.value("recodex_monitor_buffer_limit_disconnects_total");
      slow = now.value("recodex_monitor_slow_client_disconnects_total");
      if (cut + slow >= 6) break;
    }
  }
  // All six grow alike, so the total (2 MiB) is reached long before one client's 1 MiB: the
  // first cuts are at the total bound; the last two or so may meet their own bound.
  assert.ok(cut >= 2 && cut + slow >= 6, `after ${sent} messages: ${cut} cut at the total bound, ${slow} at their own (peak ${peak} bytes buffered)`);
  // Cut clients keep what they hold until their grace ends or the next check drops them:
  // below twice the bound, plus what one turn writes (a few 40 KiB messages to 6 clients).
  assert.ok(peak <= 2 * 2 * MiB + 2 * MiB, `buffered bytes stayed within twice the bound plus a turn: peak ${peak}`);
  await m.waitFor(/limits\.max_total_buffered_bytes/);
  await s.broker.send("quiet_channel", "FINISHED");
  assert.deepEqual(await reader.waitMessages(1), ['{"command": "FINISHED"}']);
  t.diagnostic(`${sent} messages of 40 KiB to 6 non-readers: ${cut} cut at the total bound, ${slow} at their own, peak ${peak} bytes buffered`);
});

test("limits.backlog_timeout: a client that stops reading but keeps sending pongs is cut with 4003", async (t) => {
  const s = await relay(t, {
    extraYaml: HTTP_OWN_PORT + "retention:\n  max_bytes_per_channel: 65536\nlimits:\n  backlog_timeout: 1\nkeepalive:\n  interval: 0.3\n",
  });
  const m = s.monitor;
  await s.broker.send("stall_channel", "STARTED");
  const stalled = await nonReader(m.wsPort, "stall_channel");
  t.after(() => stalled.destroy());
  // Unsolicited pongs, the attacker's own rhythm, keep the keepalive satisfied while nothing is read.
  const pongs = setInterval(() => stalled.sendFrame(0xa, Buffer.alloc(0)), 100);
  t.after(() => clearInterval(pongs));
  await m.waitFor(/subscribed to channel stall_channel/);
  const payload = "y".repeat(40 * KiB);
  // Enough to fill the kernel's buffers for the socket (a few MB on loopback) and leave a backlog.
  let sent = 0;
  while ((await metric(m.httpPort, "recodex_monitor_buffered_bytes")) === 0 && sent < 600) {
    for (let i = 0; i < 20; i++) await s.broker.send("stall_channel", "TASK", `t${sent++}`, payload);
  }
  await withTimeout(stalled.ended, "the monitor to cut the stalled client");
  await m.waitFor(/took none of its \d+-byte backlog for 1 s \(limits\.backlog_timeout\)/);
  await waitUntil(async () => (await metric(m.httpPort, "recodex_monitor_stalled_client_disconnects_total")) === 1, "the stalled-client counter");
  assert.doesNotMatch(m.output(), /did not answer a keepalive ping/, "it answered every ping");
});

test("resumable clients sharing a large message's bytes each get it whole, with their own offset, byte for byte", async (t) => {
  const s = await relay(t);
  const clients = [];
  for (let i = 0; i < 3; i++) clients.push(await s.subscribe("shared_big", { protocols: RESUME }));
  const big = "b".repeat(100 * KiB);
  await s.broker.send("shared_big", "TASK", "t1", big);
  await s.broker.send("shared_big", "TASK", "t2", "small");
  for (const c of clients) {
    const [first, second] = await c.waitMessages(2);
    assert.equal(first, `{"offset": ${JSON.parse(first).offset}, "message": {"command": "TASK", "task_id": "t1", "task_state": "${big}"}}`);
    assert.equal(JSON.parse(second).offset, JSON.parse(first).offset + 1);
    assert.equal(second, `{"offset": ${JSON.parse(second).offset}, "message": {"command": "TASK", "task_id": "t2", "task_state": "small"}}`);
  }
});
