// Resumable streams: a client that offers the subprotocol "recodex-monitor.resume.v1" gets
// every message wrapped with its offset and can resume after a reconnect; legacy clients
// (no subprotocol) keep getting the original bytes.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { Browser, RESUME, upgradeOutcome } from "./helpers/browser.ts";
import { metrics } from "./helpers/http.ts";
import { monitor } from "./helpers/monitor-process.ts";
import { relay, type Relay } from "./helpers/relay.ts";

const DOWNLOADED = '{"command": "DOWNLOADED"}';
const STARTED = '{"command": "STARTED"}';
const TASK_UNICODE = '{"command": "TASK", "task_id": "\\u00fakol-2", "task_state": "FAILED"}';
const FINISHED = '{"command": "FINISHED"}';

const wrap = (offset: number, json: string) => `{"offset": ${offset}, "message": ${json}}`;
const gap = (first: number) => `{"gap": {"first_offset": ${first}}}`;
const task = (i: number) => `{"command": "TASK", "task_id": "t${i}", "task_state": "COMPLETED"}`;

/** A resumable client subscribed with `first` (a channel id or a resume request) to `channel`. */
async function resume(s: Relay, channel: string, first = channel): Promise<Browser> {
  const b = await s.subscribe(channel, { protocols: RESUME, first });
  assert.equal(b.ws.protocol, RESUME, "the monitor accepted the resume subprotocol");
  return b;
}

function setup(t: TestContext, extraYaml = ""): Promise<Relay> {
  return relay(t, { extraYaml });
}

test("a resumable client gets each message as {\"offset\": N, \"message\": <original bytes>}, a legacy client on the same channel the original bytes", async (t) => {
  const s = await setup(t);
  const r = await resume(s, "job_r");
  const l = await s.subscribe("job_r");
  await s.broker.send("job_r", "DOWNLOADED");
  await s.broker.send("job_r", "TASK", "úkol-2", "FAILED");
  await s.broker.send("job_r", "FINISHED");
  assert.deepEqual(await r.waitMessages(3), [wrap(0, DOWNLOADED), wrap(1, TASK_UNICODE), wrap(2, FINISHED)]);
  assert.deepEqual(await l.waitMessages(3), [DOWNLOADED, TASK_UNICODE, FINISHED]);
  assert.equal((await r.waitClose()).code, 1000);
  assert.equal((await l.waitClose()).code, 1000);
  assert.equal(l.ws.protocol, "");
  for (const frame of r.messages) {
    const parsed = JSON.parse(frame) as { offset: number; message: unknown };
    assert.equal(typeof parsed.offset, "number");
    assert.equal(typeof parsed.message, "object");
  }
});

test("a resumable client's first message may be JSON {\"channel\": ...} without after: the whole history, no gap", async (t) => {
  const s = await setup(t);
  await s.broker.send("job_j", "DOWNLOADED");
  await s.broker.send("job_j", "STARTED");
  await (await s.subscribe("job_j")).waitMessages(2);
  const r = await resume(s, "job_j", JSON.stringify({ channel: "job_j" }));
  assert.deepEqual(await r.waitMessages(2), [wrap(0, DOWNLOADED), wrap(1, STARTED)]);
  await s.broker.send("job_j", "FINISHED");
  assert.deepEqual(await r.waitMessages(3), [wrap(0, DOWNLOADED), wrap(1, STARTED), wrap(2, FINISHED)]);
  assert.equal((await r.waitClose()).code, 1000);
});

test("resuming with {\"channel\", \"after\": k} replays only offsets above k, then live messages continue the numbering", async (t) => {
  const s = await setup(t, "http:\n  enabled: true\n");
  const first = await resume(s, "job_k");
  for (let i = 0; i < 5; i++) await s.broker.send("job_k", "TASK", `t${i}`, "COMPLETED");
  await first.waitMessages(5);
  first.close(); // the browser lost its connection after offset 4... but only processed up to 2
  const again = await resume(s, "job_k", JSON.stringify({ channel: "job_k", after: 2 }));
  assert.deepEqual(await again.waitMessages(2), [wrap(3, task(3)), wrap(4, task(4))]);
  await s.broker.send("job_k", "FINISHED");
  assert.deepEqual(await again.waitMessages(3), [wrap(3, task(3)), wrap(4, task(4)), wrap(5, FINISHED)]);
  assert.equal((await again.waitClose()).code, 1000);
  assert.match(s.monitor.output(), /subscribed to channel job_k resuming after offset 2/);
  const got = await metrics(s.monitor.wsPort);
  assert.equal(got.value("recodex_monitor_resumes_total"), 1);
  assert.equal(got.value("recodex_monitor_subscriptions_total"), 2);
});

test("resuming after the last offset of a finished channel sends nothing and closes with 1000", async (t) => {
  const s = await setup(t);
  await s.broker.send("job_done", "DOWNLOADED");
  await s.broker.send("job_done", "FINISHED");
  assert.deepEqual(await (await s.subscribe("job_done")).waitMessages(2), [DOWNLOADED, FINISHED]);
  const r = await resume(s, "job_done", JSON.stringify({ channel: "job_done", after: 1 }));
  assert.equal((await r.waitClose()).code, 1000);
  assert.deepEqual(r.messages, []);
});

test("resuming after an offset older than the kept history first signals the gap, then sends the kept messages", async (t) => {
  const s = await setup(t, "retention:\n  max_messages_per_channel: 3\n");
  const live = await s.subscribe("job_trunc");
  for (let i = 0; i < 6; i++) await s.broker.send("job_trunc", "TASK", `t${i}`, "COMPLETED");
  await live.waitMessages(6);
  const l = await s.subscribe("job_trunc");
  assert.deepEqual(await l.waitMessages(3), [task(3), task(4), task(5)], "only the last 3 are kept");
  const r = await resume(s, "job_trunc", JSON.stringify({ channel: "job_trunc", after: 0 }));
  await s.broker.send("job_trunc", "FINISHED");
  assert.deepEqual(await r.waitMessages(5), [gap(3), wrap(3, task(3)), wrap(4, task(4)), wrap(5, task(5)), wrap(6, FINISHED)]);
  assert.equal((await r.waitClose()).code, 1000);
});

test("resuming right before the oldest kept message is not a gap", async (t) => {
  const s = await setup(t, "retention:\n  max_messages_per_channel: 3\n");
  const live = await s.subscribe("job_edge");
  for (let i = 0; i < 6; i++) await s.broker.send("job_edge", "TASK", `t${i}`, "COMPLETED");
  await live.waitMessages(6);
  const r = await resume(s, "job_edge", JSON.stringify({ channel: "job_edge", after: 2 }));
  await s.broker.send("job_edge", "FINISHED");
  assert.deepEqual(await r.waitMessages(4), [wrap(3, task(3)), wrap(4, task(4)), wrap(5, task(5)), wrap(6, FINISHED)]);
});

test("resuming a channel the monitor no longer has (FINISHED + finished_ttl passed) yields a gap signal", async (t) => {
  const s = await setup(t, "retention:\n  finished_ttl: 0.2\n");
  await s.broker.send("job_gone", "DOWNLOADED");
  await s.broker.send("job_gone", "FINISHED");
  await s.monitor.waitFor(/channel job_gone dropped \(finished_ttl passed/);
  const r = await resume(s, "job_gone", JSON.stringify({ channel: "job_gone", after: 1 }));
  const [first] = await r.waitMessages(1);
  const parsed = JSON.parse(first) as { gap?: { first_offset?: unknown } };
  assert.ok(parsed.gap !== undefined, `a gap signal, got ${first}`);
  assert.equal(typeof parsed.gap.first_offset, "number");
});

test("resuming after an offset the channel never reached (e.g. the monitor restarted) signals a gap and replays from the first kept message", async (t) => {
  const s = await setup(t);
  await s.broker.send("job_new", "DOWNLOADED");
  await s.broker.send("job_new", "STARTED");
  await (await s.subscribe("job_new")).waitMessages(2);
  const r = await resume(s, "job_new", JSON.stringify({ channel: "job_new", after: 10 }));
  assert.deepEqual(await r.waitMessages(3), [gap(0), wrap(0, DOWNLOADED), wrap(1, STARTED)]);
});

for (const bad of [
  "{not json",
  '{"channel": 5, "after": 1}',
  '{"after": 1}',
  '{"channel": "job", "after": 1.5}',
  '{"channel": "job", "after": -2}',
  '{"channel": "job", "after": "3"}',
  '{"channel": "", "after": 0}',
]) {
  test(`an invalid resume request ${bad} is closed with 1008`, async (t) => {
    const s = await setup(t);
    const r = await s.connect({ protocols: RESUME });
    r.ws.send(bad);
    assert.equal((await r.waitClose()).code, 1008);
    assert.deepEqual(r.messages, []);
  });
}

test("a legacy client whose channel id starts with '{' subscribes to exactly that id (no resume parsing)", async (t) => {
  const s = await setup(t);
  const id = '{"channel": "x", "after": 0}';
  const l = await s.subscribe(id);
  await s.broker.send(id, "FINISHED");
  assert.deepEqual(await l.waitMessages(1), [FINISHED]);
  assert.equal((await l.waitClose()).code, 1000);
});

test("the resume subprotocol is picked among several offered protocols", async (t) => {
  const m = await monitor(t);
  const o = await upgradeOutcome(`ws://127.0.0.1:${m.wsPort}/`, {}, ["chat.v2", RESUME]);
  t.after(() => o.browser.close());
  assert.equal(o.status, "open");
  assert.equal(o.browser.ws.protocol, RESUME);
});

test("with websocket.resumable: false the subprotocol is not accepted, legacy clients still work", async (t) => {
  const s = await setup(t, "websocket:\n  resumable: false\n");
  const b = new Browser(`ws://127.0.0.1:${s.monitor.wsPort}/`, RESUME);
  t.after(() => b.close());
  const accepted = await b.opened.then(
    () => b.ws.protocol,
    () => "",
  );
  assert.equal(accepted, "", "no subprotocol agreed");
  const l = await s.subscribe("job_plain");
  await s.broker.send("job_plain", "FINISHED");
  assert.deepEqual(await l.waitMessages(1), [FINISHED]);
});
