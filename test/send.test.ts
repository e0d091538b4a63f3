// `recodex-monitor send`, run for real: what a browser receives from it, that it waits for
// the monitor instead of dropping, and its errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeMessage } from "../src/frames.ts";
import { jobMessages } from "../src/send.ts";
import { NOBODY, startCli, startWatch } from "./helpers/cli.ts";
import { metric } from "./helpers/http.ts";
import { monitor, runCli, writeConfig } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { waitUntil } from "./helpers/wait.ts";

test("send CHANNEL COMMAND reaches a subscribed browser; a TASK takes its id and state", async (t) => {
  const r = await relay(t);
  const b = await r.subscribe("student_s1");
  const one = await runCli(["send", "student_s1", "DOWNLOADED", "-c", r.monitor.configWithPorts()]);
  assert.equal(one.code, 0, one.stderr);
  assert.equal(one.stdout, `sent {"command": "DOWNLOADED"}\n`);
  const task = await runCli(["send", "student_s1", "TASK", "úkol-1", "COMPLETED", "--zmq", `tcp://127.0.0.1:${r.monitor.zmqPort}`]);
  assert.equal(task.code, 0, task.stderr);
  const json = `{"command": "TASK", "task_id": "\\u00fakol-1", "task_state": "COMPLETED"}`;
  assert.equal(task.stdout, `sent ${json}\n`);
  assert.deepEqual(await b.waitMessages(2), [`{"command": "DOWNLOADED"}`, json]);
});

test("send --job plays a whole job; the browser gets it in order and is closed with 1000", async (t) => {
  const r = await relay(t);
  const b = await r.subscribe("student_s2");
  const sent = await runCli(["send", "student_s2", "--job", "--tasks", "3", "-c", r.monitor.configWithPorts()]);
  assert.equal(sent.code, 0, sent.stderr);
  const expected = [
    `{"command": "DOWNLOADED"}`,
    `{"command": "STARTED"}`,
    `{"command": "TASK", "task_id": "compilation", "task_state": "COMPLETED"}`,
    `{"command": "TASK", "task_id": "test01", "task_state": "COMPLETED"}`,
    `{"command": "TASK", "task_id": "test02", "task_state": "COMPLETED"}`,
    `{"command": "ENDED"}`,
    `{"command": "UPLOADED"}`,
    `{"command": "FINISHED"}`,
  ];
  assert.deepEqual(sent.stdout.trimEnd().split("\n"), expected.map((j) => `sent ${j}`));
  assert.equal((await b.waitClose()).code, 1000);
  assert.deepEqual(b.messages, expected);
  assert.deepEqual(jobMessages(3).map((s) => encodeMessage(s)), expected);
});

test("send --job --interval spaces the messages out: a watcher sees them come one by one", async (t) => {
  const m = await monitor(t);
  const config = m.configWithPorts();
  const w = await startWatch(t, m, "student_s3", ["-c", config, "-t"]);
  const sent = await runCli(["send", "student_s3", "--job", "--tasks", "1", "--interval", "0.1", "-c", config]);
  assert.equal(sent.code, 0, sent.stderr);
  assert.equal(await w.exited, 0, w.stderr());
  const times = w.stdout().trimEnd().split("\n").map((l) => Date.parse(l.slice(0, 24)));
  assert.equal(times.length, 6);
  // Five gaps of at least 0.1 s each (a timer never fires early).
  assert.ok(times[5] - times[0] >= 500, `${times[5] - times[0]} ms from first to last`);
});

test("send started while the monitor is down waits for it to come back and delivers; nothing is dropped", async (t) => {
  const gone = await monitor(t);
  const zmqPort = gone.zmqPort;
  await gone.stop("SIGTERM");
  const s = startCli(t, ["send", "student_s4", "--job", "--zmq", `tcp://127.0.0.1:${zmqPort}`, "--timeout", "20"]);
  const r = await relay(t, { zmqPort, extraYaml: "http:\n  enabled: true\n  on_websocket_port: true\n" });
  assert.equal(await s.exited, 0, s.stderr());
  await waitUntil(async () => (await metric(r.monitor.wsPort, "recodex_monitor_messages_in_total")) === 9, "the job's 9 messages in");
  const late = await r.subscribe("student_s4");
  await late.waitClose();
  assert.deepEqual(late.messages, jobMessages(4).map((step) => encodeMessage(step)));
});

test("send to nothing listening: exit 8 within --timeout, naming the address", async () => {
  const r = await runCli(["send", "student_s5", "STARTED", "--zmq", `tcp://127.0.0.1:${NOBODY}`, "--timeout", "0.5"]);
  assert.equal(r.code, 8, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(`cannot reach the monitor's ZeroMQ socket at tcp://127\\.0\\.0\\.1:${NOBODY}: no ZeroMQ peer with routing id recodex-monitor answered .* within 0\\.5 s .*\\[RMON_ERR_UNREACHABLE\\]`),
  );
  assert.equal(r.stdout, "");
  assert.ok(r.ms < 8000, `took ${r.ms} ms`);
});

test("send's command line: a TASK needs both id and state; --job takes no COMMAND; the channel must be one the monitor takes", async () => {
  const config = writeConfig(`limits:\n  max_channel_id_length: 8\n`);
  const cases: [string[], RegExp][] = [
    [["send", "ch", "TASK", "t1"], /CHANNEL COMMAND TASK_ID TASK_STATE/],
    [["send", "ch"], /send takes CHANNEL COMMAND/],
    [["send", "ch", "STARTED", "--job"], /--job sends a whole job/],
    [["send", "ch", "STARTED", "--tasks", "3"], /--tasks and --interval go with --job/],
    [["send", "ch", "--job", "--tasks", "0"], /--tasks takes a whole number/],
    [["send", "ch", "--job", "--interval=-1"], /--interval takes a number of seconds/],
    [["send", "", "STARTED"], /CHANNEL must not be empty/],
    [["send", "student_long", "STARTED", "-c", config], /CHANNEL is 12 bytes; the monitor refuses more than 8 \(limits\.max_channel_id_length\)/],
    [["send", "ch", "STARTED", "--zmq", "127.0.0.1:7894"], /--zmq takes tcp:\/\/HOST:PORT/],
    [["send", "ch", "STARTED", "--zmq", "tcp://127.0.0.1:1", "-c", config], /not both/],
    [["send", "ch", "A", "B", "C", "D"], /unexpected argument 'D'/],
  ];
  for (const [args, pattern] of cases) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, pattern, args.join(" "));
    assert.match(r.stderr, /Try 'recodex-monitor send --help'/);
  }
  const help = await runCli(["send", "-h"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: recodex-monitor send CHANNEL COMMAND \[TASK_ID TASK_STATE\]/);
});

test("a monitor that goes away in the middle of a job: exit 8, saying how many messages went out", async (t) => {
  const m = await monitor(t);
  const s = startCli(t, ["send", "student_s6", "--job", "--interval", "1", "--timeout", "1", "-c", m.configWithPorts()]);
  await s.waitFor(/sent \{"command": "DOWNLOADED"\}\n/);
  await m.stop("SIGKILL");
  assert.equal(await s.exited, 8, s.stderr());
  assert.match(s.stderr(), /no ZeroMQ peer .* within 1 s \(after \d of 9 messages\) \(did the monitor stop\?\) \[RMON_ERR_UNREACHABLE\]/);
});
