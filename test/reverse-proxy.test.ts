// The packaged reverse-proxy recipe, for real: nginx terminates TLS and serves the snippet
// from packaging/reverse-proxy/nginx.conf; headless Chromium opens a page that subscribes
// through wss://.../ws/ the way the ReCodEx web-app does; a job goes in on the ZeroMQ side.
// Needs /usr/sbin/nginx, /usr/bin/chromium and openssl (Debian: nginx-light chromium).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Broker, delay, freePort, ROOT, startMonitor, tempDir, type MonitorProcess } from "./helpers.ts";
import {
  Chromium,
  makeCertificate,
  killOnExit,
  missingTools,
  splitNginxSnippet,
  nginxMissing,
  startNginx,
  type NginxProcess,
} from "./proxy-helpers.ts";
import { upgradeOutcome } from "./feature-helpers.ts";

const SNIPPET = join(ROOT, "packaging", "reverse-proxy", "nginx.conf");
const PAGE = join(ROOT, "test", "fixtures", "reverse-proxy-page.html");
const PACKAGED_UPSTREAM = "http://127.0.0.1:4567/";

const missing = missingTools();

// A non-ASCII task id: Latin-1, Latin Extended and an astral character (U+1D54F, a surrogate pair in
// JSON; DejaVu Sans, which Chromium pulls in, has a glyph for it).
const ODD_TASK = "úkol-č2 \u{1D54F}";

/** What the broker sends, and the exact frames (Python's json.dumps(sort_keys=True)) expected. */
const JOB: { frames: string[]; json: string }[] = [
  { frames: ["DOWNLOADED"], json: `{"command": "DOWNLOADED"}` },
  { frames: ["STARTED"], json: `{"command": "STARTED"}` },
  {
    frames: ["TASK", "compile", "COMPLETED"],
    json: `{"command": "TASK", "task_id": "compile", "task_state": "COMPLETED"}`,
  },
  {
    frames: ["TASK", ODD_TASK, "FAILED"],
    json: `{"command": "TASK", "task_id": "\\u00fakol-\\u010d2 \\ud835\\udd4f", "task_state": "FAILED"}`,
  },
  {
    frames: ["TASK", "run-3", "SKIPPED"],
    json: `{"command": "TASK", "task_id": "run-3", "task_state": "SKIPPED"}`,
  },
  { frames: ["ENDED"], json: `{"command": "ENDED"}` },
  { frames: ["UPLOADED"], json: `{"command": "UPLOADED"}` },
  { frames: ["FINISHED"], json: `{"command": "FINISHED"}` },
];

interface PageState {
  url: string;
  channel: string;
  opened: boolean;
  frames: string[];
  messages: Record<string, string>[];
  tasks: [string, string][];
  finished: boolean;
  close: { code: number; reason: string; wasClean: boolean } | null;
  errors: number;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

async function waitForFile(path: string, pattern: RegExp, ms: number): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    let text = "";
    try {
      text = readFileSync(path, "utf8");
    } catch {
      /* not written yet */
    }
    if (pattern.test(text)) return text;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern} in ${path}:\n${text}`);
    await delay(25);
  }
}

test(
  "web-app style page in headless Chromium gets a job through nginx (wss://…/ws/)",
  { skip: missing ?? false, timeout: 60_000 },
  async (t) => {
    const started = Date.now();
    const dir = tempDir("rmon-proxy-");
    const cleanups: (() => Promise<void> | void)[] = [];
    let monitor: MonitorProcess | undefined;
    let nginx: NginxProcess | undefined;
    let chromium: Chromium | undefined;
    let ok = false;
    try {
      // The snippet as an admin would paste it, with the monitor's port instead of 4567.
      monitor = await startMonitor();
      const m = monitor;
      killOnExit(m.child);
      cleanups.push(async () => void (await m.stop()));
      const snippetText = readFileSync(SNIPPET, "utf8");
      assert.equal(
        snippetText.split(PACKAGED_UPSTREAM).length - 1,
        1,
        `${SNIPPET} should proxy_pass to ${PACKAGED_UPSTREAM} exactly once`,
      );
      const snippet = splitNginxSnippet(snippetText.replace(PACKAGED_UPSTREAM, `http://127.0.0.1:${m.wsPort}/`));
      assert.equal(snippet.http.length, 1, "the snippet has one map block for the http context");
      assert.equal(snippet.server.length, 1, "the snippet has one location block for the server context");
      assert.match(snippet.server[0], /^location \/ws\/ \{/);

      const { cert, key } = makeCertificate(dir);
      const www = join(dir, "www");
      mkdirSync(www);
      writeFileSync(join(www, "index.html"), readFileSync(PAGE));
      const port = await freePort();
      nginx = await startNginx({ dir, port, cert, key, root: www, snippet });
      const n = nginx;
      cleanups.push(() => n.stop());

      const broker = await Broker.connect(m.zmqPort);
      cleanups.push(() => broker.close());

      const profile = join(dir, "chromium-profile");
      chromium = await Chromium.launch(profile);
      const c = chromium;
      cleanups.push(async () => {
        await c.close();
        rmSync(profile, { recursive: true, force: true });
      });

      const channel = `student_${randomUUID()}`;
      const pageUrl = `https://127.0.0.1:${port}/?channel=${encodeURIComponent(channel)}`;
      await c.navigate(pageUrl);
      // The page's socket is open and the monitor has its subscription.
      await c.waitFor<boolean>("window.monitorState.opened || window.monitorState.close", 10_000, "the page's socket");
      const subscribed = await m.waitFor(
        new RegExp(`client #\\d+ \\((\\S+)\\) subscribed to channel ${escapeRegExp(channel)}`),
        10_000,
      );
      // The monitor sees nginx (loopback), on the path nginx forwards (/ws/ stripped).
      assert.match(subscribed, /\(127\.0\.0\.1\) subscribed/);
      assert.match(m.output(), /client #\d+ connected from 127\.0\.0\.1 \(\/\)/);

      for (const step of JOB) await broker.send(channel, ...(step.frames as [string, ...string[]]));

      const state = await c.waitFor<PageState>(
        "window.monitorState.close && window.monitorState",
        10_000,
        "the monitor to close the page's socket",
      );
      t.diagnostic(`page received ${state.frames.length} frames, closed with ${state.close!.code}`);

      // Exactly those messages, in order, byte for byte; then a clean close with 1000.
      assert.deepEqual(state.frames, JOB.map((s) => s.json));
      assert.deepEqual(
        state.messages,
        JOB.map((s) => {
          const [command, task_id, task_state] = s.frames;
          return task_id === undefined ? { command } : { command, task_id, task_state };
        }),
      );
      assert.deepEqual(state.tasks, [
        ["compile", "COMPLETED"],
        [ODD_TASK, "FAILED"],
        ["run-3", "SKIPPED"],
      ]);
      assert.equal(state.finished, true);
      assert.equal(state.close!.code, 1000);
      assert.equal(state.close!.wasClean, true);
      assert.equal(state.errors, 0);
      assert.equal(state.url, `wss://127.0.0.1:${port}/ws/`);

      // nginx logged the upgrade on /ws/ (101) towards the monitor's port once the socket closed.
      const access = await waitForFile(
        n.accessLog,
        new RegExp(`^127\\.0\\.0\\.1 "GET /ws/ HTTP/1\\.1" 101 upstream=127\\.0\\.0\\.1:${m.wsPort} upgrade=websocket$`, "m"),
        5000,
      );
      assert.match(access, /"GET \/\?channel=\S+ HTTP\/1\.1" 200 /);

      // The page as rendered, for the record.
      await delay(100);
      const png = await c.screenshot();
      assert.equal(png.subarray(1, 4).toString("latin1"), "PNG");
      const shot = join(dir, "reverse-proxy.png");
      writeFileSync(shot, png);
      t.diagnostic(`screenshot: ${shot}`);
      const artifacts = process.env.RMON_ARTIFACTS;
      if (artifacts) {
        mkdirSync(artifacts, { recursive: true });
        copyFileSync(shot, join(artifacts, "reverse-proxy.png"));
        copyFileSync(n.accessLog, join(artifacts, "reverse-proxy-nginx-access.log"));
        t.diagnostic(`copied to ${artifacts}`);
      }
      ok = true;
    } finally {
      for (const f of cleanups.reverse()) {
        try {
          await f();
        } catch (err) {
          t.diagnostic(`cleanup: ${(err as Error).message}`);
        }
      }
      if (!ok) {
        t.diagnostic(`kept ${dir} for inspection`);
        if (nginx) t.diagnostic(`nginx:\n${nginx.output()}`);
        if (chromium) {
          const lines = chromium.output().split("\n").filter((l) => !/dbus|DBus/.test(l));
          t.diagnostic(`chromium:\n${lines.join("\n").slice(-4000)}`);
        }
        if (monitor) t.diagnostic(`monitor:\n${monitor.output().slice(-4000)}`);
      }
      t.diagnostic(`took ${Date.now() - started} ms`);
    }
  },
);

test(
  "behind the nginx recipe with access.trusted_proxies, two users get separate per-address budgets and a client's own X-Forwarded-For is not believed",
  { skip: nginxMissing() ?? false, timeout: 60_000 },
  async (t) => {
    const dir = tempDir("rmon-proxy-ip-");
    const m = await startMonitor({
      extraYaml: 'access:\n  trusted_proxies: ["127.0.0.1"]\n  max_connections_per_ip: 1\n',
    });
    killOnExit(m.child);
    t.after(() => m.stop("SIGKILL"));
    const snippet = splitNginxSnippet(readFileSync(SNIPPET, "utf8").replace(PACKAGED_UPSTREAM, `http://127.0.0.1:${m.wsPort}/`));
    const { cert, key } = makeCertificate(dir);
    const www = join(dir, "www");
    mkdirSync(www);
    writeFileSync(join(www, "index.html"), "<!doctype html>\n");
    const port = await freePort();
    const nginx = await startNginx({ dir, port, cert, key, root: www, snippet });
    t.after(() => nginx.stop());
    const url = `wss://127.0.0.1:${port}/ws/`;
    const via = (localAddress: string, headers: Record<string, string> = {}) =>
      upgradeOutcome(url, { localAddress, rejectUnauthorized: false, headers });

    // Each user (its own source address towards nginx) has one slot.
    const alice = await via("127.0.0.2");
    t.after(() => alice.browser.close());
    const bob = await via("127.0.0.3");
    t.after(() => bob.browser.close());
    assert.deepEqual([alice.status, bob.status], ["open", "open"], "before: every user is 127.0.0.1 and bob got 429");
    await m.waitFor(/client #\d+ connected from 127\.0\.0\.2 /);
    await m.waitFor(/client #\d+ connected from 127\.0\.0\.3 /);
    // Alice's second tab is over her budget, even when it claims to come from elsewhere.
    const aliceAgain = await via("127.0.0.2", { "X-Forwarded-For": "127.0.0.9" });
    t.after(() => aliceAgain.browser.close());
    assert.equal(aliceAgain.status, 429);
    await m.waitFor(/refused WebSocket upgrade from 127\.0\.0\.2: too many connections from this address/);
    assert.doesNotMatch(m.output(), /127\.0\.0\.9/);
    rmSync(dir, { recursive: true, force: true });
  },
);
