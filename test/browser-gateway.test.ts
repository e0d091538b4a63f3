// The WebSocket side, end to end: subscribe with the first text message, history then
// live, FINISHED closes with 1000, and every kind of bad first message.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Browser, RawWebSocket } from "./helpers/browser.ts";
import { httpGet, metric } from "./helpers/http.ts";
import { Relay } from "./helpers/relay.ts";
import { waitUntil } from "./helpers/wait.ts";

let s: Relay;
let seq = 0;

const EXTRA = `limits:
  max_channel_id_length: 64
  max_client_message: 1024
  subscribe_timeout: 2
http:
  enabled: true
`;

const STARTED = '{"command": "STARTED"}';

function channelName(prefix = "ch"): string {
  return `${prefix}_${process.pid}_${++seq}`;
}

const connections = () => metric(s.monitor.wsPort, "recodex_monitor_connections");

before(async () => {
  s = await Relay.start({ extraYaml: EXTRA });
});

after(() => s.close());

describe("subscribing", () => {
  test("nothing is sent on connect before the client names a channel", async () => {
    const channel = channelName("quiet");
    const b = await s.subscribe(channel);
    assert.deepEqual(await s.beforeMarker(b, channel), [], "nothing before the channel's own messages");
  });

  test("any URL path and query are accepted", async () => {
    for (const path of ["/", "/ws/", "/some/deep/path", "/ws/?token=abc&x=1"]) {
      const channel = channelName("path");
      const b = await s.subscribe(channel, { path });
      await s.broker.send(channel, "STARTED");
      assert.deepEqual(await b.waitMessages(1), [STARTED], `path ${path}`);
    }
  });

  test("a client gets the channel's history first and then live messages, in arrival order", async () => {
    const channel = channelName("history");
    const watcher = await s.subscribe(channel);
    await s.broker.send(channel, "DOWNLOADED");
    await s.broker.send(channel, "STARTED");
    await watcher.waitMessages(2);
    const late = await s.subscribe(channel);
    assert.deepEqual(await late.waitMessages(2), ['{"command": "DOWNLOADED"}', STARTED]);
    await s.broker.send(channel, "TASK", "a", "COMPLETED");
    const expected = ['{"command": "DOWNLOADED"}', STARTED, '{"command": "TASK", "task_id": "a", "task_state": "COMPLETED"}'];
    assert.deepEqual(await late.waitMessages(3), expected);
    assert.deepEqual(await watcher.waitMessages(3), expected);
  });

  test("many clients on one channel each get every message; a client on another channel gets none", async () => {
    const channel = channelName("many");
    const clients = await Promise.all(Array.from({ length: 20 }, () => s.subscribe(channel)));
    const otherChannel = channelName("other");
    const other = await s.subscribe(otherChannel);
    for (let i = 0; i < 10; i++) await s.broker.send(channel, "TASK", `t${i}`, "COMPLETED");
    const expected = Array.from({ length: 10 }, (_, i) => `{"command": "TASK", "task_id": "t${i}", "task_state": "COMPLETED"}`);
    for (const c of clients) assert.deepEqual(await c.waitMessages(10), expected);
    assert.deepEqual(await s.beforeMarker(other, otherChannel), []);
  });

  test("a channel id with non-ASCII characters works (its length is counted in bytes)", async () => {
    const channel = channelName("úkol");
    const b = await s.subscribe(channel);
    await s.broker.send(channel, "STARTED");
    assert.deepEqual(await b.waitMessages(1), [STARTED]);
  });

  test("a channel id of exactly limits.max_channel_id_length bytes is accepted", async () => {
    const channel = "L".repeat(64);
    const b = await s.subscribe(channel);
    await s.broker.send(channel, "STARTED");
    assert.deepEqual(await b.waitMessages(1), [STARTED]);
    assert.equal(b.closed, null);
  });

  test("later messages from the client are ignored and it still gets live messages", async () => {
    const channel = channelName("ignored");
    const other = channelName("ignored_other");
    const ignored = await metric(s.monitor.wsPort, "recodex_monitor_ignored_client_messages_total");
    const b = await s.subscribe(channel);
    b.ws.send(other);
    b.ws.send(Buffer.from([1, 2, 3]));
    b.ws.send("");
    b.ws.send("x".repeat(1000));
    await waitUntil(
      async () => (await metric(s.monitor.wsPort, "recodex_monitor_ignored_client_messages_total")) === ignored + 4,
      "the monitor to have read the four later messages",
    );
    await s.broker.send(other, "STARTED");
    assert.deepEqual(await s.beforeMarker(b, channel), [], "nothing of the channel named later");
    assert.equal(b.closed, null);
  });

  test("a plain HTTP request to the WebSocket port without an upgrade does not crash the monitor", async () => {
    const res = await httpGet(s.monitor.wsPort, "/ws/");
    assert.ok(res.status >= 400, `status ${res.status}`);
    const channel = channelName("after_http");
    const b = await s.subscribe(channel);
    await s.broker.send(channel, "STARTED");
    await b.waitMessages(1);
  });
});

describe("FINISHED", () => {
  test("after FINISHED the server closes the connection with 1000", async () => {
    const channel = channelName("finish");
    const b = await s.subscribe(channel);
    await s.broker.send(channel, "STARTED");
    await s.broker.send(channel, "FINISHED");
    assert.deepEqual(await b.waitMessages(2), [STARTED, '{"command": "FINISHED"}']);
    assert.equal((await b.waitClose()).code, 1000);
  });

  test("a client that subscribes after FINISHED gets the whole history and then 1000", async () => {
    const channel = channelName("late");
    const first = await s.subscribe(channel);
    await s.broker.send(channel, "DOWNLOADED");
    await s.broker.send(channel, "TASK", "t1", "COMPLETED");
    await s.broker.send(channel, "FINISHED");
    assert.equal((await first.waitClose()).code, 1000);
    const b = await s.subscribe(channel);
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
    const live = await s.subscribe(channel);
    await s.broker.send(channel, "FINISHED");
    await s.broker.send(channel, "TASK", "late", "COMPLETED");
    await s.broker.send(channel, "FINISHED");
    assert.equal((await live.waitClose()).code, 1000);
    assert.deepEqual(live.messages, ['{"command": "FINISHED"}']);
    await s.settled();
    const late = await s.subscribe(channel);
    assert.equal((await late.waitClose()).code, 1000);
    assert.deepEqual(late.messages, ['{"command": "FINISHED"}']);
  });

  test("FAILED or ABORTED without FINISHED keep the connection open, as the original does", async () => {
    const channel = channelName("aborted");
    const b = await s.subscribe(channel);
    await s.broker.send(channel, "FAILED");
    await s.broker.send(channel, "ABORTED");
    await s.broker.send(channel, "DOWNLOADED");
    assert.deepEqual(await b.waitMessages(3), ['{"command": "FAILED"}', '{"command": "ABORTED"}', '{"command": "DOWNLOADED"}']);
    assert.equal(b.closed, null);
  });
});

describe("a bad first message closes the connection with a precise code", () => {
  for (const [name, first, code] of [
    ["a binary first message: 1003", Buffer.from("channel"), 1003],
    ["a first message over limits.max_client_message: 1009", "c".repeat(1025), 1009],
    ["an empty first message: 1008", "", 1008],
    ["a channel id longer than limits.max_channel_id_length: 1008", "L".repeat(65), 1008],
    ["a channel id over the limit in bytes though not in characters: 1008", "ž".repeat(33), 1008], // 66 bytes
  ] as const) {
    test(name, async () => {
      const b = await s.connect();
      b.ws.send(first);
      assert.equal((await b.waitClose()).code, code);
    });
  }

  test("no first message within limits.subscribe_timeout: 4002", async () => {
    const started = Date.now(); // before the handshake, so never after the server's timer starts
    const b = await s.connect();
    const close = await b.waitClose();
    assert.equal(close.code, 4002);
    assert.ok(Date.now() - started >= 1990, `closed after ${Date.now() - started} ms, before the timeout`);
  });

  test("a subscribed client is not closed by the subscribe timeout", async () => {
    const channel = channelName("no_timeout");
    const b = await s.subscribe(channel);
    // A client connected after it that never subscribes: once that one is closed, the
    // subscribed client's own subscribe_timeout has passed too.
    const witness = await s.connect();
    assert.equal((await witness.waitClose()).code, 4002);
    assert.deepEqual(await s.beforeMarker(b, channel), []);
    assert.equal(b.closed, null);
  });

  test("a text frame that is not valid UTF-8: 1007", async () => {
    const raw = await RawWebSocket.open(s.monitor.wsPort, "/");
    try {
      raw.sendFrame(1, Buffer.from([0x63, 0xff, 0xfe]));
      assert.equal(await raw.waitClose(), 1007);
    } finally {
      raw.destroy();
    }
  });

  test("the monitor keeps serving after bad clients", async () => {
    const channel = channelName("still_serving");
    const b = await s.subscribe(channel);
    await s.broker.send(channel, "STARTED");
    assert.deepEqual(await b.waitMessages(1), [STARTED]);
  });
});

describe("connections", () => {
  test("500 connections opened and dropped leave no connection behind and the monitor responsive", async () => {
    // Clients of earlier tests that the monitor closed may still be on their way out.
    const settled = async () => (await connections()) === s.openClients;
    await waitUntil(settled, "the connection gauge to count this suite's open clients");
    for (let round = 0; round < 5; round++) {
      const opened = await Promise.all(
        Array.from({ length: 100 }, async (_, i) => {
          const b = new Browser(`ws://127.0.0.1:${s.monitor.wsPort}/`);
          await b.opened;
          // Half subscribe before dropping, half drop without a word.
          if (i % 2 === 0) b.ws.send(channelName("churn"));
          return b;
        }),
      );
      for (const b of opened) b.close();
    }
    await waitUntil(settled, "the connection gauge to return to its baseline");
    const channel = channelName("after_churn");
    const b = await s.subscribe(channel);
    await s.broker.send(channel, "STARTED");
    assert.deepEqual(await b.waitMessages(1), [STARTED]);
  });

  test("the connection gauge counts open clients", async () => {
    const before = await connections();
    const clients = await Promise.all([s.connect(), s.connect(), s.connect()]);
    await waitUntil(async () => (await connections()) === before + 3, "3 more connections");
    for (const c of clients) c.close();
    await waitUntil(async () => (await connections()) === before, "connections back");
  });
});
