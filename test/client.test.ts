// The client writer, in process: frames on the wire, and the direction of calls: while the
// store iterates a channel's subscribers, nothing it calls (send, end, a slow-consumer cut)
// calls back into the store.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BrowserGateway } from "../src/browser-gateway.ts";
import { ChannelStore } from "../src/channel-store.ts";
import { textFrame } from "../src/client.ts";
import { DEFAULTS, type Config } from "../src/config.ts";
import { Log } from "../src/logger.ts";
import { Browser, RawWebSocket, RESUME, unwrap } from "./helpers/browser.ts";
import { waitUntil } from "./helpers/wait.ts";

test("textFrame uses the 2-, 4- and 10-byte headers of RFC 6455 at 125/126 and 65535/65536 bytes", () => {
  for (const [n, header] of [[0, 2], [125, 2], [126, 4], [65535, 4], [65536, 10]] as const) {
    const frame = textFrame("x".repeat(n));
    assert.equal(frame.length, header + n, `payload ${n}`);
    assert.equal(frame[0], 0x81);
    const len = header === 2 ? frame[1] : header === 4 ? frame.readUInt16BE(2) : Number(frame.readBigUInt64BE(2));
    assert.equal(len, n);
  }
});

function settings(maxBuffered: number): Config {
  return { ...DEFAULTS, limits: { ...DEFAULTS.limits, max_buffered_bytes: maxBuffered } };
}

/** A store that fails the test if it is entered while it is publishing. */
function guardedStore(): { store: ChannelStore; reentered: string[] } {
  const store = new ChannelStore({ ...DEFAULTS.retention, max_bytes_per_channel: 64 * 1024 * 1024, max_total_bytes: 256 * 1024 * 1024 });
  const reentered: string[] = [];
  let publishing = false;
  const publish = store.publish.bind(store);
  store.publish = (...args) => {
    publishing = true;
    try {
      publish(...args);
    } finally {
      publishing = false;
    }
  };
  for (const name of ["subscribe", "unsubscribe"] as const) {
    const original = store[name].bind(store) as (...a: unknown[]) => void;
    (store as unknown as Record<string, unknown>)[name] = (...a: unknown[]) => {
      if (publishing) reentered.push(name);
      original(...a);
    };
  }
  return { store, reentered };
}

test("a slow subscriber cut while FINISHED is published does not re-enter the store; a reader on the same channel gets everything", async (t) => {
  const { store, reentered } = guardedStore();
  const log = new Log({ file: "-", level: "critical", "max-size": 1024 * 1024, rotations: 0 });
  const gateway = new BrowserGateway(store, settings(64 * 1024), log, null);
  await gateway.listen(["127.0.0.1", 0]);
  t.after(() => gateway.close({ code: 1001, reason: "test over" }, 1000));

  const stalled = await RawWebSocket.open(gateway.port); // reads nothing
  stalled.sendText("job");
  const reader = await Browser.open(gateway.port, "job");
  await waitUntil(() => gateway.counters.subscriptions === 2, "both clients subscribed");
  // One message far larger than the limit: the stalled client's socket takes a part of it,
  // the rest waits in its buffer. The reader takes all of it.
  store.publish("job", "TASK", JSON.stringify({ command: "TASK", payload: "x".repeat(16 * 1024 * 1024) }));
  await reader.waitMessages(1);
  assert.equal(gateway.counters.slowClients, 0);
  // FINISHED now finds the stalled client over the limit while the store ends its
  // subscribers: the client is cut (4003) from inside publish.
  store.publish("job", "FINISHED", '{"command": "FINISHED"}');
  const closed = await reader.waitClose();
  assert.equal(closed.code, 1000);
  assert.equal(reader.messages.at(-1), '{"command": "FINISHED"}');
  assert.equal(gateway.counters.slowClients, 1, "the stalled client was cut as slow");
  assert.deepEqual(reentered, [], "the store was entered while it was publishing");
  stalled.destroy();
});

// A turn's frames as the writer meets them: sizes around the frame header bounds (125/126,
// 65535/65536) and the shared-bytes threshold (1024); only small ones (one buffer, one
// write); a large one first, last or alone (several writes, corked together).
const TURNS: Record<string, number[]> = {
  mixed: [1, 100, 125, 126, 1000, 1023, 1024, 5000, 65535, 65536, 70000, 3, 200000, 7],
  small: [1, 2, 3],
  "large first": [5000, 1, 2],
  "large last": [1, 2, 5000],
  "large alone": [70000],
};

for (const [name, sizes] of Object.entries(TURNS)) {
  test(`messages published in one turn (${name}: ${sizes.join(", ")} bytes) reach a legacy and a resumable client whole and in order`, async (t) => {
    const store = new ChannelStore({ ...DEFAULTS.retention, max_bytes_per_channel: 64 * 1024 * 1024, max_total_bytes: 256 * 1024 * 1024 });
    const log = new Log({ file: "-", level: "critical", "max-size": 1024 * 1024, rotations: 0 });
    const gateway = new BrowserGateway(store, settings(64 * 1024 * 1024), log, null);
    await gateway.listen(["127.0.0.1", 0]);
    t.after(() => gateway.close({ code: 1001, reason: "test over" }, 1000));

    const legacy = await Browser.open(gateway.port, "job");
    const resumable = new Browser(`ws://127.0.0.1:${gateway.port}/`, RESUME);
    await resumable.opened;
    resumable.ws.send(JSON.stringify({ channel: "job", after: -1 }));
    await waitUntil(() => gateway.counters.subscriptions === 2, "both clients subscribed");

    const sent = sizes.map((n, i) => JSON.stringify({ command: "TASK", task_id: `t${i}`, pad: "y".repeat(n) }));
    for (const json of sent) store.publish("job", "TASK", json); // one turn: every frame in one flush
    // FINISHED only once the turn's frames arrived, so that the close is no part of that turn.
    await waitUntil(() => legacy.messages.length === sent.length && resumable.messages.length === sent.length, "the turn's frames arrived");
    store.publish("job", "FINISHED", '{"command": "FINISHED"}');
    await legacy.waitClose();
    await resumable.waitClose();
    const expected = [...sent, '{"command": "FINISHED"}'];
    assert.deepEqual(legacy.messages, expected);
    assert.deepEqual(unwrap(resumable.messages), expected.map((message, offset) => ({ offset, message })));
  });
}
