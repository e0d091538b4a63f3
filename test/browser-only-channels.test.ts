// Issue 10, finding 2: browsers that subscribe to channels no broker ever wrote to must not
// push real channels out. Reproduces the attack that closed every watcher with 4001
// (max_channels 50, 40 real channels with watchers, 60 subscriptions to made-up ids), on
// the memory store and, when redis-server is installed, on the Redis store.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Browser } from "./helpers/browser.ts";
import { metric, waitMetric } from "./helpers/http.ts";
import { NO_REDIS, RedisServer, REDIS_PREFIX, redisRelay } from "./helpers/redis.ts";
import { relay, type Relay } from "./helpers/relay.ts";

const DOWNLOADED = '{"command": "DOWNLOADED"}';
const FINISHED = '{"command": "FINISHED"}';
const RETENTION = "retention:\n  max_channels: 50\n";

async function attack(s: Relay, attackers: number): Promise<void> {
  const port = s.monitor.wsPort;
  const real = Array.from({ length: 40 }, (_, i) => `student_real_${i}`);
  for (const id of real) await s.broker.send(id, "DOWNLOADED");
  const watchers: Browser[] = [];
  for (const id of real) {
    const w = await s.subscribe(id);
    watchers.push(w);
    await w.waitMessages(1);
  }
  for (let i = 0; i < attackers; i++) await s.subscribe(`made_up_${i}`);
  // Every real channel is still there for its watcher: FINISHED reaches it, then 1000.
  for (const id of real) await s.broker.send(id, "FINISHED");
  for (const w of watchers) {
    assert.deepEqual(await w.waitMessages(2), [DOWNLOADED, FINISHED]);
    assert.equal((await w.waitClose()).code, 1000, "no watcher closed with 4001");
  }
  const late = await s.subscribe(real[0]);
  assert.deepEqual(await late.waitMessages(2), [DOWNLOADED, FINISHED], "the history is kept");
  assert.equal(await metric(port, "recodex_monitor_channels_evicted_total"), 0);
}

test("memory store: 60 subscriptions to unknown ids next to 40 real channels at max_channels 50 evict nothing", async (t) => {
  const s = await relay(t, { extraYaml: `http:\n  enabled: true\n  on_websocket_port: true\n${RETENTION}` });
  await attack(s, 60);
  assert.equal(await metric(s.monitor.wsPort, "recodex_monitor_channels"), 40);
  assert.equal(await metric(s.monitor.wsPort, "recodex_monitor_store_waiting_channels"), 60);
});

test("memory store: past store.max_waiting_channels the extra browsers are closed with 4001, the real watchers not", async (t) => {
  const s = await relay(t, { extraYaml: `http:\n  enabled: true\n  on_websocket_port: true\n${RETENTION}store:\n  max_waiting_channels: 20\n` });
  await attack(s, 60);
  assert.equal(await waitMetric(s.monitor.wsPort, "recodex_monitor_store_waiting_refused_total", (v) => v === 40), 40);
  assert.equal(await metric(s.monitor.wsPort, "recodex_monitor_store_waiting_channels"), 20);
  assert.match(s.monitor.output(), /closed with 4001: store\.max_waiting_channels \(20\)/);
});

test("Redis store: the same attack evicts nothing and unknown ids leave nothing in Redis", { skip: NO_REDIS }, async (t) => {
  const redis = await RedisServer.start(t);
  const s = await redisRelay(t, redis, { extraYaml: RETENTION });
  await attack(s, 60);
  assert.equal(redis.cli("EXISTS", `${REDIS_PREFIX}m:made_up_0`), "0");
  assert.equal(await metric(s.monitor.wsPort, "recodex_monitor_store_waiting_channels"), 60);
});
