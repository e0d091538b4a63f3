// The whole relay, end to end: retention over time and at the caps, a long ordered stream,
// slow and silent clients. Each test runs its own monitor with small limits.
import { test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { RESUME, type Browser } from "./helpers/browser.ts";
import type { Broker } from "./helpers/broker.ts";
import { relay } from "./helpers/relay.ts";
import { count } from "./helpers/wait.ts";

const cmd = (c: string) => `{"command": "${c}"}`;
const task = (id: string, state: string) => `{"command": "TASK", "task_id": "${id}", "task_state": "${state}"}`;

test("a finished channel is dropped finished_ttl after FINISHED; a later subscriber gets nothing of it", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  finished_ttl: 2\n" });
  const live = await s.subscribe("job");
  await s.broker.send("job", "STARTED");
  const finishedAt = Date.now(); // the monitor takes FINISHED after this
  await s.broker.send("job", "FINISHED");
  assert.equal((await live.waitClose()).code, 1000);

  const early = await s.subscribe("job");
  assert.equal((await early.waitClose()).code, 1000, "within finished_ttl the history is still there");
  assert.deepEqual(early.messages, [cmd("STARTED"), cmd("FINISHED")]);

  await s.monitor.waitFor(/channel job dropped \(finished_ttl passed/);
  assert.ok(Date.now() - finishedAt >= 1990, `dropped ${Date.now() - finishedAt} ms after FINISHED, before finished_ttl`);
  const late = await s.subscribe("job");
  await s.broker.send("job", "DOWNLOADED");
  assert.deepEqual(await late.waitMessages(1), [cmd("DOWNLOADED")], "a subscriber to a dropped channel gets no history and waits for new messages");
});

test("a channel idle for idle_ttl is dropped and its open subscribers are closed with 4000", async (t) => {
  // 1 s: far above any pause between two messages of the busy channel, even on a loaded machine.
  const s = await relay(t, { extraYaml: "retention:\n  idle_ttl: 1\n" });
  const idle = await s.subscribe("quiet");
  const busy = await s.subscribe("busy");
  const started = Date.now();
  await s.broker.send("quiet", "STARTED");
  // Traffic on "busy", each message once the last has been delivered, until "quiet" is gone.
  let sent = 0;
  while (idle.closed === null && sent < 100_000) {
    await s.broker.send("busy", "TASK", `t${sent}`, "COMPLETED");
    await busy.waitMessages(++sent);
  }
  const close = await idle.waitClose();
  assert.equal(close.code, 4000);
  assert.deepEqual(idle.messages, [cmd("STARTED")]);
  assert.ok(Date.now() - started >= 990, `closed ${Date.now() - started} ms after its last message`);
  assert.equal(busy.closed, null, "a channel with traffic must not expire");
  assert.equal(busy.messages.length, sent);
  await s.monitor.waitFor(/channel quiet dropped \(no message for 1 s; 1 messages, never FINISHED\)/);
});

test("a subscriber to a channel that never gets a message is closed with 4000 after idle_ttl", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  idle_ttl: 0.3\n" });
  const b = await s.subscribe("never-appears");
  assert.equal((await b.waitClose()).code, 4000);
});

test("at retention.max_channels the oldest channel is evicted and its subscribers are closed with 4001", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  max_channels: 2\n" });
  const a = await s.subscribe("a");
  await s.broker.send("a", "STARTED");
  await a.waitMessages(1);
  const b = await s.subscribe("b");
  await s.broker.send("b", "STARTED");
  await b.waitMessages(1);
  await s.broker.send("c", "STARTED");
  assert.equal((await a.waitClose()).code, 4001);
  await s.monitor.waitFor(/channel a dropped \(evicted at a retention cap/);
  assert.equal(b.closed, null);
  await s.broker.send("b", "ENDED");
  assert.deepEqual(await b.waitMessages(2), [cmd("STARTED"), cmd("ENDED")]);
});

test("at max_messages_per_channel the oldest history is dropped but FINISHED is kept; live subscribers get everything", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  max_messages_per_channel: 3\n" });
  const live = await s.subscribe("long");
  for (let i = 0; i < 10; i++) await s.broker.send("long", "TASK", `t${i}`, "COMPLETED");
  await s.broker.send("long", "FINISHED");
  assert.equal((await live.waitClose()).code, 1000);
  assert.equal(live.messages.length, 11);
  assert.deepEqual(live.messages.slice(0, 2), [task("t0", "COMPLETED"), task("t1", "COMPLETED")]);
  const late = await s.subscribe("long");
  assert.equal((await late.waitClose()).code, 1000);
  assert.deepEqual(late.messages, [task("t8", "COMPLETED"), task("t9", "COMPLETED"), cmd("FINISHED")]);
});

test("at max_bytes_per_channel the oldest history is dropped but FINISHED is kept; live subscribers get everything", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  max_bytes_per_channel: 1024\n" });
  const live = await s.subscribe("fat");
  const pad = "p".repeat(300);
  for (let i = 0; i < 10; i++) await s.broker.send("fat", "TASK", `t${i}`, pad);
  await s.broker.send("fat", "FINISHED");
  assert.equal((await live.waitClose()).code, 1000);
  assert.equal(live.messages.length, 11);
  const late = await s.subscribe("fat");
  assert.equal((await late.waitClose()).code, 1000);
  const bytes = late.messages.reduce((n, m) => n + Buffer.byteLength(m), 0);
  assert.ok(bytes <= 1024, `replayed ${bytes} bytes`);
  assert.equal(late.messages.at(-1), cmd("FINISHED"));
  assert.deepEqual(late.messages.slice(0, -1), live.messages.slice(10 - (late.messages.length - 1), 10), "the newest messages are kept, in order");
  assert.ok(late.messages.length >= 3);
});

test("above max_total_bytes the oldest channel is evicted (4001) and the newest kept", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  max_bytes_per_channel: 1024\n  max_total_bytes: 2048\n" });
  const pad = "q".repeat(900);
  const a = await s.subscribe("A");
  await s.broker.send("A", "TASK", "a", pad);
  await a.waitMessages(1);
  await s.broker.send("B", "TASK", "b", pad);
  await s.broker.send("C", "TASK", "c", pad);
  assert.equal((await a.waitClose()).code, 4001);
  const c = await s.subscribe("C");
  assert.deepEqual(await c.waitMessages(1), [task("c", pad)]);
  const again = await s.subscribe("A");
  assert.deepEqual(await s.beforeMarker(again, "A"), [], "the evicted history is gone");
});

test("a channel recreated after its finished predecessor was dropped survives its own lifetime", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  finished_ttl: 1\n  idle_ttl: 10\n" });
  const first = await s.subscribe("reused");
  await s.broker.send("reused", "STARTED");
  await s.broker.send("reused", "FINISHED");
  assert.equal((await first.waitClose()).code, 1000);
  await s.broker.send("reused", "FINISHED"); // late, not delivered
  await s.broker.send("reused", "TASK", "late", "COMPLETED");
  await s.monitor.waitFor(/channel reused: TASK after FINISHED not delivered/);
  await s.monitor.waitFor(/channel reused dropped \(finished_ttl passed/);

  await s.broker.send("reused", "DOWNLOADED");
  const second = await s.subscribe("reused");
  assert.deepEqual(await second.waitMessages(1), [cmd("DOWNLOADED")]);
  // What must not happen is a timer of the old channel firing: outlast them (twice finished_ttl).
  await sleep(2000);
  assert.equal(second.closed, null, "the new channel was dropped by the old one's timer");
  assert.equal(count(s.monitor.output(), /channel reused dropped/), 1);
  await s.broker.send("reused", "STARTED");
  await s.broker.send("reused", "FINISHED");
  assert.equal((await second.waitClose()).code, 1000);
  assert.deepEqual(second.messages, [cmd("DOWNLOADED"), cmd("STARTED"), cmd("FINISHED")]);
  const third = await s.subscribe("reused");
  assert.equal((await third.waitClose()).code, 1000);
  assert.deepEqual(third.messages, [cmd("DOWNLOADED"), cmd("STARTED"), cmd("FINISHED")]);
});

test("a 10,000-message stream reaches several clients complete and in order, joiners mid-stream included", async (t) => {
  const s = await relay(t);
  const N = 10_000;
  const clients = await Promise.all([s.subscribe("stream"), s.subscribe("stream"), s.subscribe("stream")]);
  const expected = Array.from({ length: N }, (_, i) => task(`t${i}`, "COMPLETED"));
  let joiner: Promise<Browser> | null = null;
  for (let i = 0; i < N; i++) {
    await s.broker.send("stream", "TASK", `t${i}`, "COMPLETED");
    if (i === N / 2) joiner = s.subscribe("stream");
  }
  for (const c of [...clients, await joiner!]) {
    const got = await c.waitMessages(N, 30_000);
    assert.equal(got.length, N);
    for (let i = 0; i < N; i++) if (got[i] !== expected[i]) assert.fail(`message ${i} is ${got[i]}, expected ${expected[i]}`);
    assert.equal(c.closed, null);
  }
});

const SMALL_BUFFER = "limits:\n  max_buffered_bytes: 65536\nretention:\n  max_bytes_per_channel: 65536\n";

const pad = "s".repeat(4000);

/**
 * Sends n TASK messages with a 4 KB state. With a `reader`, never more than 8 messages
 * (32 KB, half of max_buffered_bytes) ahead of what it has received: the broker and that
 * browser share this process, and the reader must be one that keeps up whatever the load.
 * Stops quietly (returning how many went out) once the broker is closed.
 */
async function flood(broker: Broker, channel: string, n: number, reader?: Browser): Promise<number> {
  for (let i = 0; i < n; i++) {
    if (reader !== undefined && i > 8) await reader.waitMessages(i - 8, 30_000);
    try {
      await broker.send(channel, "TASK", `t${i}`, pad);
    } catch {
      return i;
    }
  }
  return n;
}

test("a client that stops reading is disconnected with 4003 while a normal client on the same channel gets everything", async (t) => {
  const s = await relay(t, { extraYaml: SMALL_BUFFER });
  const normal = await s.subscribe("flood");
  const slow = await s.subscribe("flood");
  slow.socket!.pause();
  const N = 5000; // 20 MB: far more than the socket buffers can hide
  const sending = flood(s.broker, "flood", N, normal);
  await s.monitor.waitFor(/fell behind/, { ms: 30_000 });
  slow.socket!.resume(); // read the backlog, then the close frame
  assert.equal(await sending, N);
  await s.broker.send("flood", "FINISHED");
  assert.equal((await slow.waitClose()).code, 4003);
  assert.ok(slow.messages.length < N, "the slow client was cut off");
  assert.equal((await normal.waitClose(30_000)).code, 1000, "the normal client must stay until FINISHED");
  assert.equal(normal.messages.length, N + 1);
  for (let i = 0; i < N; i++) assert.equal(normal.messages[i], task(`t${i}`, pad));
  assert.equal(count(s.monitor.output(), /fell behind/), 1, "only the slow client fell behind");
});

test("a burst from the broker larger than limits.max_buffered_bytes does not disconnect a client that keeps up", async (t) => {
  const s = await relay(t, { extraYaml: SMALL_BUFFER });
  const client = await s.subscribe("burst");
  // Bursts of 96 KB (1.5 x the limit), each sent as fast as ZeroMQ takes it once the client
  // has read everything before: a client that keeps up, whatever the machine's load.
  const N = 2000;
  const BURST = 24;
  for (let i = 0; i < N; i++) {
    if (i % BURST === 0) await client.waitMessages(i, 30_000);
    await s.broker.send("burst", "TASK", `t${i}`, pad);
  }
  await s.broker.send("burst", "FINISHED");
  const close = await client.waitClose(30_000);
  assert.equal(close.code, 1000, `closed with ${close.code} after ${client.messages.length} messages; log: ${s.monitor.output().split("\n").find((l) => /fell behind/.test(l))}`);
  assert.equal(client.messages.length, N + 1);
  assert.equal(client.messages[N - 1], task(`t${N - 1}`, pad));
});

test("a client that stops reading is disconnected with 4003 and the relay goes on for others", async (t) => {
  const s = await relay(t, { extraYaml: SMALL_BUFFER });
  const slow = await s.subscribe("stuck");
  slow.socket!.pause();
  const sending = flood(s.broker, "stuck", 5000);
  await s.monitor.waitFor(/client #\d+ \(127\.0\.0\.1\) on channel stuck fell behind: \d+ bytes .*> limits.max_buffered_bytes 65536/, { ms: 30_000 });
  slow.socket!.resume();
  assert.equal((await slow.waitClose()).code, 4003);
  await sending;
  const fresh = await s.subscribe("after-slow");
  await s.broker.send("after-slow", "STARTED");
  assert.deepEqual(await fresh.waitMessages(1), [cmd("STARTED")]);
});

test("a client that does not answer keepalive pings is dropped; a normal one stays", async (t) => {
  const s = await relay(t, { extraYaml: "keepalive:\n  interval: 1\n" });
  const silent = await s.subscribe("ka", { ws: { autoPong: false } });
  const normal = await s.subscribe("ka");
  const close = await silent.waitClose();
  assert.notEqual(close.code, 1000);
  await s.monitor.waitFor(/did not answer a keepalive ping/);
  // Two more pings answered: the normal client outlived two more keepalive rounds.
  await normal.waitPings(normal.pings + 2);
  assert.equal(normal.closed, null);
  await s.broker.send("ka", "STARTED");
  assert.deepEqual(await normal.waitMessages(1), [cmd("STARTED")]);
});

/** The newest of `messages` that fit in `max` bytes: what a channel keeps at max_bytes_per_channel. */
function newestWithin(messages: string[], max: number): string[] {
  let bytes = 0;
  let first = messages.length;
  while (first > 0 && bytes + messages[first - 1].length <= max) bytes += messages[--first].length;
  return messages.slice(first);
}

const FULL = Array.from({ length: 1500 }, (_, i) => task(`task-${i}`, "COMPLETED"));

test("a full channel history (max_bytes_per_channel = max_buffered_bytes) replays completely to a new client", async (t) => {
  const s = await relay(t, { extraYaml: SMALL_BUFFER });
  const live = await s.subscribe("full");
  for (let i = 0; i < FULL.length; i++) await s.broker.send("full", "TASK", `task-${i}`, "COMPLETED");
  await live.waitMessages(FULL.length);
  const kept = newestWithin(FULL, 65536);
  assert.ok(kept.join("").length > 60_000, "the history fills max_bytes_per_channel");
  const watcher = await s.subscribe("full");
  assert.deepEqual(await s.beforeMarker(watcher, "full"), kept, "the whole kept history, in order, and the client still open");
});

test("a resumable client gets a full channel history too (the offsets it adds must not overflow its buffer)", async (t) => {
  const s = await relay(t, { extraYaml: SMALL_BUFFER });
  const live = await s.subscribe("full");
  for (let i = 0; i < FULL.length; i++) await s.broker.send("full", "TASK", `task-${i}`, "COMPLETED");
  await live.waitMessages(FULL.length);
  const kept = newestWithin(FULL, 65536);
  const watcher = await s.subscribe("full", { protocols: RESUME });
  assert.equal(watcher.ws.protocol, RESUME);
  await s.broker.send("full", "FINISHED");
  const offsets = kept.map((json, i) => `{"offset": ${FULL.length - kept.length + i}, "message": ${json}}`);
  assert.deepEqual(
    await watcher.waitMessages(kept.length + 1),
    [...offsets, `{"offset": ${FULL.length}, "message": ${cmd("FINISHED")}}`],
    `the whole kept history, then the live FINISHED (closed with ${watcher.closed?.code})`,
  );
});
