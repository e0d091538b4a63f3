// `recodex-monitor status` and the job metrics behind it, against a real monitor fed with
// the job sequences ReCodEx produces: every figure on /metrics and in `status --json`, at
// each stage (running, expired, evicted); the listing's gate; the endpoint's errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { NOBODY } from "./helpers/cli.ts";
import { httpGet, metric, metrics } from "./helpers/http.ts";
import { SEQUENCES, sendJob, type Step } from "./helpers/jobs.ts";
import { monitor, runCli, writeConfig, type MonitorProcess } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { CERT_A } from "./helpers/tls.ts";
import { waitUntil } from "./helpers/wait.ts";

const HTTP = "http:\n  enabled: true\n  on_websocket_port: true\n";

/** `status -c CONFIG ARGS` with the config naming the ports the monitor bound. */
function status(m: MonitorProcess, ...args: string[]) {
  return runCli(["status", "-c", m.configWithPorts(), ...args]);
}

async function statusJson(m: MonitorProcess, ...args: string[]) {
  const r = await status(m, "--json", ...args);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** Resolves once the monitor has counted `n` messages from the broker. */
function messagesIn(m: MonitorProcess, n: number): Promise<void> {
  return waitUntil(async () => (await metric(m.wsPort, "recodex_monitor_messages_in_total")) === n, `${n} messages in`);
}

interface Figures {
  inProgress: number;
  failedOrAborted: number;
  reassigned: number;
  ended: Record<"finished" | "failed" | "aborted" | "expired" | "evicted", number>;
  tasks: Record<"completed" | "failed" | "skipped" | "other", number>;
  evaluations: number;
  starts: number;
}

/** Checks every job figure on /metrics and in `status --json` against `want`. */
async function assertFigures(m: MonitorProcess, want: Figures, elapsedSeconds: number): Promise<void> {
  const got = await metrics(m.wsPort);
  const value = (name: string) => got.value(name);
  assert.equal(value("recodex_monitor_jobs_in_progress"), want.inProgress, "jobs_in_progress");
  assert.equal(value("recodex_monitor_jobs_failed_or_aborted"), want.failedOrAborted, "jobs_failed_or_aborted");
  assert.equal(value("recodex_monitor_jobs_reassigned_total"), want.reassigned, "jobs_reassigned_total");
  for (const [outcome, n] of Object.entries(want.ended)) {
    assert.equal(value(`recodex_monitor_jobs_ended_total{outcome="${outcome}"}`), n, `jobs_ended_total{outcome="${outcome}"}`);
  }
  for (const [state, n] of Object.entries(want.tasks)) {
    assert.equal(value(`recodex_monitor_tasks_total{state="${state}"}`), n, `tasks_total{state="${state}"}`);
  }
  for (const [name, n] of [
    ["recodex_monitor_job_evaluation_seconds", want.evaluations],
    ["recodex_monitor_job_downloaded_to_started_seconds", want.starts],
  ] as const) {
    assert.equal(value(`${name}_count`), n, `${name}_count`);
    assert.equal(value(`${name}_bucket{le="+Inf"}`), n, `${name} +Inf bucket`);
    const sum = value(`${name}_sum`);
    assert.ok(sum >= 0 && sum <= n * elapsedSeconds, `${name}_sum ${sum} for ${n} observations within ${elapsedSeconds} s`);
  }
  const s = await statusJson(m);
  assert.equal(s.jobs.in_progress, want.inProgress);
  assert.equal(s.jobs.failed_or_aborted, want.failedOrAborted);
  assert.equal(s.jobs.reassigned, want.reassigned);
  assert.deepEqual(s.jobs.ended, want.ended);
  assert.deepEqual(s.jobs.tasks, want.tasks);
  assert.equal(s.jobs.evaluation_seconds.count, want.evaluations);
  assert.equal(s.jobs.downloaded_to_started_seconds.count, want.starts);
}

test("job figures through a whole day's kinds of jobs: running, then expired, then evicted", async (t) => {
  const started = Date.now();
  const elapsed = () => (Date.now() - started) / 1000;
  const { monitor: m, broker } = await relay(t, { extraYaml: HTTP });
  const jobs: [string, readonly Step[]][] = [
    ["student_whole", SEQUENCES.whole],
    ["student_build_failure", SEQUENCES.buildFailure],
    ["student_broker_failed", SEQUENCES.brokerFailed],
    ["student_reassigned", SEQUENCES.reassigned],
    ["student_stalled", SEQUENCES.stalled],
    ["reference_broker_aborted", SEQUENCES.brokerAborted],
  ];
  for (const [channel, steps] of jobs) await sendJob(broker, channel, steps);
  const total = jobs.reduce((n, [, steps]) => n + steps.length, 0);
  await messagesIn(m, total);

  const none = { finished: 0, failed: 0, aborted: 0, expired: 0, evicted: 0 };
  // whole, build failure and reassigned finished; stalled runs; the broker's FAILED and
  // ABORTED wait for their channel to go.
  const running: Figures = {
    inProgress: 1,
    failedOrAborted: 2,
    reassigned: 1,
    ended: { ...none, finished: 3 },
    tasks: { completed: 5, failed: 1, skipped: 1, other: 0 },
    evaluations: 3,
    starts: 5,
  };
  await assertFigures(m, running, elapsed());
  const s = await statusJson(m);
  assert.deepEqual(s.store, { backend: "memory", up: true, channels: 6, finished: 3, unfinished: 3, messages: total, bytes: s.store.bytes });
  assert.equal(s.messages.in, total);

  // idle_ttl down to half a second: the three unfinished channels expire.
  m.editConfig((text) => text + "retention:\n  idle_ttl: 0.5\n");
  assert.match(await m.reload(), /retention\.idle_ttl: 3600 -> 0\.5/);
  await waitUntil(async () => (await metric(m.wsPort, "recodex_monitor_channels_expired_total")) === 3, "3 channels expired");
  const expired: Figures = { ...running, inProgress: 0, failedOrAborted: 0, ended: { ...none, finished: 3, failed: 1, aborted: 1, expired: 1 } };
  await assertFigures(m, expired, elapsed());

  // max_channels down to 2 (and idle_ttl back up): the finished channels are evicted first,
  // then the least recently active unfinished ones, each counted by its last message.
  m.editConfig((text) => text.replace("idle_ttl: 0.5", "idle_ttl: 3600\n  max_channels: 2"));
  await m.reload();
  await sendJob(broker, "student_b1", [["DOWNLOADED"]]);
  await sendJob(broker, "student_b2", [["ABORTED"]]);
  await sendJob(broker, "student_b3", [["DOWNLOADED"]]);
  await sendJob(broker, "student_b4", [["DOWNLOADED"], ["STARTED"]]);
  await messagesIn(m, total + 5);
  const got = await metrics(m.wsPort);
  assert.equal(got.value("recodex_monitor_channels_evicted_total"), 5, "3 finished channels, then b1 and b2");
  assert.equal(got.value("recodex_monitor_channels"), 2);
  await assertFigures(
    m,
    { ...expired, inProgress: 2, starts: 6, ended: { ...none, finished: 3, failed: 1, aborted: 2, expired: 1, evicted: 1 } },
    elapsed(),
  );
  const last = await statusJson(m);
  assert.deepEqual(
    { channels: last.store.channels, finished: last.store.finished, unfinished: last.store.unfinished },
    { channels: 2, finished: 0, unfinished: 2 },
  );
  assert.deepEqual(last.channels_dropped, { finished: 0, expired: 3, evicted: 5 });
});

test("status for a person: one line per concern, no channel id unless asked", async (t) => {
  const { monitor: m, broker } = await relay(t, { extraYaml: HTTP });
  await sendJob(broker, "student_secret_1", SEQUENCES.whole);
  await sendJob(broker, "student_secret_2", SEQUENCES.stalled);
  await messagesIn(m, 11);
  const r = await status(m);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  assert.match(lines[0], new RegExp(`^recodex-monitor \\d+\\.\\d+\\.\\d+ at http://127\\.0\\.0\\.1:${m.wsPort}/: ready, up \\d+ s$`));
  const rows = Object.fromEntries(lines.slice(1).map((l) => [l.slice(0, 20).trim(), l.slice(20)]));
  assert.equal(rows.store, "memory: 2 channels kept (1 finished, 1 not), 11 messages, " + rows.store.split(", ").pop());
  assert.equal(rows.clients, "0 connections, 0 subscribed; 1 ZeroMQ peer");
  assert.equal(rows.messages, "11 in, 0 out (0 B); 0 after FINISHED, 0 malformed");
  assert.equal(rows["channels dropped"], "finished 0, expired 0, evicted 0; 0 messages truncated from history");
  assert.equal(rows.refused, "origin 0, capacity 0, per ip 0, rate 0, draining 0");
  assert.equal(rows.disconnected, "slow client 0, ping timeout 0, subscribe timeout 0, bad first message 0");
  assert.equal(rows.jobs, "1 in progress, 0 failed or aborted (not yet dropped), 0 reassigned");
  assert.equal(rows["jobs ended"], "finished 1, failed 0, aborted 0, expired 0, evicted 0");
  assert.equal(rows.tasks, "completed 2, failed 1, skipped 1, other 0");
  assert.match(rows.evaluation, /^1 finished job, mean \d+\.\d+ s$/);
  assert.match(rows["DOWNLOADED->STARTED"], /^2 runs, mean \d+\.\d+ s$/);
  const json = await status(m, "--json");
  for (const text of [r.stdout, json.stdout]) assert.doesNotMatch(text, /student_secret/);
});

test("status --channel ID: that channel's messages, subscribers and last message; an unknown id is exit 10", async (t) => {
  const { monitor: m, broker } = await relay(t, { extraYaml: HTTP });
  await sendJob(broker, "student_c1", SEQUENCES.stalled);
  await messagesIn(m, 3);
  const r = await status(m, "--channel", "student_c1");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^channel student_c1\nmessages {12}3 \(3 kept for replay\)\nfinished {12}no\nsubscribers {9}0\nlast message {8}\d+\.\d+ s ago: \{"command":"TASK","task_id":"compilation","task_state":"COMPLETED"\}\n$/);
  const json = await statusJson(m, "--channel", "student_c1");
  assert.deepEqual({ ...json, idle_seconds: 0 }, {
    id: "student_c1",
    messages: 3,
    kept: 3,
    finished: false,
    subscribers: 0,
    idle_seconds: 0,
    last: { command: "TASK", task_id: "compilation", task_state: "COMPLETED" },
  });
  const unknown = await status(m, "--channel", "student_typo");
  assert.equal(unknown.code, 10);
  assert.match(unknown.stderr, /the monitor keeps no channel student_typo \(no message for it yet, or already dropped\) \[RMON_ERR_NO_CHANNEL\]/);
});

test("status --channels is refused (exit 9, naming http.list_channels) until the key is on; then lists the most recent first", async (t) => {
  const { monitor: m, broker } = await relay(t, { extraYaml: HTTP });
  const off = await status(m, "--channels");
  assert.equal(off.code, 9);
  assert.match(off.stderr, /listing channel ids is off: set http\.list_channels: true in the monitor's config file and reload it .*\[RMON_ERR_SWITCHED_OFF\]/);
  assert.equal((await httpGet(m.wsPort, "/status?channels=5")).status, 403);

  m.editConfig((text) => text.replace(HTTP, HTTP + "  list_channels: true\n"));
  assert.match(await m.reload(), /http\.list_channels: false -> true/);
  await sendJob(broker, "student_l1", SEQUENCES.whole);
  await sendJob(broker, "student_l2", SEQUENCES.stalled);
  await messagesIn(m, 11);
  const all = await statusJson(m, "--channels");
  assert.deepEqual(all.channels.map((c: { id: string }) => c.id), ["student_l2", "student_l1"]);
  assert.deepEqual(all.channels.map((c: { messages: number; finished: boolean }) => [c.messages, c.finished]), [[3, false], [8, true]]);
  const one = await status(m, "--channels", "--limit", "1");
  assert.equal(one.code, 0, one.stderr);
  assert.match(one.stdout, /\nchannels \(1 most recently active\):\n {2}student_l2 {2}3 messages, 0 subscribed, idle \d+\.\d+ s, last \{"command":"TASK",/);
  assert.doesNotMatch(one.stdout, /student_l1/);
  for (const bad of ["0", "x", "10001"]) assert.equal((await httpGet(m.wsPort, `/status?channels=${bad}`)).status, 400, bad);
});

test("status with the HTTP endpoints off: exit 9 naming http.enabled, from the config or from the running monitor", async (t) => {
  const fromConfig = await runCli(["status", "-c", writeConfig("http:\n  enabled: false\n")]);
  assert.equal(fromConfig.code, 9);
  assert.match(fromConfig.stderr, /the HTTP endpoint \/status is off: set http\.enabled: true in the monitor's config file and restart it \[RMON_ERR_SWITCHED_OFF\]/);
  // The monitor runs without them; the admin's file already says true.
  const m = await monitor(t);
  const edited = join(m.dir, "edited.yml");
  writeFileSync(edited, `websocket_uri: ["127.0.0.1", ${m.wsPort}]\n${HTTP}`);
  const running = await runCli(["status", "-c", edited]);
  assert.equal(running.code, 9, running.stderr);
  assert.match(running.stderr, /set http\.enabled: true in the monitor's config file and restart it \(it was started without them\)/);
});

test("status with nothing listening is exit 8; it finds a separate http.uri, and https on a TLS WebSocket port", async (t) => {
  const none = await runCli(["status", "-c", writeConfig(`websocket_uri: ["127.0.0.1", ${NOBODY}]\n${HTTP}`)]);
  assert.equal(none.code, 8);
  assert.match(none.stderr, new RegExp(`cannot reach the monitor's HTTP endpoint at http://127\\.0\\.0\\.1:${NOBODY}/status: .*ECONNREFUSED.*\\[RMON_ERR_UNREACHABLE\\]`));

  const separate = await monitor(t, { extraYaml: 'http:\n  enabled: true\n  uri: ["127.0.0.1", 0]\n' });
  const r = await status(separate);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^recodex-monitor \\S+ at http://127\\.0\\.0\\.1:${separate.httpPort}/: ready`));
  const viaUrl = await runCli(["status", "--url", `http://127.0.0.1:${separate.httpPort}`, "--json"]);
  assert.equal(JSON.parse(viaUrl.stdout).state, "ready");

  const tls = await monitor(t, { extraYaml: `${HTTP}websocket:\n  tls_cert: ${CERT_A.cert}\n  tls_key: ${CERT_A.key}\n` });
  const secure = await status(tls);
  assert.equal(secure.code, 0, secure.stderr);
  assert.match(secure.stdout, new RegExp(`^recodex-monitor \\S+ at https://127\\.0\\.0\\.1:${tls.wsPort}/: ready`));
});

test("status and /metrics count connections and, of those, subscribers", async (t) => {
  const r = await relay(t, { extraYaml: HTTP });
  await r.subscribe("student_d1");
  await r.connect();
  const s = await statusJson(r.monitor);
  assert.equal(s.connections, 2);
  assert.equal(s.subscribers, 1);
  assert.equal(await metric(r.monitor.wsPort, "recodex_monitor_subscribers"), 1);
});

test("status's command line: --help and its usage errors", async () => {
  const help = await runCli(["status", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: recodex-monitor status /);
  for (const args of [
    ["status", "extra"],
    ["status", "--limit", "3"],
    ["status", "--channels", "--channel", "x"],
    ["status", "--channels", "--limit", "0"],
    ["status", "--url", "ftp://x/"],
    ["status", "--url", "http://127.0.0.1:1/", "-c", "x.yml"],
    ["status", "--channel", ""],
    ["status", "--timeout", "0"],
  ]) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /Try 'recodex-monitor status --help'/);
  }
});
