// The channel store on its own, with an injected clock: history, replay, live delivery,
// FINISHED, retention by time and by size.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChannelStore, type CloseReason, type RetentionLimits, type Subscriber } from "../src/channel-store.ts";

const LIMITS: RetentionLimits = {
  finished_ttl: 300,
  idle_ttl: 3600,
  max_channels: 1000,
  max_messages_per_channel: 10_000,
  max_bytes_per_channel: 1024 * 1024,
  max_total_bytes: 256 * 1024 * 1024,
};

class Clock {
  t = 1_000_000;
  now = (): number => this.t;
  advance(seconds: number): void {
    this.t += seconds * 1000;
  }
}

class Sub implements Subscriber {
  got: string[] = [];
  offsets: number[] = [];
  gaps: number[] = [];
  ended: CloseReason | null = null;
  send(json: string, offset: number): void {
    assert.equal(this.ended, null, "message after end");
    this.got.push(json);
    this.offsets.push(offset);
  }
  gap(first: number): void {
    this.gaps.push(first);
  }
  end(close: CloseReason): void {
    assert.equal(this.ended, null, "ended twice");
    this.ended = close;
  }
  /** The close code it was ended with (null while still subscribed). */
  code(): number | null {
    return this.ended?.code ?? null;
  }
}

const msg = (command: string, extra = ""): string => `{"command": "${command}"${extra}}`;

function setup(limits: Partial<RetentionLimits> = {}) {
  const clock = new Clock();
  const dropped: { id: string; cause: string }[] = [];
  const truncated: string[] = [];
  const late: string[] = [];
  const store = new ChannelStore(
    { ...LIMITS, ...limits },
    {
      dropped: (ch, cause) => dropped.push({ id: ch.id, cause }),
      truncated: (ch) => truncated.push(ch.id),
      late: (ch, command) => late.push(`${ch.id}:${command}`),
    },
    clock.now,
  );
  const publish = (id: string, command: string, extra = "") => store.publish(id, command, msg(command, extra));
  return { clock, store, dropped, truncated, late, publish };
}

test("a subscriber gets the history first, then live messages, in order", () => {
  const { store, publish } = setup();
  publish("c", "DOWNLOADED");
  publish("c", "STARTED");
  const sub = new Sub();
  store.subscribe("c", sub);
  assert.deepEqual(sub.got, [msg("DOWNLOADED").toString(), msg("STARTED").toString()]);
  publish("c", "TASK");
  assert.deepEqual(sub.got.at(-1), msg("TASK").toString());
  assert.deepEqual(sub.offsets, [0, 1, 2]);
  assert.equal(sub.ended, null);
});

test("every subscriber of a channel gets every message; other channels get none", () => {
  const { store, publish } = setup();
  const a = new Sub();
  const b = new Sub();
  const other = new Sub();
  store.subscribe("c", a);
  store.subscribe("c", b);
  store.subscribe("d", other);
  publish("c", "STARTED");
  publish("c", "ENDED");
  assert.deepEqual(a.got, [msg("STARTED").toString(), msg("ENDED").toString()]);
  assert.deepEqual(b.got, a.got);
  assert.deepEqual(other.got, []);
});

test("FINISHED is delivered and then every subscriber is ended with 1000", () => {
  const { store, publish } = setup();
  const a = new Sub();
  store.subscribe("c", a);
  publish("c", "STARTED");
  publish("c", "FINISHED");
  assert.deepEqual(a.got, [msg("STARTED").toString(), msg("FINISHED").toString()]);
  assert.equal(a.code(), 1000);
  assert.equal(store.get("c")?.subscribers.size, 0);
});

test("a subscriber after FINISHED gets the whole history, FINISHED included, then 1000", () => {
  const { store, publish } = setup();
  publish("c", "STARTED");
  publish("c", "FINISHED");
  const late = new Sub();
  store.subscribe("c", late);
  assert.deepEqual(late.got, [msg("STARTED").toString(), msg("FINISHED").toString()]);
  assert.equal(late.code(), 1000);
});

test("messages after FINISHED are neither stored nor delivered", () => {
  const { store, publish, late } = setup();
  publish("c", "FINISHED");
  publish("c", "STARTED");
  publish("c", "FINISHED");
  const sub = new Sub();
  store.subscribe("c", sub);
  assert.deepEqual(sub.got, [msg("FINISHED").toString()]);
  assert.deepEqual(late, ["c:STARTED", "c:FINISHED"]);
  assert.equal(store.counters.late, 2);
});

test("unsubscribe stops delivery to that subscriber only", () => {
  const { store, publish } = setup();
  const a = new Sub();
  const b = new Sub();
  store.subscribe("c", a);
  store.subscribe("c", b);
  store.unsubscribe("c", a);
  publish("c", "STARTED");
  assert.deepEqual(a.got, []);
  assert.equal(b.got.length, 1);
});

test("a finished channel is dropped finished_ttl after FINISHED, not before", () => {
  const { store, publish, clock, dropped } = setup({ finished_ttl: 300 });
  publish("c", "STARTED");
  publish("c", "FINISHED");
  clock.advance(299);
  store.sweep();
  assert.ok(store.get("c"), "dropped too early");
  clock.advance(1);
  store.sweep();
  assert.equal(store.get("c"), undefined);
  assert.deepEqual(dropped, [{ id: "c", cause: "finished" }]);
  const sub = new Sub();
  store.subscribe("c", sub);
  assert.deepEqual(sub.got, [], "a late subscriber must not get the old history");
  assert.equal(store.totalBytes, 0);
  assert.equal(store.totalMessages, 0);
});

test("a channel without messages for idle_ttl is dropped and its subscribers ended with 4000", () => {
  const { store, publish, clock, dropped } = setup({ idle_ttl: 60 });
  const sub = new Sub();
  store.subscribe("c", sub);
  publish("c", "STARTED");
  clock.advance(59);
  publish("c", "TASK");
  clock.advance(59);
  store.sweep();
  assert.equal(sub.ended, null, "activity must re-arm the idle timer");
  clock.advance(1);
  store.sweep();
  assert.equal(sub.code(), 4000);
  assert.equal(store.get("c"), undefined);
  assert.deepEqual(dropped, [{ id: "c", cause: "idle" }]);
});

test("a channel that only has a subscriber (no message ever) expires after idle_ttl", () => {
  const { store, clock } = setup({ idle_ttl: 10 });
  const sub = new Sub();
  store.subscribe("never", sub);
  clock.advance(10);
  store.sweep();
  assert.equal(sub.code(), 4000);
  assert.equal(store.size, 0);
});

test("a second FINISHED does not re-arm the ttl of the finished channel", () => {
  const { store, publish, clock } = setup({ finished_ttl: 100 });
  publish("c", "FINISHED");
  clock.advance(90);
  publish("c", "FINISHED");
  clock.advance(10);
  store.sweep();
  assert.equal(store.get("c"), undefined, "the first FINISHED sets the ttl");
});

test("a channel recreated under the same id survives its own lifetime after the old one was dropped", () => {
  const { store, publish, clock } = setup({ finished_ttl: 100, idle_ttl: 1000 });
  publish("c", "STARTED");
  publish("c", "FINISHED");
  publish("c", "FINISHED"); // late, ignored
  clock.advance(100);
  store.sweep();
  assert.equal(store.get("c"), undefined);
  publish("c", "DOWNLOADED");
  const sub = new Sub();
  store.subscribe("c", sub);
  for (let i = 0; i < 5; i++) {
    clock.advance(50);
    store.sweep();
  }
  assert.equal(sub.ended, null, "the new channel was dropped by the old one's timer");
  assert.deepEqual(sub.got, [msg("DOWNLOADED").toString()]);
  publish("c", "FINISHED");
  assert.equal(sub.code(), 1000);
  clock.advance(99);
  store.sweep();
  assert.ok(store.get("c"));
  clock.advance(1);
  store.sweep();
  assert.equal(store.get("c"), undefined);
});

test("at max_channels the oldest channel is evicted and its subscribers ended with 4001", () => {
  const { store, publish, clock, dropped } = setup({ max_channels: 3 });
  const first = new Sub();
  store.subscribe("a", first);
  publish("a", "STARTED");
  clock.advance(1);
  publish("b", "STARTED");
  clock.advance(1);
  publish("c", "STARTED");
  clock.advance(1);
  publish("d", "STARTED");
  assert.equal(store.size, 3);
  assert.equal(store.get("a"), undefined);
  assert.ok(store.get("d"));
  assert.equal(first.code(), 4001);
  assert.deepEqual(dropped, [{ id: "a", cause: "evicted" }]);
});

test("eviction prefers finished channels over live ones, then the least recently active", () => {
  const { store, publish, clock } = setup({ max_channels: 3 });
  publish("a", "STARTED");
  clock.advance(1);
  publish("b", "STARTED");
  clock.advance(1);
  publish("c", "FINISHED");
  clock.advance(1);
  publish("a", "TASK"); // a is now more recent than b
  publish("d", "STARTED");
  assert.equal(store.get("c"), undefined, "the finished channel goes first");
  publish("e", "STARTED");
  assert.equal(store.get("b"), undefined, "then the least recently active one");
  assert.ok(store.get("a"));
  assert.ok(store.get("d"));
  assert.ok(store.get("e"));
});

test("at max_messages_per_channel the oldest history is dropped, FINISHED kept, live subscribers get everything", () => {
  const { store, publish, truncated } = setup({ max_messages_per_channel: 3 });
  const live = new Sub();
  store.subscribe("c", live);
  for (let i = 0; i < 10; i++) publish("c", `M${i}`);
  publish("c", "FINISHED");
  assert.equal(live.got.length, 11);
  assert.equal(live.code(), 1000);
  const late = new Sub();
  store.subscribe("c", late);
  assert.deepEqual(late.got, [msg("M8"), msg("M9"), msg("FINISHED")].map(String));
  assert.deepEqual(late.offsets, [8, 9, 10]);
  assert.equal(late.code(), 1000);
  assert.deepEqual(truncated, ["c"]);
  assert.equal(store.totalMessages, 3);
});

test("at max_bytes_per_channel the oldest history is dropped and FINISHED is kept", () => {
  const { store, publish } = setup({ max_bytes_per_channel: 1024 });
  const big = "x".repeat(300);
  const live = new Sub();
  store.subscribe("c", live);
  for (let i = 0; i < 10; i++) publish("c", `M${i}`, `, "pad": "${big}"`);
  publish("c", "FINISHED");
  assert.equal(live.got.length, 11);
  const ch = store.get("c")!;
  assert.ok(ch.bytes <= 1024, `channel holds ${ch.bytes} bytes`);
  const late = new Sub();
  store.subscribe("c", late);
  assert.equal(late.got.at(-1), msg("FINISHED").toString());
  assert.ok(late.got.length < 11 && late.got.length >= 2);
  assert.equal(store.totalBytes, ch.bytes);
});

test("a single message larger than max_bytes_per_channel is still kept as the last one", () => {
  const { store, publish } = setup({ max_bytes_per_channel: 1024 });
  publish("c", "BIG", `, "pad": "${"y".repeat(2000)}"`);
  const sub = new Sub();
  store.subscribe("c", sub);
  assert.equal(sub.got.length, 1);
});

test("above max_total_bytes whole channels are evicted, oldest first, never the one just written", () => {
  const { store, publish, clock, dropped } = setup({ max_total_bytes: 2048, max_bytes_per_channel: 1024 });
  const pad = `, "pad": "${"z".repeat(900)}"`;
  publish("a", "A", pad);
  clock.advance(1);
  publish("b", "B", pad);
  clock.advance(1);
  const subA = new Sub();
  store.subscribe("a", subA);
  publish("c", "C", pad);
  assert.ok(store.totalBytes <= 2048, `total ${store.totalBytes}`);
  assert.equal(store.get("a"), undefined);
  assert.ok(store.get("b"));
  assert.ok(store.get("c"));
  assert.equal(subA.code(), 4001);
  assert.deepEqual(dropped.map((d) => d.cause), ["evicted"]);
});

test("totals follow publishes, trims and drops exactly", () => {
  const { store, publish, clock } = setup({ max_messages_per_channel: 2, finished_ttl: 1 });
  publish("a", "AA"); // {"command": "AA"} = 17 bytes
  publish("a", "BB");
  publish("a", "CC");
  assert.equal(store.totalMessages, 2);
  assert.equal(store.totalBytes, 34);
  publish("a", "FINISHED");
  clock.advance(1);
  store.sweep();
  assert.equal(store.totalMessages, 0);
  assert.equal(store.totalBytes, 0);
  assert.equal(store.size, 0);
});

test("clear ends every subscriber with the given close and forgets every channel", () => {
  const { store, publish } = setup();
  const a = new Sub();
  const b = new Sub();
  store.subscribe("a", a);
  store.subscribe("b", b);
  publish("a", "STARTED");
  store.clear({ code: 1001, reason: "bye" });
  assert.equal(a.code(), 1001);
  assert.equal(b.code(), 1001);
  assert.equal(store.size, 0);
  assert.equal(store.totalBytes, 0);
});

test("a resuming subscriber gets only what follows its offset, or a gap when that is gone", () => {
  const { store, publish } = setup({ max_messages_per_channel: 3 });
  for (let i = 0; i < 5; i++) publish("c", `M${i}`);
  const resumed = new Sub();
  store.subscribe("c", resumed, 3);
  assert.deepEqual(resumed.offsets, [4]);
  assert.deepEqual(resumed.gaps, []);
  const tooOld = new Sub();
  store.subscribe("c", tooOld, 0);
  assert.deepEqual(tooOld.gaps, [2]);
  assert.deepEqual(tooOld.offsets, [2, 3, 4]);
});

test("sweepInterval is a tenth of the shortest ttl, between 20 ms and 1 s", () => {
  assert.equal(setup({ finished_ttl: 0.3, idle_ttl: 10 }).store.sweepInterval(), 30);
  assert.equal(setup({ finished_ttl: 0.01 }).store.sweepInterval(), 20);
  assert.equal(setup().store.sweepInterval(), 1000);
});

test("resuming into a channel that was dropped and came back reports a gap, even when the new one has more messages than the client saw", () => {
  const clock = new Clock();
  const store = new ChannelStore({ ...LIMITS, idle_ttl: 10 }, {}, clock.now);
  for (let i = 0; i < 5; i++) store.publish("x", "TASK", `{"command": "OLD${i}"}`);
  const old = new Sub();
  store.subscribe("x", old);
  const seen = old.offsets.at(-1)!;
  clock.advance(11);
  store.sweep();
  assert.equal(old.code(), 4000);
  for (let i = 0; i < 10; i++) store.publish("x", "TASK", `{"command": "NEW${i}"}`);
  const resumed = new Sub();
  store.subscribe("x", resumed, seen);
  assert.equal(resumed.gaps.length, 1, "the client is told that what it had is gone");
  assert.equal(resumed.got.length, 10, "and then gets the whole new history");
  assert.ok(resumed.offsets.every((o) => o > seen + 1), "no new offset can be mistaken for an old one");
});

test("a client that was fully caught up on a dropped channel is told of the gap when it resumes into the empty new one", () => {
  const clock = new Clock();
  const store = new ChannelStore({ ...LIMITS, finished_ttl: 1 }, {}, clock.now);
  store.publish("y", "DOWNLOADED", '{"command": "DOWNLOADED"}');
  store.publish("y", "FINISHED", '{"command": "FINISHED"}');
  clock.advance(2);
  store.sweep();
  const resumed = new Sub();
  store.subscribe("y", resumed, 1);
  assert.equal(resumed.gaps.length, 1);
});

// ---- channels only browsers asked for (issue 10) ----------------------------------------

function waitingSetup(limits: Partial<RetentionLimits>, maxWaiting: number) {
  const clock = new Clock();
  const refused: string[] = [];
  const store = new ChannelStore({ ...LIMITS, ...limits }, { waitingRefused: (id) => refused.push(id) }, clock.now, { maxWaiting });
  return { clock, store, refused };
}

test("a subscription to a channel no broker wrote to counts against no cap and never evicts a broker channel", () => {
  const { store } = waitingSetup({ max_channels: 2, max_total_bytes: 1024 }, 100);
  const real = [new Sub(), new Sub()];
  store.publish("r1", "STARTED", msg("STARTED"));
  store.publish("r2", "STARTED", msg("STARTED"));
  store.subscribe("r1", real[0]);
  store.subscribe("r2", real[1]);
  for (let i = 0; i < 50; i++) store.subscribe(`attacker_${i}`, new Sub());
  assert.equal(store.size, 2);
  assert.equal(store.waitingChannels, 50);
  assert.deepEqual(real.map((s) => s.code()), [null, null]);
  assert.equal(store.counters.evicted, 0);
  assert.equal(store.totalMessages, 2);
});

test("past store.max_waiting_channels a subscription to one more unknown channel is closed with 4001; known ones still join", () => {
  const { store, refused } = waitingSetup({}, 2);
  const a = new Sub();
  const a2 = new Sub();
  const b = new Sub();
  const c = new Sub();
  store.subscribe("a", a);
  store.subscribe("b", b);
  store.subscribe("a", a2);
  store.subscribe("c", c);
  assert.equal(c.code(), 4001);
  assert.deepEqual(refused, ["c"]);
  assert.equal(store.counters.waitingRefused, 1);
  assert.deepEqual([a.code(), a2.code(), b.code()], [null, null, null]);
});

test("a waiting channel vanishes with its last subscriber, and becomes a kept channel with its first broker message", () => {
  const { store } = waitingSetup({}, 10);
  const gone = new Sub();
  store.subscribe("gone", gone);
  store.unsubscribe("gone", gone);
  assert.equal(store.waitingChannels, 0);
  const waiter = new Sub();
  store.subscribe("job", waiter);
  store.publish("job", "DOWNLOADED", msg("DOWNLOADED"));
  assert.deepEqual(waiter.got, [msg("DOWNLOADED")]);
  assert.equal(store.waitingChannels, 0);
  assert.equal(store.size, 1);
  store.publish("job", "FINISHED", msg("FINISHED"));
  assert.equal(waiter.code(), 1000);
});

test("a resume into a channel nobody has is told of the gap with an offset at or below the channel's first one", () => {
  const { store } = waitingSetup({}, 10);
  store.publish("other", "X", msg("X"));
  const r = new Sub();
  store.subscribe("fresh", r, 7);
  store.publish("fresh", "DOWNLOADED", msg("DOWNLOADED"));
  assert.equal(r.gaps.length, 1);
  assert.ok(r.gaps[0] <= r.offsets[0], `gap ${r.gaps[0]} then offset ${r.offsets[0]}`);
});

test("close ends waiting subscribers too", () => {
  const { store } = waitingSetup({}, 10);
  const w = new Sub();
  store.subscribe("w", w);
  store.clear({ code: 1001, reason: "bye" });
  assert.equal(w.code(), 1001);
  assert.equal(store.waitingChannels, 0);
});

test("history survives a snapshot and a restore byte for byte, whatever its characters", () => {
  const { store, publish } = setup();
  const odd = ['{"command": "TASK", "task_id": "úloha", "task_state": "OK"}', '{"command": "TASK", "task_id": "\ud800", "task_state": "🚀"}'];
  publish("c", "STARTED");
  for (const json of odd) store.publish("c", "TASK", json);
  for (let i = 0; i < 30; i++) publish("c", "TASK", `, "task_id": "t${i}", "task_state": "COMPLETED"`);
  const saved = store.snapshot();
  const again = setup().store;
  again.restore(saved);
  const sub = new Sub();
  again.subscribe("c", sub);
  assert.deepEqual(sub.got, saved.channels[0].history);
  assert.deepEqual(sub.got.slice(1, 3), odd);
  assert.equal(again.totalBytes, store.totalBytes);
});

test("blocks of dropped channels and of messages trimmed at a cap go back for reuse: as much history again needs no new buffer", () => {
  const { store, publish } = setup({ max_bytes_per_channel: 16 * 1024, max_messages_per_channel: 1e9 });
  // ~3 MB through one capped channel: without trimmed blocks coming back, three buffers.
  for (let i = 0; i < 50_000; i++) publish("capped", "TASK", `, "task_id": "t${i}", "task_state": "COMPLETED"`);
  assert.equal(store.historyBufferBytes, 1024 * 1024);
  const sub = new Sub();
  store.subscribe("capped", sub);
  assert.equal(sub.got.at(-1), msg("TASK", ', "task_id": "t49999", "task_state": "COMPLETED"'));
  assert.ok(sub.got.length > 100 && sub.got.length < 400, `${sub.got.length} kept`);
  // Channels dropped at shutdown give theirs back: as much history again needs no new buffer.
  const fill = (prefix: string) => {
    for (let c = 0; c < 500; c++) for (let m = 0; m < 40; m++) publish(`${prefix}${c}`, "TASK", `, "task_id": "t${m}", "task_state": "COMPLETED"`);
  };
  fill("a");
  const size = store.historyBufferBytes;
  assert.ok(size >= 2 * 1024 * 1024, `${size} bytes of buffers`);
  store.clear({ code: 1001, reason: "shutdown" });
  fill("b");
  assert.equal(store.historyBufferBytes, size);
  const late = new Sub();
  store.subscribe("b7", late);
  assert.deepEqual(late.got, Array.from({ length: 40 }, (_, m) => msg("TASK", `, "task_id": "t${m}", "task_state": "COMPLETED"`)));
});
