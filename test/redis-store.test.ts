// The Redis store on its own terms: its config keys, a Redis that is not there yet at start,
// appends that are never applied twice, eviction at retention.max_channels decided in Redis,
// and a stop that says what it could not write. Skipped when redis-server is not installed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULTS } from "../src/config.ts";
import { RedisLink } from "../src/redis-link.ts";
import { RedisStore, redactUrl } from "../src/store-redis.ts";
import type { CloseReason, Subscriber } from "../src/store-backend.ts";
import { httpGet, metric, waitMetric } from "./helpers/http.ts";
import { runCli, writeConfig } from "./helpers/monitor-process.ts";
import { NO_REDIS, REDIS_PREFIX, RedisServer, redisRelay } from "./helpers/redis.ts";
import { waitUntil } from "./helpers/wait.ts";

const options = { skip: NO_REDIS, timeout: 60_000 };
const task = (i: number) => `{"command": "TASK", "task_id": "t${i}", "task_state": "COMPLETED"}`;
const FINISHED = '{"command": "FINISHED"}';

for (const [yaml, pattern] of [
  ['store:\n  kind: redis\n  redis:\n    url: "http://127.0.0.1:6379"\n', /config key "store\.redis\.url": got "http:\/\/127\.0\.0\.1:6379", expected a redis:\/\/, rediss:\/\/ or unix:\/\/ URL/],
  ['store:\n  kind: redis\n  redis:\n    url: "unix://relative/redis.sock"\n', /config key "store\.redis\.url": got "unix:\/\/relative\/redis\.sock", expected a redis:\/\/, rediss:\/\/ or unix:\/\/ URL/],
  ['store:\n  kind: redis\n  state_file: /tmp/x.state\n', /config key "store\.state_file": got "\/tmp\/x\.state", expected unset with store\.kind redis/],
  ["store:\n  kind: memcached\n", /config key "store\.kind": got "memcached", expected one of memory, redis/],
  ["store:\n  max_waiting_channels: 0\n", /config key "store\.max_waiting_channels": got 0/],
] as const) {
  test(`a bad store section is a configuration error naming the key (${yaml.split("\n").slice(1).join(" ").trim()})`, async () => {
    const r = await runCli(["--check-config", "-c", writeConfig(yaml)]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, pattern);
  });
}

test("a monitor whose Redis is not there yet starts, says so, answers /readyz 503 and buffers; once Redis is up all is written and served", options, async (t) => {
  const redis = RedisServer.unstarted(t);
  const s = await redisRelay(t, redis, { redisKeys: "    timeout: 0.5\n" });
  const m = s.monitor;
  assert.match(m.output(), /Redis unix:\/\/\S+\/redis\.sock\?db=0 not reachable yet .*: starting anyway, broker messages are buffered/);
  const ready = await httpGet(m.wsPort, "/readyz");
  assert.equal(ready.status, 503);
  assert.match(ready.body, /unreachable/);
  for (let i = 0; i < 3; i++) await s.broker.send("job_late_redis", "TASK", `t${i}`, "COMPLETED");
  await waitMetric(m.wsPort, "recodex_monitor_store_pending_messages", (v) => v === 3);
  await redis.launch();
  await waitMetric(m.wsPort, "recodex_monitor_store_pending_messages", (v) => v === 0);
  assert.equal((await httpGet(m.wsPort, "/readyz")).status, 200);
  assert.equal(redis.cli("XLEN", `${REDIS_PREFIX}s:job_late_redis`), "3");
  const late = await s.subscribe("job_late_redis");
  assert.deepEqual(await late.waitMessages(3), [task(0), task(1), task(2)]);
});

test("an append batch sent again (its reply was lost) is answered as the first time and not appended twice", options, async (t) => {
  const redis = await RedisServer.start(t);
  const link = new RedisLink(redis.url, REDIS_PREFIX, 2000, { up() {}, down() {} });
  t.after(() => link.close());
  await link.start();
  const batch = ["node-x", "7", "300000", "3600000", "100", "1048576", "1000", "1000", "job_idem", "0", task(0), "-1", "-1", "job_idem", "0", task(1), "-1", "-1"];
  const first = await link.run("append", batch);
  const again = await link.run("append", batch);
  assert.equal(again, first);
  assert.equal(redis.cli("XLEN", `${REDIS_PREFIX}s:job_idem`), "2");
  const [[o0], [o1]] = JSON.parse(first) as [string][];
  assert.equal(Number(o1), Number(o0) + 1);
  const next = await link.run("append", ["node-x", "8", ...batch.slice(2, 13)]);
  assert.equal(Number((JSON.parse(next) as [string][])[0][0]), Number(o1) + 1, "the next batch goes on");
});

test("at retention.max_channels Redis evicts the channel closest to expiring; its subscribers on every node get 4001", options, async (t) => {
  const redis = await RedisServer.start(t);
  const extraYaml = "retention:\n  max_channels: 2\n";
  const a = await redisRelay(t, redis, { extraYaml });
  const b = await redisRelay(t, redis, { extraYaml });
  await a.broker.send("evict_1", "DOWNLOADED");
  await waitMetric(a.monitor.wsPort, "recodex_monitor_messages_in_total", (v) => v === 1);
  const w = await b.subscribe("evict_1");
  await w.waitMessages(1);
  await a.broker.send("evict_2", "DOWNLOADED");
  await a.broker.send("evict_3", "DOWNLOADED");
  assert.equal((await w.waitClose()).code, 4001);
  assert.equal(redis.cli("EXISTS", `${REDIS_PREFIX}m:evict_1`), "0");
  assert.equal(redis.cli("ZCARD", `${REDIS_PREFIX}index`), "2");
  assert.equal(await metric(b.monitor.wsPort, "recodex_monitor_channels_evicted_total"), 1);
});

test("a stop while Redis cannot be written says how many messages are lost, and still exits 0 within the drain time", options, async (t) => {
  const redis = await RedisServer.start(t);
  const s = await redisRelay(t, redis, { redisKeys: "    timeout: 0.5\n", extraYaml: "limits:\n  drain_timeout: 1\n" });
  const m = s.monitor;
  redis.signal("SIGSTOP");
  for (let i = 0; i < 5; i++) await s.broker.send("job_lost", "TASK", `t${i}`, "COMPLETED");
  await waitMetric(m.wsPort, "recodex_monitor_store_pending_messages", (v) => v === 5);
  // The append goes unanswered: past store.redis.timeout the link is down.
  await waitMetric(m.wsPort, "recodex_monitor_store_up", (v) => v === 0);
  assert.equal(await m.stop("SIGTERM"), 0);
  assert.match(m.output(), /\[ERROR\] Redis store: 5 broker messages could not be written to Redis before the stop .*: lost/);
});

test("a graceful stop writes what is pending once Redis answers again within the drain time", options, async (t) => {
  const redis = await RedisServer.start(t);
  const s = await redisRelay(t, redis, { redisKeys: "    timeout: 0.5\n", extraYaml: "limits:\n  drain_timeout: 10\n" });
  const m = s.monitor;
  redis.signal("SIGSTOP");
  for (let i = 0; i < 5; i++) await s.broker.send("job_kept", "TASK", `t${i}`, "COMPLETED");
  await waitMetric(m.wsPort, "recodex_monitor_store_pending_messages", (v) => v === 5);
  m.child.kill("SIGTERM");
  await m.waitFor(/stopping: SIGTERM received/);
  redis.signal("SIGCONT");
  assert.equal(await m.exited, 0);
  assert.equal(redis.cli("XLEN", `${REDIS_PREFIX}s:job_kept`), "5");
  assert.doesNotMatch(m.output(), /could not be written/);
});

/** A subscriber that records what a store gives it. */
class Recorder implements Subscriber {
  readonly resumable: boolean;
  readonly got: { json: string; offset: number }[] = [];
  closed: CloseReason | null = null;
  constructor(resumable: boolean) {
    this.resumable = resumable;
  }
  send(json: string, offset: number): void {
    this.got.push({ json, offset });
  }
  gap(): void {}
  end(close: CloseReason): void {
    this.closed = close;
  }
}

/** A RedisStore in this process on `redis`, closed when the test ends. */
async function inProcessStore(t: { after(fn: () => unknown): void }, redis: RedisServer): Promise<RedisStore> {
  const settings = { ...DEFAULTS.store, kind: "redis" as const, redis: { ...DEFAULTS.store.redis, url: redis.url, key_prefix: REDIS_PREFIX } };
  const store = new RedisStore(DEFAULTS.retention, settings);
  t.after(() => store.close({ code: 1001, reason: "test over" }, 1000));
  await store.open();
  return store;
}

/**
 * Publishes `json` on `a` while `b`'s feed entries are held (as a busy event loop or a slow
 * socket would hold them); resolves once it is in Redis and its feed entry at `b`. The
 * function returned hands `b` what was held and lets its feed go on.
 */
async function writeBehindFeed(a: RedisStore, b: RedisStore, id: string, json: string): Promise<() => void> {
  const feed = b as unknown as { onFeed(fields: string[]): void };
  const deliver = feed.onFeed.bind(b);
  const held: string[][] = [];
  feed.onFeed = (fields) => held.push(fields);
  a.publish(id, "TASK", json);
  await waitUntil(() => held.length === 1 && a.pending === 0, "the message written and its feed entry at B");
  return () => {
    feed.onFeed = deliver;
    for (const fields of held) deliver(fields);
  };
}

for (const resumable of [false, true]) {
  test(`a ${resumable ? "resumable" : "legacy"} subscriber whose history read is answered ahead of the shared feed gets each message once, in order`, options, async (t) => {
    // Node B's history read and its feed read travel on two connections: the read can come
    // back with a message (t1) whose feed entry B has not handled yet. B's view then still
    // expects t1 from the feed and hands it to every subscriber, the joiner included.
    const redis = await RedisServer.start(t);
    const a = await inProcessStore(t, redis);
    const b = await inProcessStore(t, redis);
    const id = "job_read_ahead";
    const first = new Recorder(resumable);
    b.subscribe(id, first);
    await waitUntil(() => b.describe(id)?.subscribers === 1, "the first subscriber on B");
    a.publish(id, "TASK", task(0));
    await waitUntil(() => first.got.length === 1, "t0 on B from the feed");
    const releaseFeed = await writeBehindFeed(a, b, id, task(1));
    const joiner = new Recorder(resumable);
    b.subscribe(id, joiner);
    await waitUntil(() => joiner.got.length === 2, "the joiner's history read: t0, t1");
    releaseFeed();
    a.publish(id, "FINISHED", FINISHED);
    await waitUntil(() => first.closed !== null && joiner.closed !== null, "both subscribers ended by FINISHED");
    for (const sub of [first, joiner]) {
      assert.deepEqual(sub.got.map((m) => m.json), [task(0), task(1), FINISHED]);
      if (resumable) assert.deepEqual(sub.got.map((m) => m.offset - sub.got[0].offset), [0, 1, 2], "consecutive offsets");
    }
  });
}

test("the first subscriber on a node, its history read overtaken by the feed and then ahead of it, gets each message once, in order", options, async (t) => {
  // The interleaving of the AOF cluster test's failure: B's view learns the channel's life
  // from the feed (t0) while the subscriber's read is on its way; the read, answered after
  // t1 was written, brings t0 and t1; t1's feed entry comes after it.
  const redis = await RedisServer.start(t);
  const a = await inProcessStore(t, redis);
  const b = await inProcessStore(t, redis);
  const id = "job_read_overtaken";
  type Run = (script: string, args: readonly string[]) => Promise<string>;
  const link = (b as unknown as { link: { run: Run } }).link;
  const run = link.run.bind(link);
  let openGate!: () => void;
  const gate = new Promise<void>((r) => (openGate = r));
  let reads = 0;
  link.run = async (script, args) => {
    if (script === "read") {
      reads++;
      await gate;
    }
    return run(script, args);
  };
  const sub = new Recorder(false);
  b.subscribe(id, sub);
  await waitUntil(() => reads === 1, "B's history read to be on its way");
  a.publish(id, "TASK", task(0));
  await waitUntil(() => b.hasMessages(id), "t0 at B's view from the feed");
  const releaseFeed = await writeBehindFeed(a, b, id, task(1));
  openGate();
  await waitUntil(() => sub.got.length === 2, "the history read: t0, t1");
  link.run = run;
  releaseFeed();
  a.publish(id, "FINISHED", FINISHED);
  await waitUntil(() => sub.closed !== null, "the subscriber ended by FINISHED");
  assert.deepEqual(sub.got.map((m) => m.json), [task(0), task(1), FINISHED]);
});

test("a password in the URL is never shown: redis:// and unix:// URLs are logged with *** for it", () => {
  assert.equal(redactUrl("redis://recodex:s3cret@redis1:6379/0"), "redis://recodex:***@redis1:6379/0");
  assert.equal(redactUrl("rediss://:s3cret@redis1/0"), "rediss://:***@redis1/0");
  assert.equal(redactUrl("unix://:s3cret@/run/redis/redis.sock?db=2"), "unix://:***@/run/redis/redis.sock?db=2");
  assert.equal(redactUrl("unix://recodex:s3cret@/run/redis/redis.sock"), "unix://recodex:***@/run/redis/redis.sock");
  assert.equal(redactUrl("unix:///run/redis/redis.sock"), "unix:///run/redis/redis.sock");
});
