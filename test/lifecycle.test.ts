// Start-up, shutdown and the command line: signals, the ZeroMQ exit command, busy ports,
// bad configs and their exit codes.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import * as zmq from "zeromq";
import {
  Broker,
  Browser,
  delay,
  freePort,
  ROOT,
  runCli,
  startMonitor,
  tempDir,
  waitUntil,
  writeConfig,
  type MonitorProcess,
} from "./helpers.ts";

const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

async function subscribed(mon: MonitorProcess, channel: string): Promise<Browser> {
  const b = await Browser.open(mon.wsPort, channel);
  await mon.waitFor(new RegExp(`subscribed to channel ${channel}\\n`));
  return b;
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(what)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function listen(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(port, "127.0.0.1", () => resolve(srv));
  });
}

function closeServer(srv: Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

/** True if a TCP port can be bound again (nobody holds it). */
async function portFree(port: number): Promise<boolean> {
  try {
    await closeServer(await listen(port));
    return true;
  } catch {
    return false;
  }
}

describe("stopping", () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal} closes every client with 1001, logs "stopping" and exits 0 within a few seconds`, async () => {
      const mon = await startMonitor();
      const clients: Browser[] = [];
      try {
        const watching = await subscribed(mon, "job");
        const waiting = await Browser.open(mon.wsPort); // connected, no channel yet
        clients.push(watching, waiting);
        const broker = await Broker.connect(mon.zmqPort);
        await broker.send("job", "STARTED");
        await watching.waitMessages(1);
        broker.close();
        const started = Date.now();
        mon.child.kill(signal);
        assert.equal((await watching.waitClose(5000)).code, 1001);
        assert.equal((await waiting.waitClose(5000)).code, 1001);
        assert.equal(await withTimeout(mon.exited, 5000, "monitor did not exit"), 0);
        assert.ok(Date.now() - started < 5000);
        assert.match(mon.output(), new RegExp(`stopping: ${signal} received`));
        assert.match(mon.output(), /\[INFO\] stopped\n/);
        assert.ok(await portFree(mon.wsPort), "WebSocket port released");
      } finally {
        for (const c of clients) c.close();
        await mon.stop("SIGKILL");
      }
    });
  }

  test("the ZeroMQ exit command (channel 0, command exit) stops the monitor with 0 and closes clients with 1001", async () => {
    const mon = await startMonitor();
    const b = await subscribed(mon, "job");
    const broker = await Broker.connect(mon.zmqPort);
    try {
      await broker.send("0", "exit");
      assert.equal((await b.waitClose(5000)).code, 1001);
      assert.equal(await withTimeout(mon.exited, 5000, "monitor did not exit"), 0);
      assert.match(mon.output(), /stopping: exit command received over ZeroMQ/);
      assert.deepEqual(b.messages, [], "the exit command is never forwarded");
    } finally {
      b.close();
      broker.close();
      await mon.stop("SIGKILL");
    }
  });

  test("with broker.allow_exit_command false the exit command is ignored and the monitor keeps relaying", async () => {
    const mon = await startMonitor({ extraYaml: "broker:\n  allow_exit_command: false\n" });
    const b = await subscribed(mon, "job");
    const w0 = await subscribed(mon, "0");
    const broker = await Broker.connect(mon.zmqPort);
    try {
      await broker.send("0", "exit");
      await mon.waitFor(/exit command received over ZeroMQ ignored/);
      await delay(200);
      assert.equal(mon.child.exitCode, null);
      await broker.send("job", "STARTED");
      assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
      assert.deepEqual(w0.messages, [], "the exit command is not forwarded either");
      assert.equal(b.closed, null);
    } finally {
      b.close();
      w0.close();
      broker.close();
      assert.equal(await mon.stop(), 0);
    }
  });
});

describe("busy ports", () => {
  test("a busy WebSocket port: exit 4, one clear line on stderr, the ZeroMQ port released", async () => {
    const wsPort = await freePort();
    const zmqPort = await freePort();
    const blocker = await listen(wsPort);
    const log = join(tempDir(), "monitor.log");
    try {
      const config = writeConfig(`websocket_uri: ["127.0.0.1", ${wsPort}]\nzeromq_uri: ["127.0.0.1", ${zmqPort}]\nlogger:\n  file: ${log}\n`);
      const r = await runCli(["-c", config]);
      assert.equal(r.code, 4);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], new RegExp(`${wsPort}`));
      assert.match(lines[0], /websocket_uri/);
      assert.match(lines[0], /EADDRINUSE/);
      assert.ok(await portFree(zmqPort), "no half-started process holds the ZeroMQ port");
      assert.match(readFileSync(log, "utf8"), /CRITICAL\] cannot start/);
    } finally {
      await closeServer(blocker);
    }
  });

  test("a busy ZeroMQ port: exit 4, one clear line on stderr, the WebSocket port not taken", async () => {
    const wsPort = await freePort();
    const zmqPort = await freePort();
    const blocker = new zmq.Router({ linger: 0 });
    await blocker.bind(`tcp://127.0.0.1:${zmqPort}`);
    const log = join(tempDir(), "monitor.log");
    try {
      const config = writeConfig(`websocket_uri: ["127.0.0.1", ${wsPort}]\nzeromq_uri: ["127.0.0.1", ${zmqPort}]\nlogger:\n  file: ${log}\n`);
      const r = await runCli(["-c", config]);
      assert.equal(r.code, 4);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], new RegExp(`${zmqPort}`));
      assert.match(lines[0], /zeromq_uri/);
      assert.ok(await portFree(wsPort));
    } finally {
      blocker.close();
    }
  });

  test("startMonitor on a busy WebSocket port: the process is gone, not half-started", async () => {
    const wsPort = await freePort();
    const blocker = await listen(wsPort);
    try {
      const mon = await startMonitor({ wsPort, waitReady: false });
      const code = await withTimeout(mon.exited, 10_000, "a monitor with a busy port kept running");
      assert.equal(code, 4);
      assert.doesNotMatch(mon.output(), /recodex-monitor ready/);
    } finally {
      await closeServer(blocker);
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
    const { chmodSync } = await import("node:fs");
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
    const wsPort = await freePort();
    const zmqPort = await freePort();
    const config = writeConfig(
      `websocket_uri: ["127.0.0.1", ${wsPort}]\nzeromq_uri: ["127.0.0.1", ${zmqPort}]\nlogger:\n  file: ${join(dir, "file", "monitor.log")}\n`,
    );
    const r = await runCli(["-c", config]);
    assert.equal(r.code, 5);
    assert.match(r.stderr, /log file .*monitor\.log cannot be opened for writing/);
    assert.ok(await portFree(wsPort));
  });

  test("unknown config keys produce a warning naming them, and the monitor runs", async () => {
    const mon = await startMonitor({ extraYaml: "colour: blue\nretention:\n  ttl: 5\n" });
    try {
      assert.match(mon.output(), /unknown config key "colour" ignored/);
      assert.match(mon.output(), /unknown config key "retention.ttl" ignored/);
      const b = await subscribed(mon, "job");
      const broker = await Broker.connect(mon.zmqPort);
      await broker.send("job", "STARTED");
      assert.deepEqual(await b.waitMessages(1), ['{"command": "STARTED"}']);
      b.close();
      broker.close();
    } finally {
      await mon.stop();
    }
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
    const wsPort = await freePort();
    const good = writeConfig(`websocket_uri: ["127.0.0.1", ${wsPort}]\nlogger:\n  level: debug\n`);
    const ok = await runCli(["--check-config", "-c", good], { timeoutMs: 5000 });
    assert.equal(ok.code, 0);
    assert.match(ok.stdout, /is valid/);
    const bad = await runCli(["--check-config", "-c", writeConfig("logger:\n  level: verbose\n")], { timeoutMs: 5000 });
    assert.equal(bad.code, 3);
    assert.match(bad.stderr, /"logger.level": got "verbose"/);
  });

  test("the original's command line (-c FILE with only the original's keys) runs and relays", async () => {
    const dir = tempDir();
    const wsPort = await freePort();
    const zmqPort = await freePort();
    const log = join(dir, "monitor.log");
    const config = writeConfig(
      `---\nwebsocket_uri:\n  - "127.0.0.1"\n  - ${wsPort}\nzeromq_uri:\n  - "127.0.0.1"\n  - ${zmqPort}\nlogger:\n  file: "${log}"\n  level: "debug"\n  max-size: 1048576\n  rotations: 3\n`,
    );
    const { spawn } = await import("node:child_process");
    const child = spawn(process.execPath, [join(ROOT, "src", "main.ts"), "-c", config], { stdio: "ignore" });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    try {
      await waitUntil(() => {
        try {
          return /ready/.test(readFileSync(log, "utf8"));
        } catch {
          return false;
        }
      }, 10_000, "the ready line in the log file");
      const b = await Browser.open(wsPort, "student_1");
      await waitUntil(() => /subscribed to channel student_1/.test(readFileSync(log, "utf8")), 5000, "subscription");
      const broker = await Broker.connect(zmqPort);
      await broker.send("student_1", "TASK", "úkol", "COMPLETED");
      assert.deepEqual(await b.waitMessages(1), ['{"command": "TASK", "task_id": "\\u00fakol", "task_state": "COMPLETED"}']);
      b.close();
      broker.close();
      child.kill("SIGTERM");
      assert.equal(await withTimeout(exited, 5000, "no exit"), 0);
    } finally {
      child.kill("SIGKILL");
    }
  });
});

test("SIGTERM is not held up by a refused upgrade whose peer never closes its side", async () => {
  const m = await startMonitor({ extraYaml: 'access:\n  allowed_origins: ["https://recodex.example"]\n' });
  const { connect } = await import("node:net");
  const socket = connect(m.wsPort, "127.0.0.1");
  socket.on("error", () => {});
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.write(
    "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://evil.example\r\n\r\n",
  );
  await m.waitFor(/refused WebSocket upgrade/);
  // The socket is left open on our side: the monitor must not wait for it.
  const started = Date.now();
  const code = await m.stop("SIGTERM");
  socket.destroy();
  assert.equal(code, 0);
  assert.ok(Date.now() - started < 7000, `stopped in ${Date.now() - started} ms`);
});

test("a ZeroMQ message larger than retention.max_bytes_per_channel is skipped and evicts nothing", async () => {
  const m = await startMonitor({ extraYaml: "retention:\n  max_bytes_per_channel: 2048\n  max_total_bytes: 4096\nlimits:\n  max_buffered_bytes: 65536\n" });
  const broker = await Broker.connect(m.zmqPort);
  try {
    await broker.send("small", "DOWNLOADED");
    await broker.send("huge", "TASK", "t", "x".repeat(5000));
    await m.waitFor(/ZeroMQ message skipped: message of \d+ bytes as JSON/);
    const late = await Browser.open(m.wsPort, "small");
    assert.deepEqual(await late.waitMessages(1), ['{"command": "DOWNLOADED"}'], "the other channel is still there");
    late.close();
  } finally {
    broker.close();
    await m.stop();
  }
});
