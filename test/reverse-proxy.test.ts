// The packaged reverse-proxy recipe, for real: nginx terminates TLS and serves the snippet
// from packaging/reverse-proxy/nginx.conf; headless Chromium opens a page that subscribes
// through wss://.../ws/ the way the ReCodEx web-app does; a job goes in on the ZeroMQ side.
// Needs /usr/sbin/nginx and /usr/bin/chromium (Debian: nginx-light chromium).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Broker } from "./helpers/broker.ts";
import { ROOT, startMonitor, tempDir, type MonitorProcess } from "./helpers/monitor-process.ts";
import { Chromium, missingTools, splitNginxSnippet, startNginx, type NginxProcess } from "./helpers/reverse-proxy.ts";
import { CERT_A } from "./helpers/tls.ts";
import { escapeRegExp, waitUntil } from "./helpers/wait.ts";

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

      const www = join(dir, "www");
      mkdirSync(www);
      writeFileSync(join(www, "index.html"), readFileSync(PAGE));
      nginx = await startNginx({ dir, cert: CERT_A.cert, key: CERT_A.key, root: www, snippet });
      const n = nginx;
      const port = n.port;
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
      await c.waitFor<boolean>("window.monitorState.opened || window.monitorState.close", "the page's socket");
      const subscribed = await m.waitFor(new RegExp(`client #\\d+ \\((\\S+)\\) subscribed to channel ${escapeRegExp(channel)}`));
      // The monitor sees nginx (loopback), on the path nginx forwards (/ws/ stripped).
      assert.match(subscribed, /\(127\.0\.0\.1\) subscribed/);
      assert.match(m.output(), /client #\d+ connected from 127\.0\.0\.1 \(\/\)/);

      for (const step of JOB) await broker.send(channel, ...(step.frames as [string, ...string[]]));

      const state = await c.waitFor<PageState>("window.monitorState.close && window.monitorState", "the monitor to close the page's socket");
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
      const upgraded = new RegExp(`^"GET /ws/ HTTP/1\\.1" 101 upstream=127\\.0\\.0\\.1:${m.wsPort} upgrade=websocket$`, "m");
      await waitUntil(() => existsSync(n.accessLog) && upgraded.test(readFileSync(n.accessLog, "utf8")), "the upgrade in nginx's access log");
      assert.match(readFileSync(n.accessLog, "utf8"), /"GET \/\?channel=\S+ HTTP\/1\.1" 200 /);

      // The page as rendered, for the record.
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
