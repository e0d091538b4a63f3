#!/usr/bin/env node
// The packages under a live systemd: packaging/test-packages.sh boots a throw-away Debian
// root with systemd-nspawn (systemd is PID 1 in there, loopback-only network) and runs
// this file inside the container's network namespace only, so that its ZeroMQ and
// WebSocket clients reach the service on the container's loopback, while commands run in
// all of the container's namespaces through nsenter.
//
//   nsenter --net=/proc/LEADER/ns/net node packaging/live-systemd.mjs --leader LEADER \
//     --root DIR --format deb|rpm|smoke --package FILE [--upgrade FILE] --binary FILE
//
// deb and rpm: install (enabled, active, ready before the installer returns, the
// self-test passes, the sandbox is on), the clear error when no directory can hold the
// ZeroMQ addon, restart with a connected client, journal priorities, reload, stop, a busy
// port, kill -9, upgrade with an edited configuration, removal (and for the .deb purge,
// reinstallation and purge with RECODEX_PURGE_LOGS=yes). smoke: install, self-test, stop.
// Each step waits for what it checks (a port, a frame, a journal line, a unit property),
// bounded in time.
import { execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { JOB, openBroker, openClient, roundTrip, waitFor } from "./roundtrip.mjs";

const { values: opts } = parseArgs({
  options: {
    leader: { type: "string" },
    root: { type: "string" },
    format: { type: "string" },
    package: { type: "string" },
    upgrade: { type: "string" },
    binary: { type: "string" },
  },
});
for (const k of ["leader", "root", "format", "package", "binary"]) if (!opts[k]) throw new Error(`--${k} is required`);
const { leader, root, format } = opts;
const here = path.dirname(fileURLToPath(import.meta.url));
const UNIT = "recodex-monitor.service";
const CONFIG = "/etc/recodex/monitor/config.yml";
const WS = 4567;
const ZMQ = 7894;
const unitDir = format === "rpm" ? "/usr/lib/systemd/system" : "/lib/systemd/system";
const R = (p) => path.join(root, p); // a path of the container, seen from the host

/** Runs ARGS in all of the container's namespaces; rejects on a non-zero exit unless
 *  `allowFail`. Asynchronous, so that the clients keep reading meanwhile. */
function inside(args, { allowFail = false, timeoutMs = 120_000, env = [] } = {}) {
  return new Promise((resolve, reject) => {
    execFile("nsenter", ["-t", leader, "-a", "--", "env", ...env, ...args], { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: "utf8" }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : err.signal ?? String(err.code);
      if (code !== 0 && !allowFail) reject(new Error(`${args.join(" ")}: exit ${code}\n${stdout}${stderr}`));
      else resolve({ code, out: stdout, err: stderr });
    });
  });
}

async function show(...props) {
  const { out } = await inside(["systemctl", "show", UNIT, ...props.map((p) => `--property=${p}`)]);
  return Object.fromEntries(out.trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}

async function until(check, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await check();
    if (got) return got;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One connection attempt, no retry: the port must accept right now. */
function acceptsNow(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

async function statOf(p) {
  return (await inside(["stat", "-c", "%U:%G %a", p])).out.trim();
}

/** The journal lines the monitor process PID wrote (journald stores them asynchronously). */
async function journalOf(pid, extra = []) {
  return (await inside(["journalctl", "--no-pager", "-o", "cat", `_PID=${pid}`, ...extra])).out;
}

function editConfig(edit) {
  fs.writeFileSync(R(CONFIG), edit(fs.readFileSync(R(CONFIG), "utf8")));
}

async function print(title, args) {
  const { out, err } = await inside(args, { allowFail: true });
  console.log(`----- ${title}: ${args.join(" ")}\n${out}${err}-----`);
}

const pkgFile = `/var/tmp/${path.basename(opts.package)}`;
const install = (file) => (format === "rpm" ? ["rpm", "-i", "--nodeps", file] : ["dpkg", "-i", file]);

// Steps run in order; after a failure the rest are skipped (they build on each other).
let broken = false;
function step(name, fn) {
  test(name, { timeout: 180_000 }, async (t) => {
    if (broken) return t.skip("an earlier step failed");
    try {
      await fn(t);
    } catch (err) {
      broken = true;
      throw err;
    }
  });
}

let preexisting = null;

step(`install: ${path.basename(opts.package)} -> enabled and running, ready before the installer returns, self-test passes`, async () => {
  if (format === "rpm") {
    // the packages must leave an existing user recodex alone
    await inside(["groupadd", "-r", "-g", "987", "recodex"]);
    await inside(["useradd", "-r", "-u", "987", "-g", "recodex", "-d", "/srv/recodex", "-s", "/usr/sbin/nologin", "-c", "pre-existing", "recodex"]);
    preexisting = (await inside(["getent", "passwd", "recodex"])).out;
  }
  const t0 = Date.now();
  const r = await inside(install(pkgFile));
  const ms = Date.now() - t0;
  // Type=notify: the start in the installer returned only once both ports accepted
  assert.deepEqual([await acceptsNow(WS), await acceptsNow(ZMQ)], [true, true], "ports not accepting when the installer returned");
  console.log(`installer took ${ms} ms; both ports accepted at once after it returned`);
  if (format === "rpm") assert.doesNotMatch(r.out + r.err, /warning|error/i, "rpm -i printed warnings");
  const p = await show("ActiveState", "SubState", "UnitFileState", "Type", "NRestarts", "MainPID", "Result");
  assert.deepEqual(
    [p.ActiveState, p.SubState, p.UnitFileState, p.Type, p.NRestarts, p.Result],
    ["active", "running", "enabled", "notify", "0", "success"],
  );
  await print("status", ["systemctl", "status", UNIT, "--no-pager", "--lines=5"]);
  const exposure = (await inside(["systemd-analyze", "security", UNIT, "--no-pager"])).out.trim().split("\n").pop();
  console.log(`systemd-analyze security: ${exposure}`);
  const check = await inside(["runuser", "-u", "recodex", "--", "recodex-monitor", "check", "-c", CONFIG]);
  assert.match(check.out, /^PASS /m);
  console.log(check.out.trim());

  // who and how it runs: the unit's sandbox is in force
  // MainPID is a pid of the container's pid namespace
  const status = (await inside(["cat", `/proc/${p.MainPID}/status`])).out;
  const uid = (await inside(["id", "-u", "recodex"])).out.trim();
  assert.match(status, new RegExp(`^Uid:\\s+${uid}\\s`, "m"));
  assert.match(status, /^NoNewPrivs:\s+1$/m);
  assert.match(status, /^Seccomp:\s+2$/m);
  assert.match(status, /^CapEff:\s+0+$/m);
  assert.equal(await statOf("/var/lib/recodex-monitor"), "recodex:recodex 750", "StateDirectory");
  assert.equal(await statOf("/run/recodex-monitor"), "recodex:recodex 700", "RuntimeDirectory");
  assert.equal((await inside(["ls", "-A", "/run/recodex-monitor"])).out, "", "the addon was left in the runtime directory");

  // files, owners, modes
  assert.ok(fs.readFileSync(R("/usr/bin/recodex-monitor")).equals(fs.readFileSync(opts.binary)), "installed binary differs from the built one");
  assert.equal(await statOf("/usr/bin/recodex-monitor"), "root:root 755");
  assert.equal(await statOf(`${unitDir}/${UNIT}`), "root:root 644");
  assert.equal(fs.readFileSync(R(`${unitDir}/${UNIT}`), "utf8"), fs.readFileSync(path.join(here, UNIT), "utf8"));
  assert.equal(await statOf("/etc/recodex"), "root:root 755");
  assert.equal(await statOf("/etc/recodex/monitor"), "root:recodex 750");
  assert.equal(await statOf(CONFIG), "root:recodex 640");
  assert.equal(fs.readFileSync(R(CONFIG), "utf8"), fs.readFileSync(path.join(here, "..", "config.yml"), "utf8"));
  assert.equal(await statOf("/var/log/recodex"), "recodex:recodex 755");
  assert.match(fs.readFileSync(R("/var/log/recodex/monitor.log"), "utf8"), /\[INFO\] recodex-monitor ready: /);
  assert.ok(fs.existsSync(R("/usr/share/man/man1/recodex-monitor.1.gz")), "no man page");
  const docs = fs.readdirSync(R("/usr/share/doc/recodex-monitor")).sort();
  for (const d of format === "rpm" ? ["README.md", "examples"] : ["README.md.gz", "THIRD-PARTY-LICENSES.gz", "changelog.Debian.gz", "copyright", "examples"]) {
    assert.ok(docs.includes(d), `/usr/share/doc/recodex-monitor/${d} missing (have ${docs.join(", ")})`);
  }
  if (format === "rpm") assert.deepEqual(fs.readdirSync(R("/usr/share/licenses/recodex-monitor")).sort(), ["LICENSE", "THIRD-PARTY-LICENSES"]);
  // the Prometheus rules and Grafana dashboards of packaging/, when there are any
  for (const [sub, ext] of [["prometheus", ".yml"], ["grafana", ".json"]]) {
    const src = path.join(here, sub);
    const want = fs.existsSync(src) ? fs.readdirSync(src).filter((f) => f.endsWith(ext)).sort() : [];
    const dir = R(`/usr/share/recodex-monitor/${sub}`);
    assert.deepEqual(fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [], want, `/usr/share/recodex-monitor/${sub}`);
    for (const f of want) assert.ok(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(src, f))), f);
    if (want.length) console.log(`/usr/share/recodex-monitor/${sub}: ${want.join(", ")}`);
  }
  assert.notEqual((await inside(["sh", "-c", "command -v node || command -v nodejs"], { allowFail: true })).code, 0, "node is installed in the root");
  if (preexisting !== null) assert.equal((await inside(["getent", "passwd", "recodex"])).out, preexisting, "the package changed the existing user");
});

if (format === "smoke") {
  step("stop -> exit status 0, Result=success", async () => {
    await inside(["systemctl", "stop", UNIT]);
    const p = await show("ActiveState", "Result", "ExecMainStatus");
    assert.deepEqual([p.ActiveState, p.Result, p.ExecMainStatus], ["inactive", "success", "0"]);
  });
} else {
  step("no directory to unpack the ZeroMQ addon in: a clear error naming each one tried", async () => {
    const r = await inside(
      ["systemd-run", "--wait", "--pipe", "--quiet", "-p", "User=recodex", "-p", "TemporaryFileSystem=/tmp:noexec", "-p", "InaccessiblePaths=/dev/shm", "/usr/bin/recodex-monitor", "-c", CONFIG],
      { allowFail: true },
    );
    assert.equal(r.code, 1, r.out + r.err);
    assert.match(r.out + r.err, /cannot load the embedded ZeroMQ addon.*Tried:.*\/dev\/shm.*\/usr\/bin.*\/tmp/s);
  });

  let pid = "";
  step("restart with a connected client: the client gets the drain close 1001, a new connection works at once", async () => {
    // from here on the log goes to the journal; the unknown key makes a warning
    editConfig((c) => c.replace(/^  file: .*$/m, '  file: "-"') + "no_such_key: 1\n");
    const client = await openClient({ port: WS, channel: "restart-job" });
    const broker = openBroker({ port: ZMQ });
    await broker.send("restart-job", JOB[0][0]);
    await waitFor(client, (c) => c.messages.length === 1, "DOWNLOADED");
    broker.close();
    const before = (await show("MainPID")).MainPID;
    await inside(["systemctl", "restart", UNIT]);
    await waitFor(client, (c) => c.close !== null, "the close of the old connection");
    assert.equal(client.close, 1001);
    assert.deepEqual([await acceptsNow(WS), await acceptsNow(ZMQ)], [true, true]);
    await roundTrip({ wsPort: WS, zmqPort: ZMQ, channel: "after-restart" });
    pid = (await show("MainPID")).MainPID;
    assert.notEqual(pid, before);
  });

  step("journal: each line carries its priority, no second timestamp; journalctl -p warning shows only warnings", async () => {
    await until(async () => (await journalOf(pid)).includes("[INFO] recodex-monitor ready"), "the ready line in the journal");
    const entries = (await inside(["journalctl", "--no-pager", "-o", "json", `_PID=${pid}`])).out.trim().split("\n").map((l) => JSON.parse(l));
    const byLevel = { INFO: "6", WARNING: "4", DEBUG: "7", ERROR: "3", CRITICAL: "2" };
    const ours = entries.filter((e) => /^\[[A-Z]+\] /.test(e.MESSAGE));
    assert.ok(ours.length >= 2, JSON.stringify(entries.map((e) => e.MESSAGE)));
    for (const e of ours) assert.equal(e.PRIORITY, byLevel[e.MESSAGE.match(/^\[([A-Z]+)\]/)[1]], e.MESSAGE);
    for (const e of entries) assert.doesNotMatch(String(e.MESSAGE), /^(<\d>)?\d{4}-\d{2}-\d{2} \d{2}:\d{2}/, "a timestamp in the message");
    const warnings = await journalOf(pid, ["-p", "warning"]);
    assert.match(warnings, /^\[WARNING\] .*no_such_key/m);
    assert.doesNotMatch(warnings, /\[INFO\]/);
    console.log(`journalctl -p warning _PID=${pid}:\n${warnings.trim()}`);
  });

  step('reload applies a changed log level without dropping a connected client', async () => {
    const client = await openClient({ port: WS, channel: "reload-job" });
    const broker = openBroker({ port: ZMQ });
    await broker.send("reload-job", JOB[0][0]);
    await waitFor(client, (c) => c.messages.length === 1, "DOWNLOADED");
    editConfig((c) => c.replace(/^  level: info/m, "  level: debug"));
    await inside(["systemctl", "reload", UNIT]);
    await until(async () => (await journalOf(pid)).includes('configuration reloaded: logger.level: "info" -> "debug"'), "the reload line in the journal");
    assert.equal(client.close, null, "the client was disconnected by the reload");
    await broker.send("reload-job", JOB[2][0]);
    await waitFor(client, (c) => c.close !== null, "FINISHED and the close");
    broker.close();
    assert.deepEqual([client.messages, client.close], [[JOB[0][1], JOB[2][1]], 1000]);
    assert.equal((await show("MainPID")).MainPID, pid);
  });

  step("stop -> exit status 0, Result=success", async () => {
    await inside(["systemctl", "stop", UNIT]);
    const p = await show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode");
    assert.deepEqual([p.ActiveState, p.Result, p.ExecMainStatus, p.ExecMainCode], ["inactive", "success", "0", "1"]);
    assert.match(await journalOf(pid), /^\[INFO\] stopped$/m);
  });

  step("a busy port makes `systemctl start` fail; once it is free, Restart= brings the service up", async () => {
    const blocker = net.createServer();
    await new Promise((resolve, reject) => blocker.once("error", reject).listen(WS, "127.0.0.1", resolve));
    const t0 = Date.now();
    const r = await inside(["systemctl", "start", UNIT], { allowFail: true });
    const ms = Date.now() - t0;
    const failed = await show("Result", "ExecMainStatus", "ExecMainPID");
    await new Promise((resolve) => blocker.close(resolve));
    assert.notEqual(r.code, 0, "systemctl start succeeded with the port taken");
    assert.ok(ms < 25_000, `systemctl start took ${ms} ms to fail`);
    assert.deepEqual([failed.Result, failed.ExecMainStatus], ["exit-code", "4"]);
    assert.match(await journalOf(failed.ExecMainPID), /RMON_ERR_BIND/);
    console.log(`systemctl start failed after ${ms} ms: exit ${r.code}, ${r.err.trim()}`);
    await until(async () => (await show("ActiveState")).ActiveState === "active", "the automatic restart");
    assert.deepEqual([await acceptsNow(WS), await acceptsNow(ZMQ)], [true, true]);
  });

  step("kill -9 of the main process -> systemd restarts it", async () => {
    const p = await show("MainPID", "NRestarts");
    await inside(["kill", "-KILL", p.MainPID]);
    const now = await until(async () => {
      const q = await show("MainPID", "ActiveState", "SubState", "NRestarts");
      return q.ActiveState === "active" && q.SubState === "running" && q.MainPID !== p.MainPID && q.MainPID !== "0" && q;
    }, "a new main process");
    assert.equal(Number(now.NRestarts), Number(p.NRestarts) + 1);
    await roundTrip({ wsPort: WS, zmqPort: ZMQ, channel: "after-kill" });
  });

  step("upgrade with an edited configuration: the edit is kept and the service restarted on the new binary", async () => {
    editConfig((c) => c.replace(/^websocket_uri: \["127.0.0.1", 4567\]$/m, 'websocket_uri: ["127.0.0.1", 4577]') + "# edited by the admin\n");
    const edited = fs.readFileSync(R(CONFIG), "utf8");
    assert.match(edited, /4577/);
    const before = (await show("MainPID")).MainPID;
    const file = `/var/tmp/${path.basename(opts.upgrade)}`;
    await inside(format === "rpm" ? ["rpm", "-U", "--nodeps", file] : ["dpkg", "-i", file]);
    const version = format === "rpm"
      ? (await inside(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", "recodex-monitor"])).out
      : (await inside(["dpkg-query", "-W", "-f", "${Version}", "recodex-monitor"])).out;
    assert.match(version, /-2$/);
    assert.equal(fs.readFileSync(R(CONFIG), "utf8"), edited, "the upgrade changed the edited configuration");
    assert.deepEqual(fs.readdirSync(R("/etc/recodex/monitor")), ["config.yml"], "left .dpkg-*/.rpmnew files");
    const after = await show("MainPID", "ActiveState");
    assert.equal(after.ActiveState, "active");
    assert.notEqual(after.MainPID, before, "the service was not restarted");
    assert.equal((await inside(["readlink", `/proc/${after.MainPID}/exe`])).out.trim(), "/usr/bin/recodex-monitor", "not running the installed binary");
    await roundTrip({ wsPort: 4577, zmqPort: ZMQ, channel: "after-upgrade" });
    await print("status after the upgrade", ["systemctl", "status", UNIT, "--no-pager", "--lines=0"]);
  });

  step("print the journal of the unit", async () => {
    await print("journal", ["journalctl", "-u", UNIT, "--no-pager", "-o", "short-monotonic"]);
  });

  const gone = (p) => assert.ok(!fs.existsSync(R(p)) && !isLink(R(p)), `${p} should be gone`);
  const kept = (p) => assert.ok(fs.existsSync(R(p)), `${p} should still exist`);
  const unitLinks = () => fs.readdirSync(R("/etc/systemd/system"), { recursive: true }).filter((f) => String(f).includes("recodex-monitor"));

  if (format === "rpm") {
    step("rpm -e: service stopped and disabled, program and unit gone; edited config saved as .rpmsave; logs, state, user kept", async () => {
      await inside(["rpm", "-e", "recodex-monitor"]);
      assert.equal((await show("ActiveState")).ActiveState, "inactive");
      assert.deepEqual(unitLinks(), [], "the service is still enabled");
      gone("/usr/bin/recodex-monitor");
      gone(`${unitDir}/${UNIT}`);
      gone(CONFIG);
      kept(`${CONFIG}.rpmsave`);
      kept("/var/log/recodex/monitor.log");
      kept("/var/lib/recodex-monitor");
      assert.equal((await inside(["getent", "passwd", "recodex"])).out, preexisting, "rpm -e touched the user");
    });
  } else {
    step("dpkg -r: service stopped, program and unit gone; configuration, logs, user kept", async () => {
      await inside(["dpkg", "-r", "recodex-monitor"]);
      assert.equal((await show("ActiveState")).ActiveState, "inactive");
      gone("/usr/bin/recodex-monitor");
      gone(`${unitDir}/${UNIT}`);
      kept(CONFIG);
      kept("/var/log/recodex/monitor.log");
      await inside(["getent", "passwd", "recodex"]);
    });

    step("dpkg --purge: configuration, state, enablement gone; the logs and their owner recodex kept", async () => {
      await inside(["dpkg", "--purge", "recodex-monitor"]);
      gone("/etc/recodex");
      gone("/var/lib/recodex-monitor");
      assert.deepEqual(unitLinks(), [], "links to the unit left in /etc/systemd/system");
      kept("/var/log/recodex/monitor.log");
      await inside(["getent", "passwd", "recodex"]);
      assert.doesNotMatch((await inside(["dpkg-statoverride", "--list"])).out, /recodex/);
    });

    step("reinstall, then purge with RECODEX_PURGE_LOGS=yes: the user the first installation created is removed too", async () => {
      await inside(["dpkg", "-i", pkgFile]);
      assert.equal((await show("ActiveState")).ActiveState, "active");
      await inside(["dpkg", "--purge", "recodex-monitor"], { env: ["RECODEX_PURGE_LOGS=yes"] });
      for (const p of ["/usr/bin/recodex-monitor", `${unitDir}/${UNIT}`, "/etc/recodex", "/var/log/recodex", "/var/lib/recodex-monitor", "/var/lib/recodex-monitor-package", "/usr/share/doc/recodex-monitor"]) gone(p);
      assert.notEqual((await inside(["getent", "passwd", "recodex"], { allowFail: true })).code, 0, "user recodex not removed");
      assert.notEqual((await inside(["getent", "group", "recodex"], { allowFail: true })).code, 0, "group recodex not removed");
      assert.deepEqual(unitLinks(), []);
      assert.doesNotMatch((await inside(["dpkg-query", "-W", "-f", "${db:Status-Status}", "recodex-monitor"], { allowFail: true })).out, /installed|config-files/);
    });
  }
}

function isLink(p) {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
