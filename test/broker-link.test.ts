// The ZeroMQ side, end to end: the real monitor, real ROUTER peers playing the broker,
// real WebSocket clients reading what comes out.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as zmq from "zeromq";
import type { Broker } from "./helpers/broker.ts";
import { Relay } from "./helpers/relay.ts";
import { count } from "./helpers/wait.ts";

let s: Relay;
let seq = 0;

const broker = () => s.peer();
const browser = (channel: string) => s.subscribe(channel);

function channelName(prefix: string): string {
  return `${prefix}_${process.pid}_${++seq}`;
}

/** Sends frames after the routing id, then checks that the monitor skipped the message and still relays. */
async function expectSkipped(frames: (string | Buffer)[], reason: RegExp): Promise<Broker> {
  const channel = channelName("after_bad");
  const watcher = await browser(channel);
  // Everything logged before the subscription line has been read by now.
  const since = s.monitor.mark();
  const b = await broker();
  await b.sendFrames(frames);
  await b.send(channel, "STARTED");
  assert.deepEqual(await watcher.waitMessages(1), ['{"command": "STARTED"}'], "the monitor still relays");
  await s.monitor.waitFor(reason, { since });
  assert.equal(count(s.monitor.output().slice(since), /ZeroMQ message skipped/), 1, "exactly one skipped line");
  return b;
}

before(async () => {
  s = await Relay.start();
});

after(() => s.close());

describe("the ROUTER socket", () => {
  test("has the routing id recodex-monitor: a broker ROUTER addressing it gets through, another id does not", async () => {
    const b = await broker();
    const channel = channelName("routing");
    const watcher = await browser(channel);
    await b.send(channel, "DOWNLOADED");
    assert.deepEqual(await watcher.waitMessages(1), ['{"command": "DOWNLOADED"}']);
    await assert.rejects(b.socket.send(["some-other-peer", channel, "STARTED"]), { code: "EHOSTUNREACH" });
  });

  test("accepts several connected broker peers at once and relays from each", async () => {
    const peers = await Promise.all([broker(), broker(), broker()]);
    const channel = channelName("multi");
    const watcher = await browser(channel);
    await peers[0].send(channel, "DOWNLOADED");
    await watcher.waitMessages(1);
    await peers[1].send(channel, "STARTED");
    await watcher.waitMessages(2);
    await peers[2].send(channel, "TASK", "t1", "COMPLETED");
    await watcher.waitMessages(3);
    await peers[0].send(channel, "FINISHED");
    assert.deepEqual(await watcher.waitMessages(4), [
      '{"command": "DOWNLOADED"}',
      '{"command": "STARTED"}',
      '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}',
      '{"command": "FINISHED"}',
    ]);
    assert.equal((await watcher.waitClose()).code, 1000);
  });

  test("several peers sending concurrently to different channels are all relayed", async () => {
    const peers = await Promise.all([broker(), broker(), broker(), broker()]);
    const channels = peers.map(() => channelName("concurrent"));
    const watchers = await Promise.all(channels.map((c) => browser(c)));
    await Promise.all(
      peers.map(async (p, i) => {
        for (let n = 0; n < 50; n++) await p.send(channels[i], "TASK", `t${n}`, "COMPLETED");
      }),
    );
    for (const w of watchers) {
      const got = await w.waitMessages(50);
      assert.deepEqual(got, Array.from({ length: 50 }, (_, n) => `{"command": "TASK", "task_id": "t${n}", "task_state": "COMPLETED"}`));
    }
  });
});

describe("the JSON relayed to browsers is byte for byte what the original sends", () => {
  const cases: [string, string[], string][] = [
    ["plain ASCII", ["TASK", "t1", "COMPLETED"], '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}'],
    ["a command alone", ["DOWNLOADED"], '{"command": "DOWNLOADED"}'],
    ["a command and a task id (missing frames are missing keys)", ["TASK", "t1"], '{"command": "TASK", "task_id": "t1"}'],
    ["non-ASCII as lowercase \\uXXXX", ["TASK", "úkol-2", "FAILED"], '{"command": "TASK", "task_id": "\\u00fakol-2", "task_state": "FAILED"}'],
    ["an astral character as a surrogate pair", ["TASK", "😀", "SKIPPED"], '{"command": "TASK", "task_id": "\\ud83d\\ude00", "task_state": "SKIPPED"}'],
    ["quotes and backslashes", ["TASK", 'a"b\\c', "x"], '{"command": "TASK", "task_id": "a\\"b\\\\c", "task_state": "x"}'],
    ["control characters and DEL", ["TASK", "\x00\x01\x1f\x7f", "\n\r\t\b\f"], '{"command": "TASK", "task_id": "\\u0000\\u0001\\u001f\\u007f", "task_state": "\\n\\r\\t\\b\\f"}'],
    ["frames past the task state ignored", ["TASK", "t9", "FAILED", "extra", "more"], '{"command": "TASK", "task_id": "t9", "task_state": "FAILED"}'],
  ];
  for (const [name, frames, expected] of cases) {
    test(name, async () => {
      const b = await broker();
      const channel = channelName("json");
      const watcher = await browser(channel);
      await b.sendFrames([channel, ...frames]);
      const [got] = await watcher.waitMessages(1);
      assert.equal(got, expected);
      assert.equal(watcher.ws.readyState, watcher.ws.OPEN);
    });
  }

  test("a non-ASCII channel id from the broker matches the same id sent by the browser", async () => {
    const b = await broker();
    const channel = channelName("kanál_ž😀");
    const watcher = await browser(channel);
    await b.send(channel, "STARTED");
    assert.deepEqual(await watcher.waitMessages(1), ['{"command": "STARTED"}']);
  });

  test("an unknown command is forwarded as is, as the original does", async () => {
    const b = await broker();
    const channel = channelName("anycmd");
    const watcher = await browser(channel);
    await b.send(channel, "SOMETHING_NEW");
    assert.deepEqual(await watcher.waitMessages(1), ['{"command": "SOMETHING_NEW"}']);
  });
});

describe("malformed ZeroMQ messages are logged as skipped and the monitor keeps serving", () => {
  test("a message with nothing after the channel frame", async () => {
    const channel = channelName("only_channel");
    const watcher = await browser(channel);
    const peer = await expectSkipped([channel], /skipped: no command frame/);
    assert.deepEqual(await s.beforeMarker(watcher, channel, peer), [], "nothing is forwarded for it");
  });

  test("a message with nothing after the routing id", async () => {
    const b = await broker();
    const channel = channelName("warmup");
    const watcher = await browser(channel);
    await b.send(channel, "STARTED"); // the connection is up
    await watcher.waitMessages(1);
    const before = count(s.monitor.output(), /ZeroMQ message skipped/);
    // libzmq may drop a ROUTER message that consists of the routing id alone before it
    // leaves the sender; either way the monitor must stay up and keep relaying.
    await b.socket.send(["recodex-monitor"]).catch(() => {});
    await b.send(channel, "ENDED");
    assert.deepEqual(await watcher.waitMessages(2), ['{"command": "STARTED"}', '{"command": "ENDED"}']);
    assert.ok(count(s.monitor.output(), /ZeroMQ message skipped/) <= before + 1);
    assert.equal(s.monitor.child.exitCode, null);
  });

  test("an empty channel frame (and nothing else)", async () => {
    await expectSkipped([""], /skipped: empty channel id/);
  });

  test("an empty channel id with a command", async () => {
    await expectSkipped(["", "STARTED"], /skipped: empty channel id/);
  });

  test("invalid UTF-8 in the channel frame", async () => {
    await expectSkipped([Buffer.from([0x6a, 0xc3, 0x28]), "STARTED"], /skipped: channel id is not valid UTF-8/);
  });

  test("invalid UTF-8 in the command frame", async () => {
    const channel = channelName("bad_cmd");
    const watcher = await browser(channel);
    const peer = await expectSkipped([channel, Buffer.from([0xff, 0xfe])], /skipped: command frame is not valid UTF-8/);
    assert.deepEqual(await s.beforeMarker(watcher, channel, peer), []);
  });

  test("invalid UTF-8 in the task id frame", async () => {
    await expectSkipped(["bad_task", "TASK", Buffer.from([0x80]), "COMPLETED"], /skipped: task_id frame is not valid UTF-8/);
  });

  test("invalid UTF-8 in the task state frame", async () => {
    await expectSkipped(["bad_state", "TASK", "t1", Buffer.from([0xc0, 0xaf])], /skipped: task_state frame is not valid UTF-8/);
  });

  test("a 1 MB channel id", async () => {
    await expectSkipped(["x".repeat(1024 * 1024), "STARTED"], /skipped: channel id of 1048576 bytes \(limit 256\)/);
  });

  test("the log line names the channel of a skipped message when it has one", async () => {
    await expectSkipped(["named_channel_for_log", Buffer.from([0xff])], /skipped: command frame is not valid UTF-8 \(channel named_channel_for_log\)/);
  });
});

describe("a peer that is not the monitor's ROUTER", () => {
  test("a DEALER connecting to the monitor can send too (frames after its identity)", async () => {
    const dealer = new zmq.Dealer({ linger: 0 });
    try {
      dealer.connect(`tcp://127.0.0.1:${s.monitor.zmqPort}`);
      const channel = channelName("dealer");
      const watcher = await browser(channel);
      await dealer.send([channel, "STARTED"]);
      assert.deepEqual(await watcher.waitMessages(1), ['{"command": "STARTED"}']);
    } finally {
      dealer.close();
    }
  });
});
