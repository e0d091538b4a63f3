// The whole relay, end to end: retention over time and at the caps, a long ordered stream,
// slow and silent clients. Each test runs its own monitor with small limits.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { Broker, Browser, count, delay, startMonitor, waitUntil, type MonitorProcess } from "./helpers.ts";

interface Rig {
  mon: MonitorProcess;
  broker: Broker;
  subscribe(channel: string, options?: ConstructorParameters<typeof Browser>[2], protocol?: string): Promise<Browser>;
  /** Resolves once the monitor has handled everything the broker sent before. */
  sync(): Promise<void>;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

async function rig(t: TestContext, extraYaml: string): Promise<Rig> {
  const mon = await startMonitor({ extraYaml });
  const broker = await Broker.connect(mon.zmqPort);
  const browsers: Browser[] = [];
  t.after(async () => {
    for (const b of browsers) b.close();
    broker.close();
    await mon.stop();
  });
  const subscribe = async (channel: string, options: ConstructorParameters<typeof Browser>[2] = {}, protocol?: string) => {
    const before = count(mon.output(), new RegExp(`subscribed to channel ${escape(channel)}\\n`));
    const b = new Browser(`ws://127.0.0.1:${mon.wsPort}/`, protocol, options);
    browsers.push(b);
    await b.opened;
    b.ws.send(channel);
    await waitUntil(
      () => count(mon.output(), new RegExp(`subscribed to channel ${escape(channel)}\\n`)) > before,
      5000,
      `subscription to ${channel}`,
    );
    return b;
  };
  let syncs = 0;
  const sync = async () => {
    const channel = `sync-${++syncs}`;
    const b = await subscribe(channel);
    await broker.send(channel, "SYNC"); // one peer's messages arrive in order
    await b.waitMessages(1);
    b.close();
  };
  return { mon, broker, subscribe, sync };
}

const cmd = (c: string) => `{"command": "${c}"}`;
const task = (id: string, state: string) => `{"command": "TASK", "task_id": "${id}", "task_state": "${state}"}`;

test("a finished channel is dropped finished_ttl after FINISHED; a later subscriber gets nothing of it", async (t) => {
  const { mon, broker, subscribe } = await rig(t, "retention:\n  finished_ttl: 1\n");
  const live = await subscribe("job");
  await broker.send("job", "STARTED");
  const finishedAt = Date.now(); // the monitor takes FINISHED after this
  await broker.send("job", "FINISHED");
  assert.equal((await live.waitClose()).code, 1000);

  const early = await subscribe("job");
  assert.equal((await early.waitClose()).code, 1000, "within finished_ttl the history is still there");
  assert.deepEqual(early.messages, [cmd("STARTED"), cmd("FINISHED")]);

  await mon.waitFor(/channel job dropped \(finished_ttl passed/, 5000);
  assert.ok(Date.now() - finishedAt >= 990, `dropped ${Date.now() - finishedAt} ms after FINISHED, before finished_ttl`);
  const late = await subscribe("job");
  await delay(300);
  assert.deepEqual(late.messages, []);
  assert.equal(late.closed, null, "a subscriber to a dropped channel waits for new messages");
  await broker.send("job", "DOWNLOADED");
  assert.deepEqual(await late.waitMessages(1), [cmd("DOWNLOADED")]);
});

test("a channel idle for idle_ttl is dropped and its open subscribers are closed with 4000", async (t) => {
  const { mon, broker, subscribe } = await rig(t, "retention:\n  idle_ttl: 0.3\n");
  const idle = await subscribe("quiet");
  const busy = await subscribe("busy");
  await broker.send("quiet", "STARTED");
  const started = Date.now();
  for (let i = 0; i < 8; i++) {
    await broker.send("busy", "TASK", `t${i}`, "COMPLETED");
    await delay(100);
  }
  const close = await idle.waitClose(3000);
  assert.equal(close.code, 4000);
  assert.deepEqual(idle.messages, [cmd("STARTED")]);
  assert.ok(Date.now() - started >= 250);
  assert.equal(busy.closed, null, "a channel with traffic must not expire");
  assert.equal(busy.messages.length, 8);
  assert.match(mon.output(), /channel quiet dropped \(no message for 0.3 s; 1 messages, never FINISHED\)/);
});

test("a subscriber to a channel that never gets a message is closed with 4000 after idle_ttl", async (t) => {
  const { subscribe } = await rig(t, "retention:\n  idle_ttl: 0.3\n");
  const b = await subscribe("never-appears");
  assert.equal((await b.waitClose(3000)).code, 4000);
});

test("at retention.max_channels the oldest channel is evicted and its subscribers are closed with 4001", async (t) => {
  const { mon, broker, subscribe } = await rig(t, "retention:\n  max_channels: 2\n");
  const a = await subscribe("a");
  await broker.send("a", "STARTED");
  await a.waitMessages(1);
  const b = await subscribe("b");
  await broker.send("b", "STARTED");
  await b.waitMessages(1);
  await broker.send("c", "STARTED");
  assert.equal((await a.waitClose(3000)).code, 4001);
  await mon.waitFor(/channel a dropped \(evicted at a retention cap/);
  assert.equal(b.closed, null);
  await broker.send("b", "ENDED");
  assert.deepEqual(await b.waitMessages(2), [cmd("STARTED"), cmd("ENDED")]);
});

test("at max_messages_per_channel the oldest history is dropped but FINISHED is kept; live subscribers get everything", async (t) => {
  const { broker, subscribe } = await rig(t, "retention:\n  max_messages_per_channel: 3\n");
  const live = await subscribe("long");
  for (let i = 0; i < 10; i++) await broker.send("long", "TASK", `t${i}`, "COMPLETED");
  await broker.send("long", "FINISHED");
  assert.equal((await live.waitClose()).code, 1000);
  assert.equal(live.messages.length, 11);
  assert.deepEqual(live.messages.slice(0, 2), [task("t0", "COMPLETED"), task("t1", "COMPLETED")]);
  const late = await subscribe("long");
  assert.equal((await late.waitClose()).code, 1000);
  assert.deepEqual(late.messages, [task("t8", "COMPLETED"), task("t9", "COMPLETED"), cmd("FINISHED")]);
});

test("at max_bytes_per_channel the oldest history is dropped but FINISHED is kept; live subscribers get everything", async (t) => {
  const { broker, subscribe } = await rig(t, "retention:\n  max_bytes_per_channel: 1024\n");
  const live = await subscribe("fat");
  const pad = "p".repeat(300);
  for (let i = 0; i < 10; i++) await broker.send("fat", "TASK", `t${i}`, pad);
  await broker.send("fat", "FINISHED");
  assert.equal((await live.waitClose()).code, 1000);
  assert.equal(live.messages.length, 11);
  const late = await subscribe("fat");
  assert.equal((await late.waitClose()).code, 1000);
  const bytes = late.messages.reduce((n, m) => n + Buffer.byteLength(m), 0);
  assert.ok(bytes <= 1024, `replayed ${bytes} bytes`);
  assert.equal(late.messages.at(-1), cmd("FINISHED"));
  assert.deepEqual(late.messages.slice(0, -1), live.messages.slice(10 - (late.messages.length - 1), 10), "the newest messages are kept, in order");
  assert.ok(late.messages.length >= 3);
});

test("above max_total_bytes the oldest channel is evicted (4001) and the newest kept", async (t) => {
  const { broker, subscribe } = await rig(t, "retention:\n  max_bytes_per_channel: 1024\n  max_total_bytes: 2048\n");
  const pad = "q".repeat(900);
  const a = await subscribe("A");
  await broker.send("A", "TASK", "a", pad);
  await a.waitMessages(1);
  await broker.send("B", "TASK", "b", pad);
  await broker.send("C", "TASK", "c", pad);
  assert.equal((await a.waitClose(3000)).code, 4001);
  const c = await subscribe("C");
  assert.deepEqual(await c.waitMessages(1), [task("c", pad)]);
  const again = await subscribe("A");
  await delay(200);
  assert.deepEqual(again.messages, [], "the evicted history is gone");
});

test("a channel recreated after its finished predecessor was dropped survives its own lifetime", async (t) => {
  const { mon, broker, subscribe } = await rig(t, "retention:\n  finished_ttl: 0.3\n  idle_ttl: 5\n");
  const first = await subscribe("reused");
  await broker.send("reused", "STARTED");
  await broker.send("reused", "FINISHED");
  assert.equal((await first.waitClose()).code, 1000);
  await broker.send("reused", "FINISHED"); // late, not delivered
  await broker.send("reused", "TASK", "late", "COMPLETED");
  await mon.waitFor(/channel reused dropped \(finished_ttl passed/, 3000);

  await broker.send("reused", "DOWNLOADED");
  const second = await subscribe("reused");
  assert.deepEqual(await second.waitMessages(1), [cmd("DOWNLOADED")]);
  await delay(1000); // more than three finished_ttl
  assert.equal(second.closed, null, "the new channel was dropped by the old one's timer");
  assert.equal(count(mon.output(), /channel reused dropped/), 1);
  await broker.send("reused", "STARTED");
  await broker.send("reused", "FINISHED");
  assert.equal((await second.waitClose()).code, 1000);
  assert.deepEqual(second.messages, [cmd("DOWNLOADED"), cmd("STARTED"), cmd("FINISHED")]);
  const third = await subscribe("reused");
  assert.equal((await third.waitClose()).code, 1000);
  assert.deepEqual(third.messages, [cmd("DOWNLOADED"), cmd("STARTED"), cmd("FINISHED")]);
});

test("a 10,000-message stream reaches several clients complete and in order, joiners mid-stream included", async (t) => {
  const { broker, subscribe } = await rig(t, "");
  const N = 10_000;
  const clients = await Promise.all([subscribe("stream"), subscribe("stream"), subscribe("stream")]);
  const expected = Array.from({ length: N }, (_, i) => task(`t${i}`, "COMPLETED"));
  let joiner: Promise<Browser> | null = null;
  for (let i = 0; i < N; i++) {
    await broker.send("stream", "TASK", `t${i}`, "COMPLETED");
    if (i === N / 2) joiner = subscribe("stream");
  }
  for (const c of [...clients, await joiner!]) {
    const got = await c.waitMessages(N, 30_000);
    assert.equal(got.length, N);
    for (let i = 0; i < N; i++) if (got[i] !== expected[i]) assert.fail(`message ${i} is ${got[i]}, expected ${expected[i]}`);
    assert.equal(c.closed, null);
  }
});

const SMALL_BUFFER = "limits:\n  max_buffered_bytes: 65536\nretention:\n  max_bytes_per_channel: 65536\n";

type RawSocket = { pause(): void; resume(): void };
const rawSocket = (b: Browser) => (b.ws as unknown as { _socket: RawSocket })._socket;

const pad = "s".repeat(4000);

/**
 * Sends n TASK messages with a 4 KB state, pausing briefly every `every` messages like a
 * busy broker. Stops quietly (returning how many went out) once the broker is closed.
 */
async function flood(broker: Broker, channel: string, n: number, every: number): Promise<number> {
  for (let i = 0; i < n; i++) {
    try {
      await broker.send(channel, "TASK", `t${i}`, pad);
    } catch {
      return i;
    }
    if (every > 0 && i % every === every - 1) await delay(1);
  }
  return n;
}

test("a client that stops reading is disconnected with 4003 while a normal client on the same channel gets everything", async (t) => {
  const { mon, broker, subscribe } = await rig(t, SMALL_BUFFER);
  const normal = await subscribe("flood");
  const slow = await subscribe("flood");
  rawSocket(slow).pause();
  const N = 5000; // 20 MB: far more than the socket buffers can hide
  const sending = flood(broker, "flood", N, 10);
  await mon.waitFor(/fell behind/, 10_000);
  rawSocket(slow).resume(); // read the backlog, then the close frame
  assert.equal(await sending, N);
  await broker.send("flood", "FINISHED");
  assert.equal((await slow.waitClose(5000)).code, 4003);
  assert.ok(slow.messages.length < N, "the slow client was cut off");
  assert.equal((await normal.waitClose(30_000)).code, 1000, "the normal client must stay until FINISHED");
  assert.equal(normal.messages.length, N + 1);
  for (let i = 0; i < N; i++) assert.equal(normal.messages[i], task(`t${i}`, pad));
  assert.equal(count(mon.output(), /fell behind/), 1, "only the slow client fell behind");
});

test("a burst from the broker larger than limits.max_buffered_bytes does not disconnect a client that keeps up", async (t) => {
  const { mon, broker, subscribe } = await rig(t, SMALL_BUFFER);
  const client = await subscribe("burst");
  const N = 2000; // 8 MB sent as fast as ZeroMQ takes it
  assert.equal(await flood(broker, "burst", N, 0), N);
  await broker.send("burst", "FINISHED");
  const close = await client.waitClose(30_000);
  assert.equal(close.code, 1000, `closed with ${close.code} after ${client.messages.length} messages; log: ${mon.output().split("\n").find((l) => /fell behind/.test(l))}`);
  assert.equal(client.messages.length, N + 1);
  assert.equal(client.messages[N - 1], task(`t${N - 1}`, pad));
});

test("a client that stops reading is disconnected with 4003 and the relay goes on for others", async (t) => {
  const { mon, broker, subscribe } = await rig(t, SMALL_BUFFER);
  const slow = await subscribe("stuck");
  rawSocket(slow).pause();
  const sending = flood(broker, "stuck", 5000, 10);
  await mon.waitFor(/client #\d+ \(127\.0\.0\.1\) on channel stuck fell behind: \d+ bytes .*> limits.max_buffered_bytes 65536/, 10_000);
  rawSocket(slow).resume();
  assert.equal((await slow.waitClose(5000)).code, 4003);
  await sending;
  const fresh = await subscribe("after-slow");
  await broker.send("after-slow", "STARTED");
  assert.deepEqual(await fresh.waitMessages(1), [cmd("STARTED")]);
});

test("a client that does not answer keepalive pings is dropped; a normal one stays", async (t) => {
  const { mon, broker, subscribe } = await rig(t, "keepalive:\n  interval: 0.2\n");
  const silent = await subscribe("ka", { autoPong: false });
  const normal = await subscribe("ka");
  const close = await silent.waitClose(3000);
  assert.notEqual(close.code, 1000);
  await mon.waitFor(/did not answer a keepalive ping/);
  await delay(600);
  assert.equal(normal.closed, null);
  await broker.send("ka", "STARTED");
  assert.deepEqual(await normal.waitMessages(1), [cmd("STARTED")]);
});

test("a full channel history (max_bytes_per_channel = max_buffered_bytes) replays completely to a new client", async (t) => {
  const { broker, subscribe, sync } = await rig(t, SMALL_BUFFER);
  for (let i = 0; i < 1500; i++) await broker.send("full", "TASK", `task-${i}`, "COMPLETED");
  await sync();
  const watcher = await subscribe("full");
  const kept = await watcher.waitMessages(1, 5000);
  assert.ok(kept.length >= 1);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(watcher.closed, null, `closed with ${watcher.closed?.code}`);
  const bytes = watcher.messages.reduce((n, m) => n + m.length, 0);
  assert.ok(bytes > 60_000 && bytes <= 65536, `replayed ${bytes} bytes`);
  assert.equal(watcher.messages.at(-1), task("task-1499", "COMPLETED"));
});

test("a resumable client gets a full channel history too (the offsets it adds must not overflow its buffer)", async (t) => {
  const { broker, subscribe, sync } = await rig(t, SMALL_BUFFER);
  for (let i = 0; i < 1500; i++) await broker.send("full", "TASK", `task-${i}`, "COMPLETED");
  await sync();
  const watcher = await subscribe("full", undefined, "recodex-monitor.resume.v1");
  assert.equal(watcher.ws.protocol, "recodex-monitor.resume.v1");
  await watcher.waitMessages(1, 5000).catch(() => {});
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(watcher.closed, null, `closed with ${watcher.closed?.code} after ${watcher.messages.length} messages`);
  assert.match(watcher.messages.at(-1) ?? "", /"offset": 1499, "message": \{"command": "TASK", "task_id": "task-1499"/);
});
