// The WebSocket side, end to end: subscribe with the first text message, history then
// live, FINISHED closes with 1000, and every kind of bad first message.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Broker, Browser, delay, httpGet, metric, RawWebSocket, startMonitor, waitUntil, type MonitorProcess } from "./helpers.ts";

let mon: MonitorProcess;
let broker: Broker;
const browsers: Browser[] = [];
let seq = 0;

const EXTRA = `limits:
  max_channel_id_length: 64
  max_client_message: 1024
  subscribe_timeout: 0.5
http:
  enabled: true
  on_websocket_port: true
`;

function channelName(prefix = "ch"): string {
  return `${prefix}_${process.pid}_${++seq}`;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

async function connect(path = "/"): Promise<Browser> {
  const b = new Browser(`ws://127.0.0.1:${mon.wsPort}${path}`);
  browsers.push(b);
  await b.opened;
  return b;
}

/** Opens a client, subscribes, and waits until the monitor has logged the subscription. */
async function subscribe(channel: string, path = "/"): Promise<Browser> {
  const before = mon.output().length;
  const b = await connect(path);
  b.ws.send(channel);
  const re = new RegExp(`subscribed to channel ${escape(channel)}\\n`);
  await waitUntil(() => re.test(mon.output().slice(before)), 5000, `subscription to ${channel}`);
  return b;
}

before(async () => {
  mon = await startMonitor({ extraYaml: EXTRA });
  broker = await Broker.connect(mon.zmqPort);
});

after(async () => {
  for (const b of browsers) b.close();
  broker.close();
  await mon.stop();
});

describe("subscribing", () => {
  test("nothing is sent on connect before the client names a channel", async () => {
    const b = await connect();
    await delay(200);
    assert.deepEqual(b.messages, []);
    assert.equal(b.closed, null);
  });

  test("any URL path and query are accepted", async () => {
    for (const path of ["/", "/ws/", "/some/deep/path", "/ws/?token=abc&x=1"]) {
      const channel = channelName("path");
      const b = await subscribe(channel, path);
      await broker.send(channel, "STARTED");
      assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}'], `path ${path}`);
    }
  });

  test("a client gets the channel's history first and then live messages, in arrival order", async () => {
    const channel = channelName("history");
    const watcher = await subscribe(channel);
    await broker.send(channel, "DOWNLOADED");
    await broker.send(channel, "STARTED");
    await watcher.waitMessages(2);
    const late = await subscribe(channel);
    assert.deepEqual(await late.waitMessages(2), ['{"command": "DOWNLOADED"}', '{"command": "STARTED"}']);
    await broker.send(channel, "TASK", "a", "COMPLETED");
    const expected = [
      '{"command": "DOWNLOADED"}',
      '{"command": "STARTED"}',
      '{"command": "TASK", "task_id": "a", "task_state": "COMPLETED"}',
    ];
    assert.deepEqual(await late.waitMessages(3), expected);
    assert.deepEqual(await watcher.waitMessages(3), expected);
  });

  test("many clients on one channel each get every message; a client on another channel gets none", async () => {
    const channel = channelName("many");
    const clients = await Promise.all(Array.from({ length: 20 }, () => subscribe(channel)));
    const other = await subscribe(channelName("other"));
    for (let i = 0; i < 10; i++) await broker.send(channel, "TASK", `t${i}`, "COMPLETED");
    const expected = Array.from({ length: 10 }, (_, i) => `{"command": "TASK", "task_id": "t${i}", "task_state": "COMPLETED"}`);
    for (const c of clients) assert.deepEqual(await c.waitMessages(10), expected);
    await delay(100);
    assert.deepEqual(other.messages, []);
  });

  test("a channel id with non-ASCII characters works (its length is counted in bytes)", async () => {
    const channel = channelName("úkol");
    const b = await subscribe(channel);
    await broker.send(channel, "STARTED");
    assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
  });

  test("a channel id of exactly limits.max_channel_id_length bytes is accepted", async () => {
    const channel = "L".repeat(64);
    const b = await subscribe(channel);
    await broker.send(channel, "STARTED");
    assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
    assert.equal(b.closed, null);
  });

  test("later messages from the client are ignored and it still gets live messages", async () => {
    const channel = channelName("ignored");
    const other = channelName("ignored_other");
    const b = await subscribe(channel);
    b.ws.send(other);
    b.ws.send(Buffer.from([1, 2, 3]));
    b.ws.send("");
    b.ws.send("x".repeat(1000));
    await delay(100);
    await broker.send(other, "STARTED");
    await broker.send(channel, "ENDED");
    assert.deepEqual(await b.waitMessages(1), ['{"command": "ENDED"}']);
    await delay(100);
    assert.deepEqual(b.messages, ['{"command": "ENDED"}']);
    assert.equal(b.closed, null);
  });

  test("a plain HTTP request to the WebSocket port without an upgrade does not crash the monitor", async () => {
    const res = await httpGet(mon.wsPort, "/ws/");
    assert.ok(res.status >= 400, `status ${res.status}`);
    const channel = channelName("after_http");
    const b = await subscribe(channel);
    await broker.send(channel, "STARTED");
    await b.waitMessages(1);
  });
});

describe("FINISHED", () => {
  test("after FINISHED the server closes the connection with 1000", async () => {
    const channel = channelName("finish");
    const b = await subscribe(channel);
    await broker.send(channel, "STARTED");
    await broker.send(channel, "FINISHED");
    assert.deepEqual(await b.waitMessages(2), ['{"command": "STARTED"}', '{"command": "FINISHED"}']);
    assert.equal((await b.waitClose()).code, 1000);
  });

  test("a client that subscribes after FINISHED gets the whole history and then 1000", async () => {
    const channel = channelName("late");
    const first = await subscribe(channel);
    await broker.send(channel, "DOWNLOADED");
    await broker.send(channel, "TASK", "t1", "COMPLETED");
    await broker.send(channel, "FINISHED");
    assert.equal((await first.waitClose()).code, 1000);
    const b = await subscribe(channel);
    const close = await b.waitClose();
    assert.equal(close.code, 1000);
    assert.deepEqual(b.messages, [
      '{"command": "DOWNLOADED"}',
      '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}',
      '{"command": "FINISHED"}',
    ]);
  });

  test("messages that arrive after FINISHED are not delivered to anyone", async () => {
    const channel = channelName("after_finish");
    const live = await subscribe(channel);
    await broker.send(channel, "FINISHED");
    await broker.send(channel, "TASK", "late", "COMPLETED");
    await broker.send(channel, "FINISHED");
    assert.equal((await live.waitClose()).code, 1000);
    assert.deepEqual(live.messages, ['{"command": "FINISHED"}']);
    await delay(100);
    const late = await subscribe(channel);
    assert.equal((await late.waitClose()).code, 1000);
    assert.deepEqual(late.messages, ['{"command": "FINISHED"}']);
  });

  test("FAILED or ABORTED without FINISHED keep the connection open, as the original does", async () => {
    const channel = channelName("aborted");
    const b = await subscribe(channel);
    await broker.send(channel, "FAILED");
    await broker.send(channel, "ABORTED");
    await b.waitMessages(2);
    await delay(200);
    assert.equal(b.closed, null);
    await broker.send(channel, "DOWNLOADED");
    await b.waitMessages(3);
  });
});

describe("a bad first message closes the connection with a precise code", () => {
  test("a binary first message: 1003", async () => {
    const b = await connect();
    b.ws.send(Buffer.from("channel"));
    assert.equal((await b.waitClose(3000)).code, 1003);
  });

  test("a first message over limits.max_client_message: 1009", async () => {
    const b = await connect();
    b.ws.send("c".repeat(1025));
    assert.equal((await b.waitClose(3000)).code, 1009);
  });

  test("an empty first message: 1008", async () => {
    const b = await connect();
    b.ws.send("");
    assert.equal((await b.waitClose(3000)).code, 1008);
  });

  test("a channel id longer than limits.max_channel_id_length: 1008", async () => {
    const b = await connect();
    b.ws.send("L".repeat(65));
    assert.equal((await b.waitClose(3000)).code, 1008);
  });

  test("a channel id over the limit in bytes though not in characters: 1008", async () => {
    const b = await connect();
    b.ws.send("ž".repeat(33)); // 66 bytes, 33 characters
    assert.equal((await b.waitClose(3000)).code, 1008);
  });

  test("no first message within limits.subscribe_timeout: 4002", async () => {
    const started = Date.now(); // before the handshake, so never after the server's timer starts
    const b = await connect();
    const close = await b.waitClose(3000);
    assert.equal(close.code, 4002);
    assert.ok(Date.now() - started >= 490, `closed after ${Date.now() - started} ms, before the timeout`);
  });

  test("a subscribed client is not closed by the subscribe timeout", async () => {
    const b = await subscribe(channelName("no_timeout"));
    await delay(800);
    assert.equal(b.closed, null);
  });

  test("a text frame that is not valid UTF-8: 1007", async () => {
    const raw = await RawWebSocket.open(mon.wsPort, "/");
    try {
      raw.sendFrame(1, Buffer.from([0x63, 0xff, 0xfe]));
      assert.equal(await raw.waitClose(3000), 1007);
    } finally {
      raw.destroy();
    }
  });

  test("the monitor keeps serving after bad clients", async () => {
    const channel = channelName("still_serving");
    const b = await subscribe(channel);
    await broker.send(channel, "STARTED");
    assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
  });
});

describe("connections", () => {
  test("500 connections opened and dropped leave no connection behind and the monitor responsive", async () => {
    await waitUntil(async () => (await metric(mon.wsPort, "recodex_monitor_connections")) === browsers.filter((b) => b.closed === null).length, 5000, "a settled connection count");
    const baseline = await metric(mon.wsPort, "recodex_monitor_connections");
    const batch: Browser[] = [];
    for (let round = 0; round < 5; round++) {
      const opened = await Promise.all(
        Array.from({ length: 100 }, async (_, i) => {
          const b = new Browser(`ws://127.0.0.1:${mon.wsPort}/`);
          await b.opened;
          // Half subscribe before dropping, half drop without a word.
          if (i % 2 === 0) b.ws.send(channelName("churn"));
          return b;
        }),
      );
      batch.push(...opened);
      await delay(20);
      for (const b of opened) b.close();
    }
    await waitUntil(
      async () => (await metric(mon.wsPort, "recodex_monitor_connections")) === baseline,
      10_000,
      "the connection gauge to return to its baseline",
    );
    const channel = channelName("after_churn");
    const b = await subscribe(channel);
    await broker.send(channel, "STARTED");
    assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
  });

  test("the connection gauge counts open clients", async () => {
    const before = await metric(mon.wsPort, "recodex_monitor_connections");
    const clients = await Promise.all([connect(), connect(), connect()]);
    await waitUntil(async () => (await metric(mon.wsPort, "recodex_monitor_connections")) === before + 3, 5000, "3 more connections");
    for (const c of clients) c.close();
    await waitUntil(async () => (await metric(mon.wsPort, "recodex_monitor_connections")) === before, 5000, "connections back");
  });
});
