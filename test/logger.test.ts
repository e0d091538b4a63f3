// Logging: the original's level names, the line format, size rotation with numbered
// files, "-" for stderr, and what the monitor says about clients and channels.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Log, WarnLimiter } from "../src/logger.ts";
import { MonitorError } from "../src/errors.ts";
import { Browser } from "./helpers/browser.ts";
import { monitor, tempDir } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { waitUntil } from "./helpers/wait.ts";

const LINE = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} \[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] .*$/;

function fileLog(level: "debug" | "info" | "warning" | "error" | "critical", extra: Partial<{ "max-size": number; rotations: number }> = {}) {
  const file = join(tempDir(), "monitor.log");
  const log = new Log({ file, level, "max-size": 1024 * 1024, rotations: 3, ...extra });
  return { file, log };
}

function writeAll(log: Log): void {
  log.debug("d-line");
  log.info("i-line");
  log.warning("w-line");
  log.error("e-line");
  log.critical("c-line");
}

test("each level writes its own and the more severe messages, with the original's level names", async () => {
  const expected: Record<string, string[]> = {
    debug: ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    info: ["INFO", "WARNING", "ERROR", "CRITICAL"],
    warning: ["WARNING", "ERROR", "CRITICAL"],
    error: ["ERROR", "CRITICAL"],
    critical: ["CRITICAL"],
  };
  for (const level of ["debug", "info", "warning", "error", "critical"] as const) {
    const { file, log } = fileLog(level);
    writeAll(log);
    await log.close();
    const lines = readFileSync(file, "utf8").trim().split("\n");
    for (const line of lines) assert.match(line, LINE);
    assert.deepEqual(
      lines.map((l) => l.match(LINE)![1]),
      expected[level],
      `level ${level}`,
    );
  }
});

test("a line carries the message text unchanged after the level", async () => {
  const { file, log } = fileLog("info");
  log.info("client #7 (127.0.0.1) subscribed to channel student_ž");
  await log.close();
  assert.match(readFileSync(file, "utf8"), /\[INFO\] client #7 \(127\.0\.0\.1\) subscribed to channel student_ž\n$/);
});

test("setLevel changes what is written from then on", async () => {
  const { file, log } = fileLog("info");
  log.debug("hidden");
  log.setLevel("debug");
  log.debug("shown");
  log.setLevel("error");
  log.warning("hidden too");
  await log.close();
  const text = readFileSync(file, "utf8");
  assert.doesNotMatch(text, /hidden/);
  assert.match(text, /\[DEBUG\] shown/);
});

test("the log file is appended to, not truncated, when the monitor starts again", async () => {
  const { file, log } = fileLog("info");
  log.info("first run");
  await log.close();
  const again = new Log({ file, level: "info", "max-size": 1024 * 1024, rotations: 3 });
  again.info("second run");
  await again.close();
  const text = readFileSync(file, "utf8");
  assert.match(text, /first run[^]*second run/);
});

test("a log file that cannot be created is a start-up error with its own code", () => {
  const dir = tempDir();
  const blocker = join(dir, "file");
  writeFileSync(blocker, "x"); // a regular file where a directory is expected
  assert.throws(
    () => new Log({ file: join(blocker, "monitor.log"), level: "info", "max-size": 1024, rotations: 1 }),
    (err: unknown) => err instanceof MonitorError && err.code === "RMON_ERR_LOG_FILE" && err.exitCode === 5,
  );
});

test("the file rotates at max-size into monitor.log.1 ... and keeps only `rotations` old files", async () => {
  const { file, log } = fileLog("info", { "max-size": 1024, rotations: 2 });
  for (let i = 0; i < 200; i++) log.info(`line ${i} ${"x".repeat(60)}`);
  await log.close();
  const dir = join(file, "..");
  const names = readdirSync(dir).sort();
  assert.deepEqual(names, ["monitor.log", "monitor.log.1", "monitor.log.2"]);
  for (const n of names) assert.ok(statSync(join(dir, n)).size <= 1024 + 200, `${n} is ${statSync(join(dir, n)).size} bytes`);
  assert.match(readFileSync(file, "utf8") + readFileSync(file + ".1", "utf8"), /line 199 /);
});

test("the running monitor rotates its log: monitor.log, .1 and .2 and no .3 with rotations 2", async (t) => {
  const dir = tempDir();
  const file = join(dir, "monitor.log");
  const m = await monitor(t, { extraYaml: `logger:\n  file: ${file}\n  level: info\n  max-size: 1024\n  rotations: 2\n` });
  // Each subscription logs one INFO line of about 100 bytes.
  for (let round = 0; round < 10; round++) {
    const clients = await Promise.all(
      Array.from({ length: 10 }, (_, i) => Browser.open(m.wsPort, `rotation_channel_${round}_${i}_${"r".repeat(20)}`)),
    );
    for (const c of clients) c.close();
  }
  await waitUntil(() => existsSync(file + ".2"), "monitor.log.2");
  assert.equal(await m.stop(), 0);
  const names = readdirSync(dir).filter((n) => n.startsWith("monitor.log")).sort();
  assert.deepEqual(names, ["monitor.log", "monitor.log.1", "monitor.log.2"]);
  assert.match(readFileSync(file, "utf8"), /\[INFO\] stopped\n$/, "the last line is flushed before exit");
});

test('logger.file "-" writes the log to stderr, and at info there are no DEBUG lines', async (t) => {
  const s = await relay(t, { extraYaml: 'logger:\n  file: "-"\n  level: info\n' });
  await s.subscribe("info_channel");
  assert.equal(await s.monitor.stop(), 0);
  const lines = s.monitor.output().trim().split("\n");
  for (const line of lines) assert.match(line, LINE);
  assert.ok(!lines.some((l) => l.includes("[DEBUG]")), "no DEBUG line at level info");
  assert.ok(lines.some((l) => l.includes("[INFO] recodex-monitor ready")));
});

test("at debug the log says which client connected, subscribed to which channel and left", async (t) => {
  const s = await relay(t); // level debug, stderr
  const b = await s.subscribe("student_42", { path: "/ws/" });
  await s.broker.send("student_42", "FINISHED");
  await b.waitClose();
  await s.monitor.waitFor(/disconnected with 1000 from channel student_42/);
  const out = s.monitor.output();
  const id = out.match(/client #(\d+) connected from 127\.0\.0\.1 \(\/ws\/\)/)?.[1];
  assert.ok(id, out);
  assert.match(out, new RegExp(`\\[INFO\\] client #${id} \\(127\\.0\\.0\\.1\\) subscribed to channel student_42\\n`));
  assert.match(out, new RegExp(`\\[DEBUG\\] client #${id} \\(127\\.0\\.0\\.1\\) disconnected with 1000 from channel student_42`));
});

test("at warning the monitor writes no INFO lines, yet reports itself on stderr", async (t) => {
  const dir = tempDir();
  const file = join(dir, "monitor.log");
  const m = await monitor(t, { extraYaml: `logger:\n  file: ${file}\n  level: warning\n`, waitReady: false });
  await m.waitFor(/running; log: /);
  // An error the monitor must log at this level, written after the ready line it must not.
  m.editConfig((text) => text + "limits: [\n");
  m.child.kill("SIGHUP");
  await waitUntil(() => /\[ERROR\] configuration not reloaded/.test(readFileSync(file, "utf8")), "the reload's error in the log file");
  assert.equal(await m.stop(), 0);
  const text = readFileSync(file, "utf8");
  assert.doesNotMatch(text, /\[(INFO|DEBUG)\]/);
});

test("a flood of one warning kind is logged 20 times a window, then how many were held back, even when the flood stops", () => {
  const lines: string[] = [];
  let now = 0;
  const limiter = new WarnLimiter({ warning: (l: string) => lines.push(l) }, 60_000, 20, () => now);
  for (let i = 0; i < 25; i++) limiter.warn("malformed", `skipped ${i}`);
  limiter.warn("evicted", "channel x evicted");
  assert.equal(lines.length, 21, "20 of the flood and the other kind");
  now = 59_999;
  limiter.flush();
  assert.equal(lines.length, 21, "nothing before the window ends");
  now = 60_000;
  limiter.flush();
  assert.deepEqual(lines.slice(21), ['5 more "malformed" warnings suppressed in the last 60 s']);
  limiter.warn("malformed", "skipped again");
  assert.equal(lines.at(-1), "skipped again", "a new window starts afresh");
});
