// The packaged Prometheus rules and Grafana dashboard, for real: promtool checks and
// unit-tests the rules and lints the monitor's /metrics; then a real Prometheus on loopback
// scrapes a real monitor under a short load, loads the rules, and answers every query of
// every dashboard panel with data. Needs Debian's `prometheus` package (prometheus, promtool).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Browser, upgradeOutcome } from "./helpers/browser.ts";
import { httpGet } from "./helpers/http.ts";
import { SEQUENCES, sendJob } from "./helpers/jobs.ts";
import { killOnExit, ROOT, tempDir } from "./helpers/monitor-process.ts";
import { relay } from "./helpers/relay.ts";
import { waitUntil } from "./helpers/wait.ts";

const RULES_DIR = join(ROOT, "packaging", "prometheus");
const RULES = join(RULES_DIR, "recodex-monitor.rules.yml");
const DASHBOARD = join(ROOT, "packaging", "grafana", "recodex-monitor.json");
const PROMETHEUS = "/usr/bin/prometheus";
const PROMTOOL = "/usr/bin/promtool";
const missing = [PROMETHEUS, PROMTOOL].filter((p) => !existsSync(p));
const skip = missing.length > 0 ? `needs ${missing.join(", ")} (Debian: apt-get install prometheus)` : false;
// Prometheus logs the address it bound, also for port 0.
const LISTENING = /msg="Listening on" address=127\.0\.0\.1:(\d+)/;

function promtool(args: string[], input?: string) {
  const r = spawnSync(PROMTOOL, args, { cwd: RULES_DIR, encoding: "utf8", input, timeout: 60_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

interface Target {
  panel: string;
  expr: string;
}

function dashboardTargets(): Target[] {
  const dash = JSON.parse(readFileSync(DASHBOARD, "utf8"));
  const targets: Target[] = [];
  for (const panel of dash.panels) {
    if (panel.type === "row") continue;
    assert.deepEqual(panel.datasource, { type: "prometheus", uid: "${datasource}" }, `panel "${panel.title}" uses the dashboard's datasource variable`);
    assert.ok(panel.targets.length > 0, `panel "${panel.title}" has a query`);
    for (const t of panel.targets) targets.push({ panel: panel.title, expr: t.expr });
  }
  return targets;
}

test("the rules pass promtool check rules and their unit tests, one per alert", { skip }, () => {
  const check = promtool(["check", "rules", RULES]);
  assert.equal(check.code, 0, check.out);
  assert.match(check.out, /SUCCESS: 8 rules found/);
  const unit = promtool(["test", "rules", "recodex-monitor.rules.test.yml"]);
  assert.equal(unit.code, 0, unit.out);
  assert.match(unit.out, /SUCCESS/);
  const tests = readFileSync(join(RULES_DIR, "recodex-monitor.rules.test.yml"), "utf8");
  for (const [, alert] of readFileSync(RULES, "utf8").matchAll(/- alert: (\w+)/g)) {
    assert.match(tests, new RegExp(`alertname: ${alert}\\n[\\s\\S]*?exp_alerts:\\n\\s+- exp_labels`), `${alert} has a test where it fires`);
  }
});

test("the dashboard is valid JSON whose panels all query the datasource variable, laid out without overlap", () => {
  const dash = JSON.parse(readFileSync(DASHBOARD, "utf8"));
  assert.equal(dash.uid, "recodex-monitor");
  assert.deepEqual(dash.templating.list.map((v: { name: string }) => v.name), ["datasource", "instance"]);
  const cells = new Set<string>();
  for (const p of dash.panels) {
    const { x, y, w, h } = p.gridPos;
    assert.ok(x >= 0 && x + w <= 24, `panel "${p.title}" fits the 24-column grid`);
    for (let i = x; i < x + w; i++) {
      for (let j = y; j < y + h; j++) {
        assert.ok(!cells.has(`${i},${j}`), `panel "${p.title}" overlaps another at ${i},${j}`);
        cells.add(`${i},${j}`);
      }
    }
  }
  assert.ok(dashboardTargets().length >= 30);
});

test("a real Prometheus scrapes a real monitor under load: the rules evaluate and every dashboard query returns data", { skip, timeout: 180_000 }, async (t) => {
  const { monitor: m, broker } = await relay(t, {
    extraYaml: 'http:\n  enabled: true\n  on_websocket_port: true\naccess:\n  allowed_origins: ["https://recodex.example.org"]\n',
  });
  // Its metric names pass Prometheus's own lint.
  const lint = promtool(["check", "metrics"], (await httpGet(m.wsPort, "/metrics")).body);
  assert.equal(lint.code, 0, lint.out);
  assert.equal(lint.out.trim(), "", lint.out);

  const dir = tempDir("rmon-prometheus-");
  writeFileSync(
    join(dir, "prometheus.yml"),
    `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - ${RULES}\n` +
      `scrape_configs:\n  - job_name: recodex-monitor\n    static_configs:\n      - targets: ["127.0.0.1:${m.wsPort}"]\n`,
  );
  const prometheus = spawn(
    PROMETHEUS,
    [`--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "data")}`, "--web.listen-address=127.0.0.1:0", "--log.level=info"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  killOnExit(prometheus);
  let log = "";
  prometheus.stdout.on("data", (d: Buffer) => (log += d.toString()));
  prometheus.stderr.on("data", (d: Buffer) => (log += d.toString()));
  const exited = new Promise((resolve) => prometheus.on("exit", resolve));
  t.after(async () => {
    prometheus.kill("SIGTERM");
    await exited;
  });
  let port = 0;
  await waitUntil(
    () => {
      if (prometheus.exitCode !== null) throw new Error(`prometheus exited (${prometheus.exitCode}):\n${log}`);
      port = Number(log.match(LISTENING)?.[1] ?? 0);
      return port !== 0;
    },
    () => `Prometheus to listen; its log:\n${log}`,
    30_000,
  );
  const api = async (path: string) => {
    const r = await httpGet(port, path);
    assert.equal(r.status, 200, `${path}: ${r.body}\n${log}`);
    return JSON.parse(r.body).data;
  };
  await waitUntil(async () => (await httpGet(port, "/-/ready").catch(() => ({ status: 0 }))).status === 200, () => `Prometheus ready; its log:\n${log}`, 30_000);

  // The load: whole jobs with a watching browser each, a build failure, a reassigned job,
  // a job that stays open, a broker FAILED, and browsers from a foreign origin (refused).
  let stop = false;
  let jobs = 0;
  const load = (async () => {
    for (let i = 0; !stop; i++) {
      const channel = `student_load_${i}`;
      const browser = await Browser.open(m.wsPort, channel);
      const steps = i % 5 === 1 ? SEQUENCES.buildFailure : i % 5 === 2 ? SEQUENCES.reassigned : SEQUENCES.whole;
      await sendJob(broker, channel, steps);
      await browser.waitClose();
      if (i % 10 === 3) await broker.send(`student_open_${i}`, "DOWNLOADED");
      if (i % 10 === 7) await broker.send(`student_failed_${i}`, "FAILED");
      if (i % 10 === 9) (await upgradeOutcome(m.url(), { origin: "https://elsewhere.example" })).browser.close();
      jobs++;
    }
  })();
  // Stopped before the monitor is (the test's end, or its failure).
  const stopLoad = async () => {
    stop = true;
    await load;
  };
  t.after(() => stopLoad().catch(() => {}));

  const targets = dashboardTargets();
  const pending = new Map(targets.map((target) => [target.expr, target]));
  const query = async (expr: string) => {
    // Grafana's variables, as Grafana would fill them for this scrape interval.
    const promql = expr.replaceAll("$__rate_interval", "15s").replaceAll("$instance", ".*");
    return (await api(`/api/v1/query?query=${encodeURIComponent(promql)}`)) as { resultType: string; result: { value: [number, string] }[] };
  };
  await waitUntil(
    async () => {
      for (const [expr] of pending) {
        const data = await query(expr);
        const finite = data.result.length > 0 && data.result.every((r) => Number.isFinite(Number(r.value[1])));
        if (finite) pending.delete(expr);
      }
      return pending.size === 0;
    },
    () => `every panel query to return finite data; still empty or NaN: ${[...pending.values()].map((p) => `${p.panel}: ${p.expr}`).join(" | ")}`,
    120_000,
  );
  await stopLoad();
  t.diagnostic(`${targets.length} queries of ${new Set(targets.map((p) => p.panel)).size} panels returned data after ${jobs} jobs`);

  // The target is up, and every rule has been evaluated against the real series without error.
  const up = await query('up{job="recodex-monitor"}');
  assert.equal(up.result[0].value[1], "1");
  type Rule = { name: string; health: string; lastError?: string; state: string };
  let rules: Rule[] = [];
  await waitUntil(
    async () => {
      rules = ((await api("/api/v1/rules")).groups as { rules: Rule[] }[]).flatMap((g) => g.rules);
      return rules.length === 8 && rules.every((r) => r.health === "ok");
    },
    () => `all 8 rules evaluated without error: ${JSON.stringify(rules.map((r) => [r.name, r.health, r.lastError]))}`,
    30_000,
  );
  // Under a healthy load none of them fires.
  const firing = rules.filter((r) => r.state === "firing").map((r) => r.name);
  assert.deepEqual(firing, []);
});
