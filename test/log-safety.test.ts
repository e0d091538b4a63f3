// The log under attack: text from browsers and the broker is escaped (one event, one line;
// no control character or ANSI escape written as such), subscriptions to channels the broker
// never wrote to are counted and summarised rather than logged one by one, and the log file
// survives a full disk and a deleted directory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { printable } from "../src/printable.ts";
import { Broker } from "./helpers/broker.ts";
import { Browser } from "./helpers/browser.ts";
import { HTTP_OWN_PORT, metric } from "./helpers/http.ts";
import { monitor, tempDir, withTmpfs } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { count, escapeRegExp, waitUntil } from "./helpers/wait.ts";

const FORGED = "x\n2099-01-01 00:00:00,000 [CRITICAL] FORGED LINE\r\u001b[31mred\u001b[0m\u2028\u0007";
const FINISHED = '{"command": "FINISHED"}';

test("printable escapes control characters, ANSI escapes, line separators and backslashes, and leaves the rest as it is", () => {
  assert.equal(printable("student_ab-12 úkol 😀"), "student_ab-12 úkol 😀");
  assert.equal(printable("a\nb\rc\td"), "a\\nb\\rc\\td");
  assert.equal(printable("\u001b[31mred"), "\\x1b[31mred");
  assert.equal(printable("\u0000\u007f\u0085\u009b"), "\\x00\\x7f\\x85\\x9b");
  assert.equal(printable("\u2028\u2029\u202e\u2066"), "\\u2028\\u2029\\u202e\\u2066");
  assert.equal(printable("back\\slash"), "back\\\\slash");
  assert.equal(printable("\ud800 lone"), "\\ud800 lone");
});

test("a channel id with a newline, a forged log line and ANSI escapes is logged on one line, escaped, from a browser and from the broker", async (t) => {
  const s = await relay(t, { extraYaml: "retention:\n  finished_ttl: 0.3\n" });
  const m = s.monitor;
  // subscribe() looks for the id as sent; the log has it escaped.
  const b = await s.connect({ path: `/${encodeURIComponent("\n[CRITICAL] path")}` });
  b.ws.send(FORGED);
  await m.waitFor(new RegExp(`subscribed to channel ${escapeRegExp(printable(FORGED))}\\n`));
  await s.broker.send(FORGED, "FINISHED");
  assert.deepEqual(await b.waitMessages(1), [FINISHED]);
  assert.equal((await b.waitClose()).code, 1000);
  await m.waitFor(/disconnected with 1000/);
  // The finished channel is dropped (finished_ttl): its id is logged by the store side too.
  await m.waitFor(/dropped \(finished_ttl passed/);
  const out = m.output();
  assert.match(out, /subscribed to channel x\\n2099-01-01 00:00:00,000 \[CRITICAL\] FORGED LINE\\r\\x1b\[31mred\\x1b\[0m\\u2028\\x07\n/);
  assert.match(out, /channel x\\n2099-01-01 [^\n]*FORGED LINE[^\n]* dropped/);
  for (const line of out.split("\n")) {
    assert.doesNotMatch(line, /^2099|^\[CRITICAL\]|FORGED LINE$/, `a forged line: ${JSON.stringify(line)}`);
  }
  assert.doesNotMatch(out, /[\u0000-\u0008\u000b-\u001f\u007f\u2028]/, "no raw control characters in the log");
});

test("subscriptions to channels the broker never wrote to are counted and summarised, not logged one by one", async (t) => {
  const m = await monitor(t, { extraYaml: HTTP_OWN_PORT + 'logger:\n  file: "-"\n  level: info\n' });
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  const clients: Browser[] = [];
  t.after(() => clients.forEach((c) => c.close()));
  for (let i = 0; i < 200; i++) clients.push(await Browser.open(m.wsPort, `nothing_here_${i}`));
  await waitUntil(async () => (await metric(m.httpPort, "recodex_monitor_unknown_channel_subscriptions_total")) === 200, "200 unknown-channel subscriptions counted");
  // A subscription to a channel the broker has written to is still logged: the marker. The
  // first client proves the message is in; the second one's subscription is then logged.
  await broker.send("known_channel", "STARTED");
  for (let i = 0; i < 2; i++) {
    const known = await Browser.open(m.wsPort, "known_channel");
    clients.push(known);
    await known.waitMessages(1);
  }
  await m.waitFor(/subscribed to channel known_channel/);
  assert.doesNotMatch(m.output(), /nothing_here_/);
  // The summary is written when its window closes, and at the latest when the monitor stops.
  assert.equal(await m.stop("SIGTERM"), 0);
  assert.match(m.output(), /200 subscriptions to channels the broker has not written to \(yet\) in the last [\d.]+ s/);
});

const NO_MOUNT = process.getuid?.() === 0 && existsSync("/usr/bin/unshare") ? false : "needs root and unshare (a tmpfs in a private mount namespace)";

test("a log file on a full disk: the monitor keeps relaying, says so once on stderr, and writes again once there is room", { skip: NO_MOUNT }, async (t) => {
  const dir = tempDir("rmon-logfs-");
  const m = await monitor(t, {
    extraYaml: `logger:\n  file: ${join(dir, "monitor.log")}\n  level: debug\n`,
    command: withTmpfs(dir, "256k"),
    waitReady: false,
  });
  // The tmpfs is the monitor's alone; the test reaches it through the monitor's root.
  const inside = join(`/proc/${m.child.pid}/root`, dir);
  const log = join(inside, "monitor.log");
  await m.ready(log);
  const filler = join(inside, "filler");
  try {
    writeFileSync(filler, Buffer.alloc(512 * 1024));
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, "ENOSPC");
  }
  const broker = await Broker.connect(m.zmqPort);
  t.after(() => broker.close());
  // Log lines (connections at debug) until a write fails.
  for (let i = 0; i < 200 && !/cannot be written/.test(m.output()); i++) {
    const b = await Browser.open(m.wsPort, `full_disk_${i}`);
    b.close();
  }
  await m.waitFor(/log file \S+ cannot be written \(ENOSPC/);
  // Relaying goes on while the log cannot be written (live or from history: either way).
  const watcher = await Browser.open(m.wsPort, "while_full");
  t.after(() => watcher.close());
  for (let i = 0; i < 20; i++) (await Browser.open(m.wsPort, `more_${i}`)).close();
  await broker.send("while_full", "FINISHED");
  assert.deepEqual(await watcher.waitMessages(1), [FINISHED]);

  unlinkSync(filler);
  await m.waitFor(/log file \S+ written again/);
  const marker = await Browser.open(m.wsPort, "after_recovery");
  t.after(() => marker.close());
  await waitUntil(() => /subscribed to channel after_recovery/.test(readFileSync(log, "utf8")), "a line written after recovery");
  const text = readFileSync(log, "utf8");
  assert.match(text, /\[WARNING\] log file \S+ could not be written since [\d-]+ [\d:,]+ \(ENOSPC[^\n]*\): \d+ lines lost/);
  assert.equal(count(m.output(), /cannot be written/), 1, "one line on stderr when it fails");
  assert.equal(count(m.output(), /written again/), 1, "one line on stderr when it recovers");
});

test("a log directory deleted while the monitor runs is re-created, and the log says so", async (t) => {
  const dir = join(tempDir("rmon-logdir-"), "logs");
  const file = join(dir, "monitor.log");
  const m = await monitor(t, { extraYaml: `logger:\n  file: ${file}\n  level: info\n` });
  rmSync(dir, { recursive: true });
  const recreated = /\[WARNING\] log file \S+ was removed or replaced while in use: re-created/;
  await waitUntil(() => existsSync(file) && recreated.test(readFileSync(file, "utf8")), "the log re-created, saying so");
  // And the next line goes there too.
  m.child.kill("SIGHUP");
  await waitUntil(() => /configuration reloaded/.test(readFileSync(file, "utf8")), "the reload's line in the re-created file");
});
