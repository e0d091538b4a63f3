// The Redis store on its own terms: its config keys, a Redis that is not there yet at start,
// appends that are never applied twice, eviction at retention.max_channels decided in Redis,
// and a stop that says what it could not write. Skipped when redis-server is not installed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RedisLink } from "../src/redis-link.ts";
import { Broker, Browser, freePort, httpGet, runCli, startMonitor, writeConfig } from "./helpers.ts";
import { figure, NO_REDIS, REDIS_PREFIX, RedisServer, redisMonitor, waitFigure } from "./store-helpers.ts";

const options = { skip: NO_REDIS, timeout: 60_000 };
const task = (i: number) => `{"command": "TASK", "task_id": "t${i}", "task_state": "COMPLETED"}`;

for (const [yaml, pattern] of [
  ['store:\n  kind: redis\n  redis:\n    url: "http://127.0.0.1:6379"\n', /config key "store\.redis\.url": got "http:\/\/127\.0\.0\.1:6379", expected a redis:\/\/ or rediss:\/\/ URL/],
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
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}/0`;
  const m = await startMonitor({
    extraYaml: `http:\n  enabled: true\nstore:\n  kind: redis\n  redis:\n    url: "${url}"\n    key_prefix: "${REDIS_PREFIX}"\n    timeout: 0.5\n`,
  });
  t.after(() => m.stop("SIGKILL"));
  assert.match(m.output(), /Redis redis:\/\/127\.0\.0\.1:\d+\/0 not reachable yet .*: starting anyway, broker messages are buffered/);
  const ready = await httpGet(m.wsPort, "/readyz");
  assert.equal(ready.status, 503);
  assert.match(ready.body, /unreachable/);
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  for (let i = 0; i < 3; i++) await broker.send("job_late_redis", "TASK", `t${i}`, "COMPLETED");
  await waitFigure(m.wsPort, "recodex_monitor_store_pending_messages", (v) => v === 3);
  const redis = await RedisServer.startOn(t, port);
  await waitFigure(m.wsPort, "recodex_monitor_store_pending_messages", (v) => v === 0);
  assert.equal((await httpGet(m.wsPort, "/readyz")).status, 200);
  assert.equal(redis.cli("XLEN", `${REDIS_PREFIX}s:job_late_redis`), "3");
  const late = await Browser.open(m.wsPort, "job_late_redis");
  t.after(() => late.close());
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
  const a = await redisMonitor(t, redis, { extraYaml });
  const b = await redisMonitor(t, redis, { extraYaml });
  const broker = await Broker.connect(a.zmqPort);
  t.after(() => broker.close());
  await broker.send("evict_1", "DOWNLOADED");
  await waitFigure(a.wsPort, "recodex_monitor_messages_in_total", (v) => v === 1);
  const w = await Browser.open(b.wsPort, "evict_1");
  t.after(() => w.close());
  await w.waitMessages(1);
  await broker.send("evict_2", "DOWNLOADED");
  await broker.send("evict_3", "DOWNLOADED");
  assert.equal((await w.waitClose()).code, 4001);
  assert.equal(redis.cli("EXISTS", `${REDIS_PREFIX}m:evict_1`), "0");
  assert.equal(redis.cli("ZCARD", `${REDIS_PREFIX}index`), "2");
  assert.equal(await figure(b.wsPort, "recodex_monitor_channels_evicted_total"), 1);
});

test("a stop while Redis cannot be written says how many messages are lost, and still exits 0 within the drain time", options, async (t) => {
  const redis = await RedisServer.start(t);
  const m = await redisMonitor(t, redis, { redisKeys: "    timeout: 0.5\n", extraYaml: "limits:\n  drain_timeout: 1\n" });
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  redis.signal("SIGSTOP");
  t.after(() => redis.signal("SIGCONT"));
  await waitFigure(m.wsPort, "recodex_monitor_store_up", (v) => v === 0, 20_000).catch(() => {});
  for (let i = 0; i < 5; i++) await broker.send("job_lost", "TASK", `t${i}`, "COMPLETED");
  await waitFigure(m.wsPort, "recodex_monitor_store_pending_messages", (v) => v === 5);
  assert.equal(await m.stop("SIGTERM"), 0);
  assert.match(m.output(), /\[ERROR\] Redis store: 5 broker messages could not be written to Redis before the stop .*: lost/);
});

test("a graceful stop writes what is pending once Redis answers again within the drain time", options, async (t) => {
  const redis = await RedisServer.start(t);
  const m = await redisMonitor(t, redis, { redisKeys: "    timeout: 0.5\n", extraYaml: "limits:\n  drain_timeout: 10\n" });
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  redis.signal("SIGSTOP");
  for (let i = 0; i < 5; i++) await broker.send("job_kept", "TASK", `t${i}`, "COMPLETED");
  await waitFigure(m.wsPort, "recodex_monitor_store_pending_messages", (v) => v === 5);
  m.child.kill("SIGTERM");
  await m.waitFor(/stopping: SIGTERM received/);
  redis.signal("SIGCONT");
  assert.equal(await m.exited, 0);
  assert.equal(redis.cli("XLEN", `${REDIS_PREFIX}s:job_kept`), "5");
  assert.doesNotMatch(m.output(), /could not be written/);
});
