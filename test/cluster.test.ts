// Several real monitor processes sharing one real redis-server (store.kind: redis): what
// the broker sends to one node reaches browsers on every node, byte for byte and in order;
// history survives a node's kill -9 and a Redis restart; a stopped, restarted or flushed
// Redis never costs a connected subscriber a message, a duplicate or another life's
// messages, nor a subscriber that joins while messages flow a duplicate. Skipped when
// redis-server is not installed.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import type { Browser } from "./helpers/browser.ts";
import { RESUME, unwrap } from "./helpers/browser.ts";
import { httpGet, metric, waitMetric } from "./helpers/http.ts";
import { MAIN, ROOT } from "./helpers/monitor-process.ts";
import { NO_REDIS, RedisServer, redisRelay } from "./helpers/redis.ts";
import type { Relay } from "./helpers/relay.ts";
import { waitUntil } from "./helpers/wait.ts";

const options = { skip: NO_REDIS, timeout: 120_000 };
const task = (i: number) => `{"command": "TASK", "task_id": "t${i}", "task_state": "COMPLETED"}`;
const FINISHED = '{"command": "FINISHED"}';
const FAST = "    timeout: 1\n";
const DENO = join(ROOT, "node_modules", ".bin", "deno");

/** `n` monitors on `redis`, each with its broker peer (the tests send through the first). */
function nodes(t: TestContext, redis: RedisServer, n: number, redisKeys = FAST, extraYaml = ""): Promise<Relay[]> {
  return Promise.all(Array.from({ length: n }, () => redisRelay(t, redis, { redisKeys, extraYaml })));
}

/** A resumable client on `node`, subscribed to `channel` with `first` (the id or a resume request). */
function resumable(node: Relay, channel: string, first = channel): Promise<Browser> {
  return node.subscribe(channel, { protocols: RESUME, first });
}

test("messages sent to node A reach subscribers on A, B and C byte for byte and in order; a late joiner on C gets the whole history", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b, c] = await nodes(t, redis, 3);
  const watchers = [await a.subscribe("job_abc"), await b.subscribe("job_abc"), await c.subscribe("job_abc"), await resumable(c, "job_abc")];
  await a.broker.send("job_abc", "DOWNLOADED");
  await a.broker.send("job_abc", "TASK", "úkol 😀", "FAILED");
  for (let i = 0; i < 50; i++) await a.broker.send("job_abc", "TASK", `t${i}`, "COMPLETED");
  await a.broker.send("job_abc", "FINISHED");
  const expected = ['{"command": "DOWNLOADED"}', '{"command": "TASK", "task_id": "\\u00fakol \\ud83d\\ude00", "task_state": "FAILED"}', ...Array.from({ length: 50 }, (_, i) => task(i)), FINISHED];
  for (const w of watchers.slice(0, 3)) {
    assert.deepEqual(await w.waitMessages(expected.length), expected);
    assert.equal((await w.waitClose()).code, 1000);
  }
  const offsets = unwrap(await watchers[3].waitMessages(expected.length));
  assert.deepEqual(offsets.map((e) => ("message" in e ? e.message : "gap")), expected);
  const first = (offsets[0] as { offset: number }).offset;
  assert.deepEqual(offsets.map((e) => (e as { offset: number }).offset), expected.map((_, i) => first + i), "offsets are consecutive");
  const late = await c.subscribe("job_abc");
  assert.deepEqual(await late.waitMessages(expected.length), expected);
  assert.equal((await late.waitClose()).code, 1000);
});

test("kill -9 of the ingest node mid-job: B and C keep everything it appended; restarted, it continues the same channels", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b, c] = await nodes(t, redis, 3);
  const onB = await resumable(b, "job_kill");
  const onC = await c.subscribe("job_kill");
  for (let i = 0; i < 20; i++) await a.broker.send("job_kill", "TASK", `t${i}`, "COMPLETED");
  await onB.waitMessages(20);
  await onC.waitMessages(20);
  assert.equal(await a.monitor.stop("SIGKILL"), "SIGKILL");
  const a2 = await redisRelay(t, redis, { redisKeys: FAST });
  for (let i = 20; i < 30; i++) await a2.broker.send("job_kill", "TASK", `t${i}`, "COMPLETED");
  await a2.broker.send("job_kill", "FINISHED");
  const expected = [...Array.from({ length: 30 }, (_, i) => task(i)), FINISHED];
  assert.deepEqual(await onC.waitMessages(31), expected);
  const got = unwrap(await onB.waitMessages(31));
  const first = (got[0] as { offset: number }).offset;
  assert.deepEqual(got, expected.map((message, i) => ({ offset: first + i, message })), "the restarted node continued the offsets");
  const late = await a2.subscribe("job_kill");
  assert.deepEqual(await late.waitMessages(31), expected);
});

test("Redis stopped (SIGSTOP) for 5 s: connected subscribers lose nothing and see nothing twice or out of order; memory stays bounded", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b] = await nodes(t, redis, 2, `${FAST}    max_pending: 500\n`);
  const port = a.monitor.wsPort;
  const onA = await resumable(a, "job_stop");
  const onB = await resumable(b, "job_stop");
  await a.broker.send("job_stop", "DOWNLOADED");
  await onA.waitMessages(1);
  await onB.waitMessages(1);
  redis.signal("SIGSTOP");
  const stoppedAt = performance.now();
  for (let i = 0; i < 300; i++) await a.broker.send("job_stop", "TASK", `t${i}`, "COMPLETED");
  await waitMetric(port, "recodex_monitor_store_pending_messages", (v) => v === 300);
  await onA.waitMessages(301); // the ingest node's own subscribers keep receiving live
  await waitMetric(port, "recodex_monitor_store_up", (v) => v === 0);
  const ready = await httpGet(port, "/readyz");
  assert.equal(ready.status, 503, "readyz reports the Redis link");
  assert.match(ready.body, /^ready\nredis unix:\/\/\S+\/redis\.sock\?db=0 unreachable for [\d.]+ s \(.*\), 300 messages pending\n$/);
  // The 5 s that Redis stays stopped are the behaviour under test, not a wait for something.
  const rest = 5000 - (performance.now() - stoppedAt);
  if (rest > 0) await new Promise((r) => setTimeout(r, rest));
  redis.signal("SIGCONT");
  await a.broker.send("job_stop", "FINISHED");
  const expected = ['{"command": "DOWNLOADED"}', ...Array.from({ length: 300 }, (_, i) => task(i)), FINISHED];
  for (const w of [onA, onB]) {
    const got = unwrap(await w.waitMessages(302));
    const first = (got[0] as { offset: number }).offset;
    assert.deepEqual(got, expected.map((message, i) => ({ offset: first + i, message })));
    assert.equal((await w.waitClose()).code, 1000);
  }
  await waitMetric(port, "recodex_monitor_store_pending_messages", (v) => v === 0);
  assert.equal(await metric(port, "recodex_monitor_store_dropped_messages_total"), 0);
  assert.ok((await metric(port, "recodex_monitor_store_reconnects_total")) >= 1);
  assert.equal((await httpGet(port, "/readyz")).status, 200);
});

test("past store.redis.max_pending while Redis is stopped: pending stays at the bound, the rest is counted as dropped, resumable clients everywhere are told of the gap", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b] = await nodes(t, redis, 2, `${FAST}    max_pending: 100\n`);
  const port = a.monitor.wsPort;
  const onA = await resumable(a, "job_over");
  const onB = await resumable(b, "job_over");
  await a.broker.send("job_over", "DOWNLOADED");
  await onB.waitMessages(1);
  redis.signal("SIGSTOP");
  t.after(() => redis.signal("SIGCONT"));
  await waitMetric(port, "recodex_monitor_store_up", (v) => v === 0);
  for (let i = 0; i < 150; i++) await a.broker.send("job_over", "TASK", `t${i}`, "COMPLETED");
  await waitMetric(port, "recodex_monitor_store_dropped_messages_total", (v) => v === 50);
  // 100 messages and one marker standing for the 50 dropped ones.
  assert.ok((await metric(port, "recodex_monitor_store_pending_messages")) <= 101);
  assert.match(a.monitor.output(), /max_pending\): a message for channel job_over dropped/);
  redis.signal("SIGCONT");
  await waitMetric(port, "recodex_monitor_store_pending_messages", (v) => v === 0);
  await a.broker.send("job_over", "FINISHED");
  for (const w of [onA, onB]) {
    await w.waitClose();
    const got = unwrap(w.messages);
    assert.deepEqual(got.filter((e) => "message" in e).map((e) => (e as { message: string }).message), ['{"command": "DOWNLOADED"}', ...Array.from({ length: 100 }, (_, i) => task(i)), FINISHED]);
    const gaps = got.filter((e) => "gap" in e);
    assert.equal(gaps.length, 1, "told of the gap, once");
    const at = got.findIndex((e) => "gap" in e);
    assert.deepEqual(got[at + 1], { offset: (gaps[0] as { gap: number }).gap, message: FINISHED }, "right before the first message after it");
  }
});

test("Redis restarted (append-only file): history kept; subscribers connected across the restart lose nothing", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b] = await nodes(t, redis, 2);
  const onB = await b.subscribe("job_aof");
  for (let i = 0; i < 10; i++) await a.broker.send("job_aof", "TASK", `t${i}`, "COMPLETED");
  await onB.waitMessages(10);
  await redis.stop("SIGTERM");
  await waitMetric(a.monitor.wsPort, "recodex_monitor_store_up", (v) => v === 0);
  for (let i = 10; i < 20; i++) await a.broker.send("job_aof", "TASK", `t${i}`, "COMPLETED");
  await redis.launch();
  await a.broker.send("job_aof", "FINISHED");
  const expected = [...Array.from({ length: 20 }, (_, i) => task(i)), FINISHED];
  assert.deepEqual(await onB.waitMessages(21), expected);
  const late = await b.subscribe("job_aof");
  assert.deepEqual(await late.waitMessages(21), expected);
});

test("Redis flushed: resumable clients are told of the gap and never get a message of another life of the channel", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b] = await nodes(t, redis, 2);
  const onB = await resumable(b, "job_flush");
  for (let i = 0; i < 5; i++) await a.broker.send("job_flush", "TASK", `t${i}`, "COMPLETED");
  const before = unwrap(await onB.waitMessages(5));
  const lastOffset = (before[4] as { offset: number }).offset;
  redis.cli("FLUSHALL");
  await a.broker.send("job_flush", "TASK", "t5", "COMPLETED");
  const after = unwrap(await onB.waitMessages(7));
  assert.ok("gap" in after[5], `a gap notice, got ${JSON.stringify(after[5])}`);
  assert.deepEqual((after[6] as { message: string }).message, task(5));
  assert.ok((after[6] as { offset: number }).offset > lastOffset + 1, "the new life's offsets are above the old one's");
  // A client resuming with an offset of the old life is told of the gap, then gets only the new life.
  const resumed = await resumable(b, "job_flush", JSON.stringify({ channel: "job_flush", after: (before[2] as { offset: number }).offset }));
  const got = unwrap(await resumed.waitMessages(2));
  assert.ok("gap" in got[0]);
  assert.deepEqual(got[1], after[6]);
});

test("a dropped Redis connection (CLIENT KILL) mid-stream: the subscriber gets every message exactly once", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b] = await nodes(t, redis, 2);
  const onB = await b.subscribe("job_kill_conn");
  const n = 2000;
  for (let i = 0; i < n; i++) {
    await a.broker.send("job_kill_conn", "TASK", `t${i}`, "COMPLETED");
    if (i === 500 || i === 1200) redis.cli("CLIENT", "KILL", "TYPE", "normal");
  }
  await a.broker.send("job_kill_conn", "FINISHED");
  assert.deepEqual(await onB.waitMessages(n + 1), [...Array.from({ length: n }, (_, i) => task(i)), FINISHED]);
  assert.equal((await onB.waitClose()).code, 1000);
  assert.equal(onB.messages.length, n + 1, "nothing twice");
  const reconnects = (node: Relay) => metric(node.monitor.wsPort, "recodex_monitor_store_reconnects_total");
  assert.ok((await reconnects(a)) + (await reconnects(b)) >= 1);
});

test("subscribers joining on B and C while A takes in a job: each gets every message exactly once, in order", options, async (t) => {
  // A joiner's history read and its node's feed come back on two connections: whichever is
  // ahead, the history and the live messages meet without a duplicate or a hole.
  const redis = await RedisServer.start(t);
  const [a, b, c] = await nodes(t, redis, 3);
  const chunk = 25;
  const n = 40 * chunk;
  const joiners: { browser: Browser; resumable: boolean }[] = [];
  // A chunk of the job's messages, then a joiner while they are still on their way through
  // A, Redis and the feed.
  for (let j = 0; j < n / chunk; j++) {
    for (let i = j * chunk; i < (j + 1) * chunk; i++) await a.broker.send("job_joining", "TASK", `t${i}`, "COMPLETED");
    const node = j % 2 === 0 ? b : c;
    const isResumable = j % 3 === 0;
    joiners.push({ browser: await (isResumable ? resumable(node, "job_joining") : node.subscribe("job_joining")), resumable: isResumable });
  }
  await a.broker.send("job_joining", "FINISHED");
  const expected = [...Array.from({ length: n }, (_, i) => task(i)), FINISHED];
  for (const [j, { browser, resumable: isResumable }] of joiners.entries()) {
    assert.equal((await browser.waitClose()).code, 1000, `joiner ${j}`);
    if (!isResumable) {
      assert.deepEqual(browser.messages, expected, `joiner ${j}`);
      continue;
    }
    const got = unwrap(browser.messages);
    assert.deepEqual(got.map((e) => ("message" in e ? e.message : "gap")), expected, `joiner ${j}`);
    const first = (got[0] as { offset: number }).offset;
    assert.deepEqual(got.map((e) => (e as { offset: number }).offset), expected.map((_, i) => first + i), `joiner ${j}: consecutive offsets`);
  }
});

test("10,000 messages over 100 channels to 3 nodes: none lost, none reordered", options, async (t) => {
  const redis = await RedisServer.start(t);
  const all = await nodes(t, redis, 3);
  const channels = Array.from({ length: 100 }, (_, i) => `job_many_${i}`);
  const watchers: { channel: string; browser: Browser }[] = [];
  for (const [i, channel] of channels.entries()) {
    for (const node of [all[i % 3], all[(i + 1) % 3]]) watchers.push({ channel, browser: await node.subscribe(channel) });
  }
  const per = 100;
  for (let k = 0; k < per; k++) {
    for (const channel of channels) await all[0].broker.send(channel, k === per - 1 ? "FINISHED" : "TASK", ...(k === per - 1 ? [] : [`t${k}`, "COMPLETED"]));
  }
  const expected = [...Array.from({ length: per - 1 }, (_, i) => task(i)), FINISHED];
  for (const w of watchers) {
    assert.deepEqual(await w.browser.waitMessages(per, 60_000), expected, w.channel);
    assert.equal((await w.browser.waitClose()).code, 1000);
  }
});

test("retention is enforced in Redis itself: FINISHED channels and idle ones expire there with every monitor gone; per-channel caps trim the stream", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a] = await nodes(t, redis, 1, FAST, "retention:\n  finished_ttl: 1\n  idle_ttl: 2\n  max_messages_per_channel: 5\n");
  const port = a.monitor.wsPort;
  for (let i = 0; i < 12; i++) await a.broker.send("job_cap", "TASK", `t${i}`, "COMPLETED");
  await a.broker.send("job_done", "FINISHED");
  await waitMetric(port, "recodex_monitor_messages_in_total", (v) => v === 13);
  await waitMetric(port, "recodex_monitor_stored_messages", (v) => v === 6);
  assert.equal(redis.cli("XLEN", "rmon-test:s:job_cap"), "5");
  const late = await a.subscribe("job_cap");
  assert.deepEqual(await late.waitMessages(5), Array.from({ length: 5 }, (_, i) => task(i + 7)));
  late.close();
  assert.equal(await a.monitor.stop("SIGTERM"), 0);
  const ttl = (key: string) => Number(redis.cli("PTTL", key));
  assert.ok(ttl("rmon-test:m:job_done") > 0 && ttl("rmon-test:m:job_done") <= 1000, "finished_ttl");
  assert.ok(ttl("rmon-test:s:job_cap") > 1000 && ttl("rmon-test:s:job_cap") <= 2000, "idle_ttl");
  await waitUntil(() => redis.cli("EXISTS", "rmon-test:m:job_done", "rmon-test:s:job_done", "rmon-test:m:job_cap", "rmon-test:s:job_cap") === "0", "the channels to expire in Redis");
});

test("under Deno a monitor on the Redis store serves what a Node monitor took in", { ...options, skip: NO_REDIS || (existsSync(DENO) ? false : "node_modules/.bin/deno is not installed") }, async (t) => {
  const redis = await RedisServer.start(t);
  const [a] = await nodes(t, redis, 1);
  const deno = await redisRelay(t, redis, {
    redisKeys: FAST,
    command: [DENO, "run", "--allow-net", "--allow-read", "--allow-ffi", "--allow-env", "--allow-sys", "--allow-write", MAIN],
    env: { ...process.env, DENO_NO_UPDATE_CHECK: "1", DENO_NO_PROMPT: "1", NO_COLOR: "1" },
  });
  const w = await deno.subscribe("job_deno");
  await a.broker.send("job_deno", "TASK", "t0", "COMPLETED");
  await a.broker.send("job_deno", "FINISHED");
  assert.deepEqual(await w.waitMessages(2), [task(0), FINISHED]);
  assert.equal((await w.waitClose()).code, 1000);
  assert.equal(await deno.monitor.stop("SIGTERM"), 0);
});

test("a job's first messages reach legacy browsers waiting on the ingest node at once, even with Redis stopped; resumable ones once Redis has given the offsets", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b] = await nodes(t, redis, 2);
  const legacy = await a.subscribe("job_first");
  const offsets = await resumable(a, "job_first");
  const elsewhere = await b.subscribe("job_first");
  // Each node has heard from Redis that the channel has no life yet.
  await waitMetric(a.monitor.wsPort, "recodex_monitor_store_waiting_channels", (v) => v === 1);
  await waitMetric(b.monitor.wsPort, "recodex_monitor_store_waiting_channels", (v) => v === 1);
  redis.signal("SIGSTOP");
  t.after(() => redis.signal("SIGCONT"));
  await a.broker.send("job_first", "DOWNLOADED");
  await a.broker.send("job_first", "STARTED");
  assert.deepEqual(await legacy.waitMessages(2), ['{"command": "DOWNLOADED"}', '{"command": "STARTED"}']);
  assert.equal(offsets.messages.length, 0, "no offset yet");
  redis.signal("SIGCONT");
  await a.broker.send("job_first", "FINISHED");
  const got = unwrap(await offsets.waitMessages(3));
  const first = (got[0] as { offset: number }).offset;
  assert.deepEqual(got, ['{"command": "DOWNLOADED"}', '{"command": "STARTED"}', FINISHED].map((message, i) => ({ offset: first + i, message })));
  for (const w of [legacy, elsewhere]) {
    assert.deepEqual(await w.waitMessages(3), ['{"command": "DOWNLOADED"}', '{"command": "STARTED"}', FINISHED]);
    assert.equal((await w.waitClose()).code, 1000);
    assert.equal(w.messages.length, 3, "nothing twice");
  }
});

test("a resumable client that resumes on another node gets exactly what follows its offset", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b] = await nodes(t, redis, 2);
  const first = await resumable(a, "job_move");
  for (let i = 0; i < 6; i++) await a.broker.send("job_move", "TASK", `t${i}`, "COMPLETED");
  const got = unwrap(await first.waitMessages(6));
  first.close();
  const at = (got[2] as { offset: number }).offset;
  const moved = await resumable(b, "job_move", JSON.stringify({ channel: "job_move", after: at }));
  assert.deepEqual(unwrap(await moved.waitMessages(3)), got.slice(3));
  await a.broker.send("job_move", "FINISHED");
  assert.deepEqual(unwrap(await moved.waitMessages(4))[3], { offset: at + 4, message: FINISHED });
  assert.equal((await moved.waitClose()).code, 1000);
});

test("a channel idle for idle_ttl closes its subscribers on every node with 4000", options, async (t) => {
  const redis = await RedisServer.start(t);
  const [a, b] = await nodes(t, redis, 2, FAST, "retention:\n  idle_ttl: 1\n");
  await a.broker.send("job_idle", "DOWNLOADED");
  await waitMetric(a.monitor.wsPort, "recodex_monitor_messages_in_total", (v) => v === 1);
  const onB = await b.subscribe("job_idle");
  await onB.waitMessages(1);
  assert.equal((await onB.waitClose()).code, 4000);
  assert.equal(await metric(b.monitor.wsPort, "recodex_monitor_channels_expired_total"), 1);
});

test("a Redis with a password: the URL's credentials are used and never shown in the log or /readyz; over TCP too", options, async (t) => {
  const redis = await RedisServer.start(t, { tcp: true, args: ["--requirepass", "s3cret-pw"] });
  // Without the password a monitor cannot write, and says why without a secret to hide.
  const [none] = await nodes(t, redis, 1);
  let refused = "";
  await waitUntil(async () => /NOAUTH/.test((refused = (await httpGet(none.monitor.wsPort, "/readyz")).body)), () => `/readyz to say NOAUTH: ${refused}`);
  assert.match(refused, /^ready\nredis unix:\/\/\S+ unreachable for [\d.]+ s \(NOAUTH .*\), 0 messages pending\n$/);
  for (const url of [`unix://:s3cret-pw@${redis.socket}?db=0`, redis.tcpUrl(":s3cret-pw")]) {
    const good = await redisRelay(t, redis, { url });
    await waitMetric(good.monitor.wsPort, "recodex_monitor_store_up", (v) => v === 1);
    const ready = await httpGet(good.monitor.wsPort, "/readyz");
    assert.equal(ready.status, 200);
    assert.match(ready.body, /^ready\nredis (unix|redis):\/\/:\*\*\*@\S+ up, 0 pending\n$/);
    // It writes and serves with the password.
    const w = await good.subscribe("job_pw");
    await good.broker.send("job_pw", "FINISHED");
    assert.deepEqual(await w.waitMessages(1), [FINISHED]);
    assert.doesNotMatch(good.monitor.output() + ready.body, /s3cret-pw/);
  }
  assert.doesNotMatch(none.monitor.output() + refused, /s3cret-pw/);
});
