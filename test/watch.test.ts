// `recodex-monitor watch CHANNEL`, run for real against a real monitor: what it prints, how
// it ends (exit codes), TLS, the reverse proxy recipe, and resuming across a restart.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { encodeMessage } from "../src/frames.ts";
import { NOBODY, startWatch } from "./helpers/cli.ts";
import { SEQUENCES, sendJob } from "./helpers/jobs.ts";
import { monitor, ROOT, runCli, tempDir, writeConfig } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { NGINX, splitNginxSnippet, startNginx } from "./helpers/reverse-proxy.ts";
import { CERT_A } from "./helpers/tls.ts";
import { waitUntil } from "./helpers/wait.ts";

const JOB = SEQUENCES.whole.map((step) => encodeMessage(step));

test("watch prints a whole job exactly as a browser gets it, then the close, and exits 0", async (t) => {
  const r = await relay(t);
  const w = await startWatch(t, r.monitor, "student_w1", ["-c", r.monitor.configWithPorts()]);
  await sendJob(r.broker, "student_w1", SEQUENCES.whole);
  assert.equal(await w.exited, 0, w.stderr());
  assert.deepEqual(w.stdout().split("\n"), [...JOB, ""]);
  assert.equal(w.stderr(), `watching channel student_w1 at ws://127.0.0.1:${r.monitor.wsPort}/\nclosed: 1000 job finished\n`);
});

test("watch -t starts every line with the UTC time it arrived, in order", async (t) => {
  const r = await relay(t);
  const before = new Date().toISOString();
  const w = await startWatch(t, r.monitor, "student_w2", ["-c", r.monitor.configWithPorts(), "-t"]);
  await sendJob(r.broker, "student_w2", SEQUENCES.buildFailure);
  assert.equal(await w.exited, 0, w.stderr());
  const lines = w.stdout().trimEnd().split("\n");
  assert.equal(lines.length, 4);
  const stamps = lines.map((line, i) => {
    const m = line.match(/^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (.*)$/);
    assert.ok(m, line);
    assert.equal(m[2], encodeMessage(SEQUENCES.buildFailure[i]));
    return m[1];
  });
  assert.deepEqual([...stamps].sort(), stamps);
  assert.ok(stamps[0] >= before);
  assert.match(w.stderr(), /Z closed: 1000 job finished\n$/);
});

test("a late watcher gets the history of a finished job and exits 0 at once", async (t) => {
  const r = await relay(t);
  await sendJob(r.broker, "student_w3", SEQUENCES.reassigned);
  await r.settled();
  const late = await runCli(["watch", "student_w3", "-c", r.monitor.configWithPorts()]);
  assert.equal(late.code, 0, late.stderr);
  assert.deepEqual(late.stdout.trimEnd().split("\n"), SEQUENCES.reassigned.map((s) => encodeMessage(s)));
});

test("a channel that expires ends watch with exit 7, naming the close code and reason", async (t) => {
  const r = await relay(t, { extraYaml: "retention:\n  idle_ttl: 0.5\n" });
  const w = await startWatch(t, r.monitor, "student_w4", ["-c", r.monitor.configWithPorts()]);
  await sendJob(r.broker, "student_w4", SEQUENCES.brokerFailed);
  assert.equal(await w.exited, 7);
  assert.equal(w.stdout(), `{"command": "FAILED"}\n`);
  assert.match(
    w.stderr(),
    /recodex-monitor: channel student_w4 ended without FINISHED: closed by the monitor with 4000 \(channel expired without activity\) \[RMON_ERR_STREAM_ENDED\]\n$/,
  );
});

test("a monitor that shuts down ends watch (without --resume) with exit 7 and 1001", async (t) => {
  const m = await monitor(t);
  const w = await startWatch(t, m, "student_w5", ["-c", m.configWithPorts()]);
  await m.stop("SIGTERM");
  assert.equal(await w.exited, 7);
  assert.match(w.stderr(), /channel student_w5 ended without FINISHED: closed by the monitor with 1001 \(monitor shutting down\) \[RMON_ERR_STREAM_ENDED\]/);
});

test("watch --timeout on a channel that gets no message: exit 7 with a hint to check the channel id", async (t) => {
  const m = await monitor(t);
  const r = await runCli(["watch", "student_typo", "-c", m.configWithPorts(), "--timeout", "0.5"]);
  assert.equal(r.code, 7, r.stderr);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /channel student_typo ended without FINISHED: no message for 0\.5 s \(is the channel id right\? `recodex-monitor status --channel ID`/);
});

test("a channel id the monitor would refuse: exit 2 naming the limit with -c, close 1008 and exit 7 with --url", async (t) => {
  const m = await monitor(t, { extraYaml: "limits:\n  max_channel_id_length: 16\n" });
  const long = "student_" + "x".repeat(20);
  const usage = await runCli(["watch", long, "-c", m.configWithPorts()]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /CHANNEL is 28 bytes; the monitor refuses more than 16 \(limits\.max_channel_id_length\)/);
  const direct = await runCli(["watch", long, "--url", m.url()]);
  assert.equal(direct.code, 7, direct.stderr);
  assert.match(direct.stderr, /ended without FINISHED: closed by the monitor with 1008 \(invalid channel id\)/);
});

test("watch with nothing listening: exit 8 naming the URL, at once", async () => {
  const r = await runCli(["watch", "student_x", "--url", `ws://127.0.0.1:${NOBODY}/ws/`]);
  assert.equal(r.code, 8, r.stderr);
  assert.match(r.stderr, new RegExp(`cannot reach the monitor's WebSocket port at ws://127\\.0\\.0\\.1:${NOBODY}/ws/: .*ECONNREFUSED.* \\[RMON_ERR_UNREACHABLE\\]`));
  const config = writeConfig(`websocket_uri: ["127.0.0.1", ${NOBODY}]\n`);
  const viaConfig = await runCli(["watch", "student_x", "-c", config]);
  assert.equal(viaConfig.code, 8, viaConfig.stderr);
});

test("a refused upgrade (access.max_connections) is exit 8 with the HTTP status and the monitor's reason", async (t) => {
  const r = await relay(t, { extraYaml: "access:\n  max_connections: 1\n" });
  await r.connect();
  const refused = await runCli(["watch", "student_x", "-c", r.monitor.configWithPorts()]);
  assert.equal(refused.code, 8, refused.stderr);
  assert.match(refused.stderr, /HTTP 503: connection limit reached \(access\.max_connections\)/);
});

test("watch over wss://: with the monitor's own config, and with --url and --ca; an unknown certificate is exit 8", async (t) => {
  const r = await relay(t, { extraYaml: `websocket:\n  tls_cert: ${CERT_A.cert}\n  tls_key: ${CERT_A.key}\n` });
  const port = r.monitor.wsPort;

  const viaConfig = await startWatch(t, r.monitor, "student_tls1", ["-c", r.monitor.configWithPorts()]);
  await sendJob(r.broker, "student_tls1", SEQUENCES.whole);
  assert.equal(await viaConfig.exited, 0, viaConfig.stderr());
  assert.match(viaConfig.stderr(), new RegExp(`^watching channel student_tls1 at wss://127\\.0\\.0\\.1:${port}/\n`));
  assert.deepEqual(viaConfig.stdout().trimEnd().split("\n"), JOB);

  const url = `wss://localhost:${port}/`;
  const trusted = await runCli(["watch", "student_tls1", "--url", url, "--ca", CERT_A.cert]);
  assert.equal(trusted.code, 0, trusted.stderr);
  assert.deepEqual(trusted.stdout.trimEnd().split("\n"), JOB);

  const unknown = await runCli(["watch", "student_tls1", "--url", url]);
  assert.equal(unknown.code, 8);
  assert.match(unknown.stderr, /cannot reach the monitor's WebSocket port at wss:\/\/localhost:\d+\/: self[- ]signed certificate/);

  const insecure = await runCli(["watch", "student_tls1", "--url", url, "--insecure"]);
  assert.equal(insecure.code, 0, insecure.stderr);
});

test("watch --resume reconnects across a monitor restart, is told of the gap, and exits 0 after FINISHED", async (t) => {
  const first = await relay(t);
  const config = first.monitor.configWithPorts();
  const w = await startWatch(t, first.monitor, "student_r1", ["-c", config, "--resume"]);
  await sendJob(first.broker, "student_r1", SEQUENCES.whole.slice(0, 2));
  await w.waitFor(/\{"offset": 1, "message": \{"command": "STARTED"\}\}\n/);
  await first.monitor.stop("SIGTERM");
  await w.waitFor(/closed by the monitor with 1001 \(monitor shutting down\); reconnecting in [\d.]+ s \(1\/10\)/);
  // The same ports again (the ones watch's config names): the history went with the first process.
  const second = await relay(t, { wsPort: first.monitor.wsPort, zmqPort: first.monitor.zmqPort });
  await w.waitFor(/resumed after offset 1\n/, 30_000);
  await sendJob(second.broker, "student_r1", SEQUENCES.whole.slice(2));
  assert.equal(await w.exited, 0, w.stderr());
  const lines = w.stdout().trimEnd().split("\n");
  assert.deepEqual(lines.slice(0, 3), [
    `{"offset": 0, "message": {"command": "DOWNLOADED"}}`,
    `{"offset": 1, "message": {"command": "STARTED"}}`,
    `{"gap": {"first_offset": 0}}`,
  ]);
  assert.deepEqual(
    lines.slice(3).map((l) => JSON.parse(l).message),
    SEQUENCES.whole.slice(2).map((s) => JSON.parse(encodeMessage(s))),
  );
  assert.match(w.stderr(), /closed: 1000 job finished\n$/);
});

test("watch --resume against a monitor with websocket.resumable off: exit 9 naming the key", async (t) => {
  const m = await monitor(t, { extraYaml: "websocket:\n  resumable: false\n" });
  const r = await runCli(["watch", "student_r2", "-c", m.configWithPorts(), "--resume"]);
  assert.equal(r.code, 9, r.stderr);
  assert.match(r.stderr, /the resumable protocol is off: set websocket\.resumable: true .*\[RMON_ERR_SWITCHED_OFF\]/);
});

test("Ctrl-C (SIGINT) ends watch with 130 and says so", async (t) => {
  const m = await monitor(t);
  const w = await startWatch(t, m, "student_i1", ["-c", m.configWithPorts()]);
  w.child.kill("SIGINT");
  assert.equal(await w.exited, 130);
  assert.match(w.stderr(), /interrupted\n$/);
});

test("watch's command line: --help, a missing or extra argument, conflicting options", async () => {
  const help = await runCli(["watch", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: recodex-monitor watch CHANNEL /);
  assert.match(help.stdout, /--resume/);
  for (const args of [
    ["watch"],
    ["watch", "a", "b"],
    ["watch", ""],
    ["watch", "a", "-c", "x.yml", "--url", "ws://127.0.0.1:1/"],
    ["watch", "a", "--url", "http://127.0.0.1:1/"],
    ["watch", "a", "--insecure"],
    ["watch", "a", "--timeout", "soon"],
    ["watch", "a", "--url", "wss://127.0.0.1:1/", "--ca", join(tempDir(), "missing.pem")],
  ]) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /Try 'recodex-monitor watch --help'/, args.join(" "));
  }
});

test(
  "watch through the packaged nginx recipe (wss://…/ws/)",
  { skip: existsSync(NGINX) ? false : `needs ${NGINX} (Debian: nginx-light)` },
  async (t) => {
    const r = await relay(t);
    const dir = tempDir("rmon-watch-proxy-");
    const snippet = splitNginxSnippet(
      readFileSync(join(ROOT, "packaging", "reverse-proxy", "nginx.conf"), "utf8").replace("http://127.0.0.1:4567/", `http://127.0.0.1:${r.monitor.wsPort}/`),
    );
    const www = join(dir, "www");
    mkdirSync(www);
    writeFileSync(join(www, "index.html"), "ok\n");
    const proxy = await startNginx({ dir, cert: CERT_A.cert, key: CERT_A.key, root: www, snippet });
    t.after(() => proxy.stop());
    const w = await startWatch(t, r.monitor, "student_p1", ["--url", `wss://localhost:${proxy.port}/ws/`, "--ca", CERT_A.cert]);
    await sendJob(r.broker, "student_p1", SEQUENCES.whole);
    assert.equal(await w.exited, 0, `${w.stderr()}\nnginx:\n${proxy.output()}`);
    assert.match(w.stderr(), new RegExp(`^watching channel student_p1 at wss://localhost:${proxy.port}/ws/\n`));
    assert.deepEqual(w.stdout().trimEnd().split("\n"), JOB);
    // nginx logs the upgrade once the proxied connection has closed.
    const upgraded = new RegExp(`"GET /ws/ HTTP/1\\.1" 101 upstream=127\\.0\\.0\\.1:${r.monitor.wsPort} upgrade=websocket`);
    await waitUntil(() => existsSync(proxy.accessLog) && upgraded.test(readFileSync(proxy.accessLog, "utf8")), "the upgrade in nginx's access log");
  },
);
