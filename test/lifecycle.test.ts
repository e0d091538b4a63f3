// Start-up, shutdown and the command line: signals, the ZeroMQ exit command, busy ports,
// bad configs and their exit codes.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { join } from "node:path";
import * as zmq from "zeromq";
import { Browser } from "./helpers/browser.ts";
import { ROOT, runCli, startMonitor, tempDir, writeConfig } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { waitUntil, withTimeout } from "./helpers/wait.ts";

const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

/** A TCP server on a port of its own, held so that the monitor finds that port busy. */
function blocker(): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve({ server, port: (server.address() as { port: number }).port }));
  });
}

function closeServer(srv: Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

// Long enough that a stop which waits for it fails the "within a few seconds" checks.
const LONG_DRAIN = "limits:\n  drain_timeout: 30\n";

describe("stopping", () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal} closes every client with 1001, logs "stopping" and exits 0 within a few seconds`, async (t) => {
      const s = await relay(t, { extraYaml: LONG_DRAIN });
      const watching = await s.subscribe("job");
      const waiting = await s.connect(); // connected, no channel yet
      await s.broker.send("job", "STARTED");
      await watching.waitMessages(1);
      const started = Date.now();
      s.monitor.child.kill(signal);
      assert.equal((await watching.waitClose()).code, 1001);
      assert.equal((await waiting.waitClose()).code, 1001);
      assert.equal(await withTimeout(s.monitor.exited, "the monitor to exit"), 0);
      assert.ok(Date.now() - started < 10_000, `stopped after ${Date.now() - started} ms: it waited for limits.drain_timeout`);
      assert.match(s.monitor.output(), new RegExp(`stopping: ${signal} received`));
      assert.match(s.monitor.output(), /\[INFO\] stopped\n/);
    });
  }

  test("the ZeroMQ exit command (channel 0, command exit) stops the monitor with 0 and closes clients with 1001", async (t) => {
    const s = await relay(t);
    const b = await s.subscribe("job");
    const zero = await s.subscribe("0");
    await s.broker.send("0", "exit");
    assert.equal((await b.waitClose()).code, 1001);
    assert.equal((await zero.waitClose()).code, 1001);
    assert.equal(await withTimeout(s.monitor.exited, "the monitor to exit"), 0);
    assert.match(s.monitor.output(), /stopping: exit command received over ZeroMQ/);
    assert.deepEqual(zero.messages, [], "the exit command is never forwarded");
  });

  test("with broker.allow_exit_command false the exit command is ignored: not forwarded, not stored, and the monitor keeps relaying", async (t) => {
    const s = await relay(t, { extraYaml: "broker:\n  allow_exit_command: false\n" });
    const b = await s.subscribe("job");
    const live = await s.subscribe("0");
    await s.broker.send("0", "exit");
    await s.monitor.waitFor(/exit command received over ZeroMQ ignored/);
    await s.broker.send("job", "STARTED");
    assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
    const late = await s.subscribe("0");
    // A message of channel 0: the first thing either client may get.
    await s.broker.send("0", "STARTED");
    assert.deepEqual(await late.waitMessages(1), ['{"command": "STARTED"}'], "the exit command is not stored as a message of channel 0");
    assert.deepEqual(await live.waitMessages(1), ['{"command": "STARTED"}'], "the exit command is not forwarded");
    assert.equal(b.closed, null);
    assert.equal(await s.monitor.stop(), 0);
  });
});

describe("busy ports", () => {
  test("a busy WebSocket port: exit 4 and one clear line on stderr", async () => {
    const busy = await blocker();
    const log = join(tempDir(), "monitor.log");
    try {
      const config = writeConfig(`websocket_uri: ["127.0.0.1", ${busy.port}]\nzeromq_uri: ["127.0.0.1", 0]\nlogger:\n  file: ${log}\n`);
      const r = await runCli(["-c", config]);
      assert.equal(r.code, 4);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], new RegExp(`${busy.port}`));
      assert.match(lines[0], /websocket_uri/);
      assert.match(lines[0], /EADDRINUSE/);
      assert.match(readFileSync(log, "utf8"), /CRITICAL\] cannot start/);
    } finally {
      await closeServer(busy.server);
    }
  });

  test("a busy ZeroMQ port: exit 4 and one clear line on stderr", async () => {
    const busy = new zmq.Router({ linger: 0 });
    await busy.bind("tcp://127.0.0.1:*");
    const port = Number(busy.lastEndpoint!.split(":").at(-1));
    const log = join(tempDir(), "monitor.log");
    try {
      const config = writeConfig(`websocket_uri: ["127.0.0.1", 0]\nzeromq_uri: ["127.0.0.1", ${port}]\nlogger:\n  file: ${log}\n`);
      const r = await runCli(["-c", config]);
      assert.equal(r.code, 4);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], new RegExp(`${port}`));
      assert.match(lines[0], /zeromq_uri/);
    } finally {
      busy.close();
    }
  });

  test("a monitor on a busy WebSocket port ends: the process is gone, not half-started", async () => {
    const busy = await blocker();
    try {
      const mon = await startMonitor({ wsPort: busy.port, waitReady: false });
      const code = await withTimeout(mon.exited, "a monitor with a busy port to exit");
      assert.equal(code, 4);
      assert.doesNotMatch(mon.output(), /recodex-monitor ready/);
    } finally {
      await closeServer(busy.server);
    }
  });
});

describe("configuration errors", () => {
  test("a -c path that does not exist: exit 3, naming the path", async () => {
    const path = join(tempDir(), "missing.yml");
    const r = await runCli(["-c", path]);
    assert.equal(r.code, 3);
    assert.ok(r.stderr.includes(path), r.stderr);
    assert.match(r.stderr, /does not exist/);
  });

  test("an unreadable config (a directory): exit 3", async () => {
    const dir = join(tempDir(), "config.yml");
    mkdirSync(dir);
    const r = await runCli(["-c", dir]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /RMON_ERR_CONFIG_UNREADABLE/);
  });

  test("an unreadable config (no read permission): exit 3", { skip: process.getuid?.() === 0 ? "root can read any file" : false }, async () => {
    const path = writeConfig("logger:\n  level: info\n");
    chmodSync(path, 0o000);
    const r = await runCli(["-c", path]);
    assert.equal(r.code, 3);
  });

  test("invalid YAML: exit 3 with the line", async () => {
    const r = await runCli(["-c", writeConfig("websocket_uri: [\"127.0.0.1\", 4567\nlogger: {\n")]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /not valid YAML/);
    assert.match(r.stderr, /line \d+/);
  });

  test("an invalid value: exit 3, the message names the key, the value and the expectation", async () => {
    const r = await runCli(["-c", writeConfig("retention:\n  idle_ttl: forever\n")]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /"retention.idle_ttl": got "forever", expected a number of seconds/);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  });

  test("an unwritable log file (its parent is a regular file): exit 5", async () => {
    const dir = tempDir();
    writeFileSync(join(dir, "file"), "x");
    const config = writeConfig(
      `websocket_uri: ["127.0.0.1", 0]\nzeromq_uri: ["127.0.0.1", 0]\nlogger:\n  file: ${join(dir, "file", "monitor.log")}\n`,
    );
    const r = await runCli(["-c", config]);
    assert.equal(r.code, 5);
    assert.match(r.stderr, /log file .*monitor\.log cannot be opened for writing/);
  });

  test("unknown config keys produce a warning naming them, and the monitor runs", async (t) => {
    const s = await relay(t, { extraYaml: "colour: blue\nretention:\n  ttl: 5\n" });
    assert.match(s.monitor.output(), /unknown config key "colour" ignored/);
    assert.match(s.monitor.output(), /unknown config key "retention.ttl" ignored/);
    const b = await s.subscribe("job");
    await s.broker.send("job", "STARTED");
    assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
  });
});

describe("the command line", () => {
  test("a bad flag: exit 2 with a hint", async () => {
    const r = await runCli(["--no-such-flag"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--help/);
  });

  test("an unexpected argument: exit 2", async () => {
    const r = await runCli(["serve"]);
    assert.equal(r.code, 2);
  });

  test("-c without a path: exit 2", async () => {
    assert.equal((await runCli(["-c"])).code, 2);
  });

  test("--help prints the usage and exits 0", async () => {
    for (const flag of ["--help", "-h"]) {
      const r = await runCli([flag]);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /Usage: recodex-monitor/);
      assert.match(r.stdout, /-c, --config FILE/);
    }
  });

  test("--version prints the package.json version and exits 0", async () => {
    for (const flag of ["--version", "-V"]) {
      const r = await runCli([flag]);
      assert.equal(r.code, 0);
      assert.equal(r.stdout.trim(), `recodex-monitor ${VERSION}`);
    }
  });

  test("--check-config exits 0 on a valid file and 3 on an invalid one, without starting", async () => {
    const good = writeConfig(`websocket_uri: ["127.0.0.1", 4567]\nlogger:\n  level: debug\n`);
    const ok = await runCli(["--check-config", "-c", good]);
    assert.equal(ok.code, 0);
    assert.match(ok.stdout, /is valid/);
    const bad = await runCli(["--check-config", "-c", writeConfig("logger:\n  level: verbose\n")]);
    assert.equal(bad.code, 3);
    assert.match(bad.stderr, /"logger.level": got "verbose"/);
  });

  test("the original's command line (-c FILE with only the original's keys) runs and relays", async (t) => {
    const log = join(tempDir(), "monitor.log");
    const s = await relay(t, {
      config: `---\nwebsocket_uri:\n  - "127.0.0.1"\n  - 0\nzeromq_uri:\n  - "127.0.0.1"\n  - 0\nlogger:\n  file: "${log}"\n  level: "debug"\n  max-size: 1048576\n  rotations: 3\n`,
    });
    const b = await Browser.open(s.monitor.wsPort, "student_1");
    t.after(() => b.close());
    await waitUntil(() => /subscribed to channel student_1/.test(readFileSync(log, "utf8")), "the subscription in the log file");
    await s.broker.send("student_1", "TASK", "úkol", "COMPLETED");
    assert.deepEqual(await b.waitMessages(1), ['{"command": "TASK", "task_id": "\\u00fakol", "task_state": "COMPLETED"}']);
    assert.equal(await s.monitor.stop("SIGTERM"), 0);
  });
});

test("SIGTERM is not held up by a refused upgrade whose peer never closes its side", async (t) => {
  const s = await relay(t, { extraYaml: 'access:\n  allowed_origins: ["https://recodex.example"]\n' + LONG_DRAIN });
  const socket = connect(s.monitor.wsPort, "127.0.0.1");
  t.after(() => socket.destroy());
  socket.on("error", () => {});
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.write(
    "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://evil.example\r\n\r\n",
  );
  await s.monitor.waitFor(/refused WebSocket upgrade/);
  // The socket is left open on our side: the monitor must not wait for it.
  s.monitor.child.kill("SIGTERM");
  assert.equal(await withTimeout(s.monitor.exited, "the monitor to exit without waiting for the refused peer"), 0);
});

test("a ZeroMQ message larger than retention.max_bytes_per_channel is skipped and evicts nothing", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  max_bytes_per_channel: 2048\n  max_total_bytes: 4096\nlimits:\n  max_buffered_bytes: 65536\n" });
  await s.broker.send("small", "DOWNLOADED");
  await s.broker.send("huge", "TASK", "t", "x".repeat(5000));
  await s.monitor.waitFor(/ZeroMQ message skipped: message of \d+ bytes as JSON/);
  const late = await s.subscribe("small");
  assert.deepEqual(await late.waitMessages(1), ['{"command": "DOWNLOADED"}'], "the other channel is still there");
});
