// store.state_file: the memory store's channels across a graceful restart, and every way the
// file can be bad (missing, truncated, damaged, another version, too large): one warning,
// an empty start, the bad file kept aside. Then the real monitor restarted mid-job.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { ChannelStore, type Snapshot } from "../src/channel-store.ts";
import { DEFAULTS } from "../src/config.ts";
import { StateFile, maxStateFileBytes } from "../src/state-file.ts";
import { RESUME, unwrap } from "./helpers/browser.ts";
import { metric, waitMetric } from "./helpers/http.ts";
import { monitor, tempDir } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";

const LIMITS = DEFAULTS.retention;
const msg = (command: string) => `{"command": "${command}"}`;

/** Where a state file goes in a fresh directory. */
const statePath = () => join(tempDir("rmon-state-"), "channels.state");

function recorder() {
  const lines: { level: string; line: string }[] = [];
  return { lines, notice: (level: string, line: string) => lines.push({ level, line }) };
}

function sampleSnapshot(): Snapshot {
  return {
    nextBase: 1000,
    channels: [
      { id: "job_a", baseOffset: 10, firstOffset: 10, nextOffset: 12, idleMs: 500, finishedMs: -1, truncated: false, history: [msg("DOWNLOADED"), msg("STARTED")] },
      { id: "job_ü\n", baseOffset: 20, firstOffset: 21, nextOffset: 22, idleMs: 100, finishedMs: 100, truncated: true, history: [msg("FINISHED")] },
    ],
  };
}

async function written(): Promise<string> {
  const path = statePath();
  await new StateFile(path, () => {}, () => 1_000_000).save(sampleSnapshot());
  return path;
}

test("a saved state reads back the same, with the time the monitor was down added to every age, and the file is gone after", async () => {
  const path = await written();
  assert.equal(statSync(path).mode & 0o777, 0o600);
  const log = recorder();
  const back = await new StateFile(path, log.notice, () => 1_000_000 + 2000).load(LIMITS);
  assert.ok(back);
  assert.equal(back.nextBase, 1000);
  assert.deepEqual(back.channels.map((c) => [c.id, c.idleMs, c.finishedMs, c.history]), [
    ["job_a", 2500, -1, [msg("DOWNLOADED"), msg("STARTED")]],
    ["job_ü\n", 2100, 2100, [msg("FINISHED")]],
  ]);
  assert.equal(existsSync(path), false, "a restored file is removed, so that a crash never brings it back");
  assert.deepEqual(log.lines, []);
});

const BAD: [string, (path: string) => void, RegExp][] = [
  ["truncated", (p) => truncateSync(p, statSync(p).size - 30), /truncated|not JSON/],
  ["damaged (one byte changed)", (p) => writeFileSync(p, readFileSync(p, "utf8").replace("STARTED", "STARTEX")), /checksum does not match/],
  ["not JSON at all", (p) => writeFileSync(p, "\u0000\u0001garbage\n"), /not JSON/],
  ["of another format version", (p) => writeFileSync(p, readFileSync(p, "utf8").replace('"version":1', '"version":2')), /format version 2, this monitor reads version 1/],
  ["not a state file", (p) => writeFileSync(p, '{"hello": "world"}\n'), /not a recodex-monitor state file/],
  ["empty", (p) => writeFileSync(p, ""), /empty/],
  ["with impossible offsets", (p) => writeFileSync(p, readFileSync(p, "utf8").replace('"first":10', '"first":5')), /impossible offsets|checksum/],
];

for (const [what, spoil, reason] of BAD) {
  test(`a state file ${what}: one warning naming it, nothing restored, the file kept aside`, async () => {
    const path = await written();
    spoil(path);
    const log = recorder();
    assert.equal(await new StateFile(path, log.notice).load(LIMITS), null);
    assert.equal(log.lines.length, 1);
    assert.equal(log.lines[0].level, "warning");
    assert.match(log.lines[0].line, reason);
    assert.match(log.lines[0].line, /kept aside as channels\.state\.bad-.*; starting with no channels$/);
    assert.equal(existsSync(path), false);
    assert.equal(readdirSync(dirname(path)).filter((f) => f.startsWith("channels.state.bad-")).length, 1);
  });
}

test("a state file larger than the retention caps allow is not read at all, and kept aside", async () => {
  const path = await written();
  const small = { ...LIMITS, max_total_bytes: 1024, max_channels: 1 };
  writeFileSync(path, Buffer.alloc(maxStateFileBytes(small) + 1, 0x20));
  const log = recorder();
  assert.equal(await new StateFile(path, log.notice).load(small), null);
  assert.match(log.lines[0].line, /more than the retention caps allow/);
  assert.equal(log.lines.length, 1);
});

test("a missing state file is one warning (the last stop was not graceful, or first start) and an empty start", async () => {
  const log = recorder();
  assert.equal(await new StateFile(statePath(), log.notice).load(LIMITS), null);
  assert.equal(log.lines.length, 1);
  assert.match(log.lines[0].line, /does not exist \(first start, or the last stop was not graceful.*\): starting with no channels/);
});

test("an unwritable state file is an error line, never a crash of the stop", async () => {
  const log = recorder();
  await new StateFile("/nonexistent-dir/channels.state", log.notice).save(sampleSnapshot());
  assert.equal(log.lines[0].level, "error");
  assert.match(log.lines[0].line, /NOT written.*ENOENT/);
});

test("restoring drops channels whose ttl ran out while the monitor was down and keeps within the caps; offsets continue", () => {
  const store = new ChannelStore({ ...LIMITS, finished_ttl: 1, idle_ttl: 10, max_channels: 2 }, {}, () => 5_000_000);
  const { dropped } = store.restore({
    nextBase: 500,
    channels: [
      { id: "old_finished", baseOffset: 1, firstOffset: 1, nextOffset: 2, idleMs: 1500, finishedMs: 1500, truncated: false, history: [msg("FINISHED")] },
      { id: "old_idle", baseOffset: 2, firstOffset: 2, nextOffset: 3, idleMs: 11_000, finishedMs: -1, truncated: false, history: [msg("STARTED")] },
      { id: "oldest_kept", baseOffset: 3, firstOffset: 3, nextOffset: 4, idleMs: 9000, finishedMs: -1, truncated: false, history: [msg("STARTED")] },
      { id: "b", baseOffset: 4, firstOffset: 4, nextOffset: 5, idleMs: 200, finishedMs: -1, truncated: false, history: [msg("STARTED")] },
      { id: "c", baseOffset: 5, firstOffset: 5, nextOffset: 7, idleMs: 100, finishedMs: -1, truncated: false, history: [msg("A"), msg("B")] },
    ],
  });
  assert.equal(store.size, 2, "max_channels");
  assert.equal(dropped, 3);
  assert.equal(store.get("c")?.nextOffset, 7);
  store.publish("c", "C", msg("C"));
  assert.equal(store.get("c")?.nextOffset, 8);
  store.publish("new", "X", msg("X"));
  assert.ok(store.get("new")!.baseOffset >= 500, "a new channel starts above every restored offset");
});

// ---- the real monitor ------------------------------------------------------------------

const yaml = (path: string) => `store:\n  state_file: "${path}"\nhttp:\n  enabled: true\n  on_websocket_port: true\n`;

test("the monitor restarted with store.state_file mid-job: a late joiner gets the whole history, a resumable client exactly what follows its offset", async (t) => {
  const path = statePath();
  const first = await relay(t, { extraYaml: yaml(path) });
  assert.match(first.monitor.output(), /state file .* does not exist/);
  const watcher = await first.subscribe("job_restart", { protocols: RESUME });
  for (const c of ["DOWNLOADED", "STARTED"]) await first.broker.send("job_restart", c);
  await first.broker.send("job_restart", "TASK", "t1", "COMPLETED");
  const before = unwrap(await watcher.waitMessages(3));
  assert.equal(await first.monitor.stop("SIGTERM"), 0);
  assert.equal((await watcher.waitClose()).code, 1001);
  assert.match(first.monitor.output(), /state file .* written: 1 channels, 3 messages/);

  const second = await relay(t, { extraYaml: yaml(path) });
  assert.match(second.monitor.output(), /\[INFO\] state file .* restored: 1 channels, 3 messages\n/);
  assert.equal(existsSync(path), false);
  const last = before[2] as { offset: number };
  const resumed = await second.subscribe("job_restart", { protocols: RESUME, first: JSON.stringify({ channel: "job_restart", after: (before[1] as { offset: number }).offset }) });
  assert.deepEqual(unwrap(await resumed.waitMessages(1)), [before[2]], "exactly what follows the offset");
  await second.broker.send("job_restart", "FINISHED");
  assert.deepEqual(unwrap(await resumed.waitMessages(2))[1], { offset: last.offset + 1, message: msg("FINISHED") });
  const late = await second.subscribe("job_restart");
  assert.deepEqual(await late.waitMessages(4), [msg("DOWNLOADED"), msg("STARTED"), '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}', msg("FINISHED")]);
  assert.equal((await late.waitClose()).code, 1000);
});

test("a SIGTERM while ZeroMQ holds messages the monitor has not read yet: they are taken in and saved, none lost", async (t) => {
  const path = statePath();
  const first = await relay(t, { extraYaml: yaml(path) });
  const m = first.monitor;
  await first.broker.send("job_drain", "DOWNLOADED");
  await waitMetric(m.wsPort, "recodex_monitor_messages_in_total", (v) => v >= 1);
  // Stopped, the monitor reads nothing: what the broker sends now waits in its socket.
  m.child.kill("SIGSTOP");
  const n = 5000;
  for (let i = 0; i < n; i++) await first.broker.send("job_drain", "TASK", `t${i}`, "COMPLETED");
  m.child.kill("SIGTERM");
  m.child.kill("SIGCONT");
  assert.equal(await m.exited, 0);
  assert.match(m.output(), new RegExp(`state file .* written: 1 channels, ${n + 1} messages`));

  const second = await relay(t, { extraYaml: yaml(path) });
  const late = await second.subscribe("job_drain");
  const got = await late.waitMessages(n + 1);
  assert.equal(got[0], msg("DOWNLOADED"));
  for (let i = 0; i < n; i++) assert.equal(got[i + 1], `{"command": "TASK", "task_id": "t${i}", "task_state": "COMPLETED"}`);
});

test("a monitor with a damaged state file starts empty with one warning and keeps the file aside", async (t) => {
  const path = statePath();
  writeFileSync(path, '{"format":"recodex-monitor channel state","version":1,"saved_at":0,"next_base":0,"channels":1}\n{"id":"x"');
  const m = await monitor(t, { extraYaml: yaml(path) });
  assert.match(m.output(), /\[WARNING\] state file .* not restored: line 2 is not JSON \(damaged\); kept aside as channels\.state\.bad-/);
  assert.equal((m.output().match(/state file/g) ?? []).length, 1);
  assert.equal(await metric(m.wsPort, "recodex_monitor_channels"), 0);
  assert.equal(readdirSync(dirname(path)).filter((f) => f.startsWith("channels.state.bad-")).length, 1);
});
