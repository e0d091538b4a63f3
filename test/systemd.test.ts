// What the monitor does for systemd, checked without systemd as PID 1 (the booted-systemd
// checks are in packaging/test-packages.sh): the readiness message through the real
// `systemd-notify` helper into a real AF_UNIX datagram socket (a perl receiver, since Node
// has no unix datagrams), a helper that fails is only a warning, and log lines on a
// journal stream carry a priority instead of a timestamp.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { closeSync, fstatSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { Broker } from "./helpers/broker.ts";
import { Browser } from "./helpers/browser.ts";
import { MAIN, startMonitor, tempDir } from "./helpers/monitor-process.ts";
import { waitUntil } from "./helpers/wait.ts";

const haveNotify = spawnSync("systemd-notify", ["--help"]).status === 0;

/** Connects once, without retrying: the port must be accepting right now. */
function acceptsNow(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

test("under $NOTIFY_SOCKET the monitor sends READY=1 through systemd-notify once both ports accept", { skip: !haveNotify && "systemd-notify not installed" }, async (t) => {
  const socketPath = join(tempDir(), "notify");
  const receiver = spawn("perl", [
    "-MSocket",
    "-e",
    'socket(my $s, PF_UNIX, SOCK_DGRAM, 0) or die "socket: $!"; bind($s, pack_sockaddr_un($ARGV[0])) or die "bind: $!";' +
      ' $| = 1; print "listening\\n"; while (defined recv($s, my $m, 65536, 0)) { print "datagram $m\\n" }',
    socketPath,
  ]);
  t.after(() => receiver.kill("SIGKILL"));
  let received = "";
  const onReady: (() => void)[] = [];
  receiver.stdout.on("data", (d: Buffer) => {
    received += d.toString();
    if (/datagram READY=1/.test(received)) for (const f of onReady.splice(0)) f();
  });
  await waitUntil(() => received.includes("listening"), "the notify socket");

  const m = await startMonitor({ waitReady: false, env: { ...process.env, NOTIFY_SOCKET: socketPath } });
  t.after(() => m.stop("SIGKILL"));
  const ports = await new Promise<boolean[]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no READY=1; receiver got ${JSON.stringify(received)}; monitor:\n${m.output()}`)), 15_000);
    onReady.push(() => {
      clearTimeout(timer);
      // The ready line (which names the ports bound at 0) is written before the notification.
      void m.ready().then(() => Promise.all([acceptsNow(m.wsPort), acceptsNow(m.zmqPort)])).then(resolve, reject);
    });
  });
  assert.deepEqual(ports, [true, true], "a port did not accept when READY=1 arrived");
  assert.doesNotMatch(m.output(), /cannot tell systemd/);
  assert.equal(await m.stop(), 0);
});

test("a notification that fails is a warning: the monitor keeps relaying", { skip: !haveNotify && "systemd-notify not installed" }, async (t) => {
  const m = await startMonitor({ env: { ...process.env, NOTIFY_SOCKET: join(tempDir(), "no-such-socket") } });
  t.after(() => m.stop("SIGKILL"));
  await m.waitFor(/\[WARNING\] cannot tell systemd that the monitor is ready: systemd-notify READY=1: .+/);
  const browser = await Browser.open(m.wsPort, "job1");
  t.after(() => browser.close());
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  await broker.send("job1", "FINISHED");
  assert.deepEqual((await browser.waitMessages(1)).map((j: string) => JSON.parse(j)), [{ command: "FINISHED" }]);
  assert.equal(await m.stop(), 0);
});

/** Runs the monitor with stderr on a file and, unless `journalStream` is null, that file
 *  named in $JOURNAL_STREAM the way systemd names the journal stream; stops at "ready". */
async function runOnStream(journalStream: (file: string) => string | null): Promise<string> {
  const dir = tempDir();
  const logFile = join(dir, "stderr.log");
  const config = join(dir, "config.yml");
  const fd = openSync(logFile, "w");
  writeFileSync(
    config,
    `websocket_uri: ["127.0.0.1", 0]\nzeromq_uri: ["127.0.0.1", 0]\n` +
      `logger:\n  file: "-"\n  level: info\nno_such_key: 1\n`,
  );
  const stream = journalStream(logFile);
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.JOURNAL_STREAM;
  if (stream !== null) env.JOURNAL_STREAM = stream;
  const child = spawn(process.execPath, [MAIN, "-c", config], { stdio: ["ignore", "ignore", fd], env });
  closeSync(fd);
  const exited = new Promise<number | string>((resolve) => child.on("exit", (c, s) => resolve(c ?? s ?? "?")));
  try {
    await waitUntil(() => readFileSync(logFile, "utf8").includes("recodex-monitor ready"), () => `the ready line in ${readFileSync(logFile, "utf8")}`, 30_000);
  } finally {
    child.kill("SIGTERM");
  }
  assert.equal(await exited, 0);
  return readFileSync(logFile, "utf8");
}

test("on systemd's journal stream each log line starts with its syslog priority and has no timestamp", async () => {
  const out = await runOnStream((file) => {
    const st = fstatSync(openSync(file, "r"), { bigint: true });
    return `${st.dev}:${st.ino}`;
  });
  const lines = out.split("\n").filter((l) => l.startsWith("<"));
  assert.ok(lines.some((l) => /^<4>\[WARNING\] .*no_such_key/.test(l)), out);
  assert.ok(lines.some((l) => /^<6>\[INFO\] recodex-monitor ready: /.test(l)), out);
  assert.ok(lines.some((l) => /^<6>\[INFO\] stopped$/.test(l)), out);
  for (const l of lines) assert.doesNotMatch(l, /^<\d>\d{4}-\d{2}-\d{2} /, "a timestamp after the priority");
  assert.doesNotMatch(out, /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}/m, "a timestamped line on the journal stream");
});

test("a JOURNAL_STREAM that names another file (stderr redirected) keeps the timestamped format", async () => {
  const out = await runOnStream(() => "1:2");
  assert.match(out, /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} \[INFO\] recodex-monitor ready: /m);
  assert.doesNotMatch(out, /^<\d>/m);
});
