// Issue 10, finding 2: browsers that subscribe to channels no broker ever wrote to must not
// push real channels out. Reproduces the attack that closed every watcher with 4001
// (max_channels 50, 40 real channels with watchers, 60 subscriptions to made-up ids), on
// the memory store and, when redis-server is installed, on the Redis store.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { Broker, Browser, startMonitor, type MonitorProcess } from "./helpers.ts";
import { figure, NO_REDIS, RedisServer, redisMonitor, waitFigure } from "./store-helpers.ts";

const DOWNLOADED = '{"command": "DOWNLOADED"}';
const FINISHED = '{"command": "FINISHED"}';
const RETENTION = "retention:\n  max_channels: 50\n";

async function attack(t: TestContext, m: MonitorProcess, attackers: number): Promise<{ refused: number }> {
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const real = Array.from({ length: 40 }, (_, i) => `student_real_${i}`);
  for (const id of real) await broker.send(id, "DOWNLOADED");
  const watchers: Browser[] = [];
  t.after(() => watchers.forEach((w) => w.close()));
  for (const id of real) {
    const w = await Browser.open(m.wsPort, id);
    watchers.push(w);
    await w.waitMessages(1);
  }
  const evil: Browser[] = [];
  t.after(() => evil.forEach((b) => b.close()));
  for (let i = 0; i < attackers; i++) evil.push(await Browser.open(m.wsPort, `made_up_${i}`));
  await waitFigure(m.wsPort, "recodex_monitor_subscriptions_total", (v) => v >= 40 + attackers);
  // Every real channel is still there for its watcher: FINISHED reaches it, then 1000.
  for (const id of real) await broker.send(id, "FINISHED");
  for (const w of watchers) {
    assert.deepEqual(await w.waitMessages(2), [DOWNLOADED, FINISHED]);
    assert.equal((await w.waitClose()).code, 1000, "no watcher closed with 4001");
  }
  const late = await Browser.open(m.wsPort, real[0]);
  assert.deepEqual(await late.waitMessages(2), [DOWNLOADED, FINISHED], "the history is kept");
  assert.equal(await figure(m.wsPort, "recodex_monitor_channels_evicted_total"), 0);
  const refused = evil.filter((b) => b.closed?.code === 4001).length;
  return { refused };
}

test("memory store: 60 subscriptions to unknown ids next to 40 real channels at max_channels 50 evict nothing", async (t) => {
  const m = await startMonitor({ extraYaml: `http:\n  enabled: true\n${RETENTION}` });
  t.after(() => m.stop("SIGKILL"));
  await attack(t, m, 60);
  assert.equal(await figure(m.wsPort, "recodex_monitor_channels"), 40);
  assert.equal(await figure(m.wsPort, "recodex_monitor_store_waiting_channels"), 60);
});

test("memory store: past store.max_waiting_channels the extra browsers are closed with 4001, the real watchers not", async (t) => {
  const m = await startMonitor({ extraYaml: `http:\n  enabled: true\n${RETENTION}store:\n  max_waiting_channels: 20\n` });
  t.after(() => m.stop("SIGKILL"));
  await attack(t, m, 60);
  assert.equal(await waitFigure(m.wsPort, "recodex_monitor_store_waiting_refused_total", (v) => v === 40), 40);
  assert.equal(await figure(m.wsPort, "recodex_monitor_store_waiting_channels"), 20);
  assert.match(m.output(), /closed with 4001: store\.max_waiting_channels \(20\)/);
});

test("Redis store: the same attack evicts nothing and unknown ids leave nothing in Redis", { skip: NO_REDIS }, async (t) => {
  const redis = await RedisServer.start(t);
  const m = await redisMonitor(t, redis, { extraYaml: RETENTION });
  await attack(t, m, 60);
  assert.equal(redis.cli("EXISTS", "rmon-test:m:made_up_0"), "0");
  assert.equal(await figure(m.wsPort, "recodex_monitor_store_waiting_channels"), 60);
});
