// The attacks of issue 10 (`npm run bench -- --attacks`), measured from outside against a
// monitor with its default config (ports and the log file aside), on loopback: one figure
// block per attack in bench/ATTACKS.md. Nothing here is a pass/fail test (those are
// test/socket-limits, memory-limits, log-safety and http-exposure); the pauses below pace
// the attackers and give the monitor time to show what it costs, they synchronise nothing.
//
// slowloris: 3,000 sockets that never finish the upgrade, under ulimit -n 1024, then a ZeroMQ
// peer connects; nonreaders: 200 resumable clients on a live channel that never read; pongs:
// one non-reader that sends unsolicited pongs; forge: a channel id with a forged log line;
// unknown: 12,700 subscriptions to channels the broker never wrote to; post: a 200 MB POST to
// the WebSocket port.
//
// The monitor runs as the tests run it (test/helpers/monitor-process.ts: a generated config on
// port 0, ports from the ready line) under a command of the runner's choosing.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { Broker } from "../test/helpers/broker.ts";
import { Browser, RawWebSocket, RESUME } from "../test/helpers/browser.ts";
import { startMonitor, tempDir, underFileLimit, type MonitorProcess } from "../test/helpers/monitor-process.ts";
import { partialUpgrade, RawSocket } from "../test/helpers/tcp.ts";
import { machine } from "./report.ts";
import { cpuMicros, memInfo, openFds, sleep } from "./sampling.ts";

export const ATTACK_NAMES = ["slowloris", "nonreaders", "pongs", "forge", "unknown", "post"];

type Block = { title: string; lines: string[] };
type Attacked = MonitorProcess & { logDir: string; logFile: string };

/** What the monitor has cost so far: CPU seconds, RSS and open descriptors. */
function cost(m: MonitorProcess): { cpu: number; rssMB: number; fds: number } {
  const pid = m.child.pid!;
  return { cpu: cpuMicros(pid) / 1e6, rssMB: Math.round(memInfo(pid).rssKB / 1024), fds: openFds(pid) };
}

async function start(command: string[], extraYaml = ""): Promise<Attacked> {
  const logDir = tempDir("rmon-attack-");
  const logFile = join(logDir, "monitor.log");
  const m = await startMonitor({ command, extraYaml: `logger:\n  file: ${logFile}\n${extraYaml}` });
  return Object.assign(m, { logDir, logFile });
}

function logText(m: Attacked): string {
  return readdirSync(m.logDir)
    .filter((n) => n.startsWith("monitor.log"))
    .map((n) => readFileSync(join(m.logDir, n), "utf8"))
    .join("");
}

/** A resumable client that subscribes to `channel` and then reads nothing. */
async function nonReader(port: number, channel: string): Promise<RawWebSocket> {
  const raw = await RawWebSocket.open(port, "/", RESUME);
  raw.sendText(channel);
  return raw;
}

/** A watcher on its own channel; feed() has a broker of its own stamp messages for it and keeps the worst delay. */
async function watcher(m: MonitorProcess, channel: string) {
  const w = await Browser.open(m.wsPort, channel);
  let worst = 0;
  let got = 0;
  w.ws.on("message", (d: Buffer) => {
    worst = Math.max(worst, Date.now() - Number(JSON.parse(d.toString()).task_id));
    got++;
  });
  return {
    async feed(ms: number): Promise<{ got: number; sent: number; worstMs: number }> {
      const broker = await Broker.connect(m.zmqPort);
      let sent = 0;
      const end = Date.now() + ms;
      while (Date.now() < end) {
        await broker.send(channel, "TASK", String(Date.now()), "RUNNING");
        sent++;
        await sleep(50);
      }
      const grace = Date.now() + 30_000;
      while (got < sent && Date.now() < grace) await sleep(50);
      w.close();
      broker.close();
      return { got, sent, worstMs: worst };
    },
  };
}

async function slowloris(command: string[]): Promise<Block> {
  const m = await start(underFileLimit(1024, command));
  const watching = await watcher(m, "watched");
  const base = cost(m);
  const flood: RawSocket[] = [];
  const t0 = Date.now();
  const closedAt: number[] = [];
  for (let i = 0; i < 3000; i++) {
    const s = new RawSocket(m.wsPort);
    s.socket.on("connect", () => s.socket.write(partialUpgrade(m.wsPort)));
    void s.ended.then(() => closedAt.push(Date.now() - t0));
    flood.push(s);
    if (i % 200 === 199) await sleep(20);
  }
  await sleep(3000);
  const held = cost(m);
  const closedEarly = closedAt.length;
  const fresh = new Browser(m.url());
  const freshOutcome = await new Promise<string>((resolve) => {
    fresh.ws.once("open", () => resolve("open"));
    fresh.ws.once("unexpected-response", (_q, res) => resolve(`HTTP ${res.statusCode}`));
    fresh.ws.once("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    setTimeout(() => resolve("no answer in 5 s"), 5000);
  });
  fresh.close();
  const c0 = cost(m);
  const tFeed = Date.now();
  const w = await watching.feed(10_000);
  const c1 = cost(m);
  const feedSeconds = (Date.now() - tFeed) / 1000;
  // How long the flood's sockets were held (up to 100 s).
  const deadline = Date.now() + 100_000;
  while (closedAt.length < flood.length && Date.now() < deadline) await sleep(500);
  const sorted = [...closedAt].sort((a, b) => a - b);
  const log = logText(m);
  flood.forEach((s) => s.destroy());
  await m.stop("SIGKILL");
  return {
    title: "slowloris: 3,000 sockets that never finish the upgrade, ulimit -n 1024",
    lines: [
      `monitor fds while held: ${held.fds} (before: ${base.fds}); sockets the monitor had closed after 3 s: ${closedEarly}`,
      `a new client then: ${freshOutcome}`,
      `a ZeroMQ peer connects and sends to a watcher (connected before the flood) for 10 s: ${w.got}/${w.sent} messages, worst delay ${w.worstMs} ms; monitor CPU meanwhile: ${(c1.cpu - c0.cpu).toFixed(1)} s in ${feedSeconds.toFixed(1)} s`,
      `flood sockets closed by the monitor within 100 s: ${closedAt.length}/3000; median hold ${sorted.length ? (sorted[sorted.length >> 1] / 1000).toFixed(1) : "-"} s, longest ${sorted.length ? (sorted[sorted.length - 1] / 1000).toFixed(1) : "-"} s`,
      `log lines about it: ${log.split("\n").filter((l) => /refused|EMFILE|ENFILE|limit|handshake/.test(l)).length} (${log.match(/EMFILE|ENFILE/g)?.length ?? 0} naming EMFILE/ENFILE)`,
    ],
  };
}

async function nonreaders(command: string[]): Promise<Block> {
  const m = await start(command);
  const broker = await Broker.connect(m.zmqPort);
  await broker.send("live", "STARTED");
  const before = cost(m);
  const attackers: RawWebSocket[] = [];
  for (let i = 0; i < 200; i++) attackers.push(await nonReader(m.wsPort, "live"));
  const payload = "z".repeat(60 * 1024);
  let peak = before.rssMB;
  const watching = (await watcher(m, "watched")).feed(20_000);
  for (let i = 0; i < 2000; i++) {
    await broker.send("live", "TASK", `t${i}`, payload);
    if (i % 100 === 0) peak = Math.max(peak, cost(m).rssMB);
    if (i % 20 === 0) await sleep(1);
  }
  const w = await watching;
  peak = Math.max(peak, cost(m).rssMB);
  const fdsAtEnd = cost(m).fds;
  attackers.forEach((a) => a.destroy());
  await sleep(10_000);
  const after = cost(m);
  const log = logText(m);
  broker.close();
  await m.stop("SIGKILL");
  return {
    title: "nonreaders: 200 resumable clients that never read, 2,000 messages of 60 KB on their channel",
    lines: [
      `RSS ${before.rssMB} MB -> peak ${peak} MB; 10 s after the attackers left: ${after.rssMB} MB`,
      `monitor fds at the end of the attack: ${fdsAtEnd} (${before.fds} before it); cut: ${log.match(/fell behind/g)?.length ?? 0} at the per-client bound, ${log.match(/max_total_buffered_bytes/g)?.length ?? 0} at the total bound (log lines, at most 20 a minute each)`,
      `watcher on another channel: ${w.got}/${w.sent} messages, worst delay ${w.worstMs} ms`,
    ],
  };
}

async function pongs(command: string[]): Promise<Block> {
  const m = await start(command);
  const broker = await Broker.connect(m.zmqPort);
  await broker.send("stall", "STARTED");
  const s = await nonReader(m.wsPort, "stall");
  let closed = false;
  void s.ended.then(() => (closed = true));
  const timer = setInterval(() => s.sendFrame(0xa, Buffer.alloc(0)), 1000);
  for (let i = 0; i < 110; i++) await broker.send("stall", "TASK", `t${i}`, "p".repeat(60 * 1024));
  const t0 = Date.now();
  while (!closed && Date.now() - t0 < 120_000) await sleep(250);
  clearInterval(timer);
  s.destroy();
  broker.close();
  await m.stop("SIGKILL");
  return {
    title: "pongs: a client that stops reading and sends an unsolicited pong every second",
    lines: [closed ? `cut after ${((Date.now() - t0) / 1000).toFixed(1)} s` : "still connected after 120 s"],
  };
}

async function forge(command: string[]): Promise<Block> {
  const m = await start(command);
  const b = await Browser.open(m.wsPort, "x\n2099-01-01 00:00:00,000 [CRITICAL] FORGED LINE \u001b[31mred\u001b[0m");
  await sleep(500);
  b.close();
  await m.stop("SIGTERM");
  const log = logText(m);
  return {
    title: "forge: a channel id with a newline, a fake timestamp and level, and ANSI colours",
    lines: [
      `log lines starting with the forged timestamp: ${log.split("\n").filter((l) => l.startsWith("2099")).length}; raw ESC bytes in the log: ${log.match(/\u001b/g)?.length ?? 0}`,
    ],
  };
}

async function unknown(command: string[]): Promise<Block> {
  const m = await start(command);
  const first = readFileSync(m.logFile, "utf8").split("\n")[0];
  for (let i = 0; i < 12_700; i += 100) {
    const batch = await Promise.all(Array.from({ length: 100 }, (_, j) => Browser.open(m.wsPort, `student_${"0".repeat(240)}${i + j}`)));
    await sleep(20);
    batch.forEach((c) => c.close());
  }
  await sleep(1000);
  const files = readdirSync(m.logDir).filter((n) => n.startsWith("monitor.log"));
  const bytes = files.reduce((n, f) => n + statSync(join(m.logDir, f)).size, 0);
  const log = logText(m);
  await m.stop("SIGKILL");
  return {
    title: "unknown: 12,700 subscriptions with 250-byte ids to channels the broker never wrote to (default logger: level info, 1 MiB x 3 rotations)",
    lines: [`log: ${files.length} files, ${bytes} bytes; the first line ${log.includes(first) ? "is still there" : "has been rotated away"}`],
  };
}

async function post(command: string[]): Promise<Block> {
  const m = await start(command);
  const c0 = cost(m);
  const s = new RawSocket(m.wsPort);
  await s.connected;
  const total = 200 * 1024 * 1024;
  s.socket.write(`POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${total}\r\n\r\n`);
  const chunk = Buffer.alloc(256 * 1024, 0x61);
  let written = 0;
  while (written < total && !s.closed && s.error === null) {
    if (!s.socket.write(chunk)) await Promise.race([new Promise((r) => s.socket.once("drain", r)), s.ended]);
    written += chunk.length;
  }
  await Promise.race([s.ended, sleep(5000)]);
  await sleep(200);
  const c1 = cost(m);
  s.destroy();
  await m.stop("SIGKILL");
  return {
    title: "post: a 200 MB POST to the WebSocket port",
    lines: [
      `the client got out ${(written / 1048576).toFixed(1)} MB before the monitor hung up; monitor CPU ${(c1.cpu - c0.cpu).toFixed(2)} s; answer: ${s.received.split("\r\n")[0] || "none"}`,
    ],
  };
}

const ATTACKS: Record<string, (command: string[]) => Promise<Block>> = { slowloris, nonreaders, pongs, forge, unknown, post };

/** Runs the named attacks against the monitor that `command` starts; returns bench/ATTACKS.md. */
export async function attacks(names: string[], command: string[], label: string): Promise<string> {
  const L = [`# Attacks against ${label}`, "", `Generated by \`npm run bench -- --attacks\` on ${new Date().toISOString()}; ${machine()}.`];
  for (const name of names) {
    const attack = ATTACKS[name];
    if (attack === undefined) throw new Error(`unknown attack ${name}; have ${ATTACK_NAMES.join(", ")}`);
    console.error(`attack: ${name}`);
    const block = await attack(command);
    L.push("", `## ${block.title}`, ...block.lines.map((l) => `- ${l}`));
  }
  L.push("");
  return L.join("\n");
}
