// Load generator, broker side: ZeroMQ ROUTER peers that connect to the relay and address every
// message to the peer "recodex-monitor", like the ReCodEx broker. Driven by run.ts over IPC.
import * as zmq from "zeromq";
import { channelId, jobCommand, jobLength, jobTasks, prng, taskState } from "./jobs.ts";
import { nowNs, sleep } from "./sampling.ts";

type Frames = string[];

type WaveCmd = { type: "wave"; tag: number; wave: number; count: number; rate: number; seed: number };
type SoakCmd = {
  type: "soak";
  tag: number;
  messages: number;
  channels: number;
  active: number;
  finishedShare: number;
  rate: number;
  seed: number;
};
/**
 * History to keep: channels `from`..`to`-1 of (tag, wave), the first `length` messages of a job
 * with `tasks` tasks each (a job of length tasks + 5 ends with FINISHED), channel after channel,
 * on the first peer, as fast as it takes them.
 */
type PreloadCmd = { type: "preload"; tag: number; wave: number; from: number; to: number; length: number; tasks: number };
type Cmd = { type: "init"; zmqPort: number; peers: number } | WaveCmd | SoakCmd | PreloadCmd | { type: "exit" };

const TARGET = "recodex-monitor";
let peers: zmq.Router[] = [];
let retries = 0;

function send(msg: unknown): void {
  process.send!(msg);
}

/** Send one message; a ROUTER with `mandatory` fails with EHOSTUNREACH until the peer is known. */
async function sendFrames(sock: zmq.Router, frames: Frames): Promise<void> {
  for (;;) {
    try {
      await sock.send(frames);
      return;
    } catch (e) {
      if ((e as { code?: string }).code !== "EHOSTUNREACH") throw e;
      retries++;
      await sleep(2);
    }
  }
}

/** Interleave the jobs of a wave: at each step a random job still running sends its next message. */
function waveSchedule(cmd: WaveCmd): { ch: number; k: number }[][] {
  const rnd = prng(cmd.seed);
  const next = new Int32Array(cmd.count);
  const total = new Int32Array(cmd.count);
  const running: number[] = [];
  for (let i = 0; i < cmd.count; i++) {
    total[i] = jobLength(jobTasks(cmd.tag, cmd.wave, i));
    running.push(i);
  }
  const perPeer: { ch: number; k: number }[][] = peers.map(() => []);
  while (running.length > 0) {
    const j = Math.floor(rnd() * running.length);
    const ch = running[j];
    perPeer[ch % peers.length].push({ ch, k: next[ch]++ });
    if (next[ch] === total[ch]) {
      running[j] = running[running.length - 1];
      running.pop();
    }
  }
  return perPeer;
}

function frames(name: string, k: number, nTasks: number): Frames {
  const command = jobCommand(k, nTasks);
  if (command !== "TASK") return [TARGET, name, command];
  return [TARGET, name, command, `${k}:${nowNs()}`, taskState(k)];
}

/** Send `items` on `sock`; rate 0 = as fast as the socket takes them, else `rate` msgs/s. */
async function pump<T>(sock: zmq.Router, items: T[], rate: number, make: (item: T) => Frames): Promise<void> {
  const start = nowNs();
  for (let i = 0; i < items.length; i++) {
    if (rate > 0) {
      const due = start + (i * 1e9) / rate;
      const wait = (due - nowNs()) / 1e6;
      if (wait >= 1) await sleep(wait);
    }
    await sendFrames(sock, make(items[i]));
  }
}

async function runWave(cmd: WaveCmd): Promise<void> {
  const schedule = waveSchedule(cmd);
  const names: string[] = [];
  const tasks: number[] = [];
  for (let i = 0; i < cmd.count; i++) {
    names.push(channelId(cmd.tag, cmd.wave, i));
    tasks.push(jobTasks(cmd.tag, cmd.wave, i));
  }
  const t0 = nowNs();
  await Promise.all(
    peers.map((sock, p) =>
      pump(sock, schedule[p], cmd.rate / peers.length, (m) => frames(names[m.ch], m.k, tasks[m.ch])),
    ),
  );
  const t1 = nowNs();
  const msgs = schedule.reduce((a, s) => a + s.length, 0);
  send({ type: "sent", wave: cmd.wave, msgs, t0, t1, retries });
}

/**
 * Soak: `messages` messages over `channels` channels, `active` jobs running at once. Only a
 * `finishedShare` of the jobs run to FINISHED; the others stop after a random prefix, some with
 * a broker FAILED/ABORTED: they are left for the monitor's retention to reclaim.
 */
async function runSoak(cmd: SoakCmd): Promise<void> {
  const rnd = prng(cmd.seed);
  const avg = Math.max(2, Math.round(cmd.messages / cmd.channels));
  type Job = { name: string; index: number; script: Frames[]; k: number };
  let started = 0;
  const newJob = (): Job => {
    const index = started++;
    const name = channelId(cmd.tag, 0xffff, index);
    // job length uniform in 1..2*avg-1 (mean avg), so that the channels carry the messages
    const len = 1 + Math.floor(rnd() * (2 * avg - 1));
    const full = len >= 6 && rnd() < cmd.finishedShare;
    const nTasks = full ? len - 5 : len + 2;
    const script: Frames[] = [];
    for (let k = 0; k < len; k++) {
      const c = jobCommand(k, nTasks);
      script.push(c === "TASK" ? [TARGET, name, c, "", taskState(k)] : [TARGET, name, c]);
    }
    if (!full && len > 2 && rnd() < 0.3) script[len - 1] = [TARGET, name, rnd() < 0.5 ? "FAILED" : "ABORTED"];
    return { name, index, script, k: 0 };
  };
  const running: Job[] = [];
  let sent = 0;
  let finishedJobs = 0;
  const sock = peers[0];
  const t0 = nowNs();
  let lastReport = t0;
  while (sent < cmd.messages) {
    while (running.length < cmd.active && started < cmd.channels) running.push(newJob());
    if (running.length === 0) {
      // every channel used: start over on the same ids would break the per-channel order check
      break;
    }
    const j = Math.floor(rnd() * running.length);
    const job = running[j];
    const f = job.script[job.k];
    const out = f.length === 5 ? [f[0], f[1], f[2], `${job.k}:${nowNs()}`, f[4]] : f;
    if (cmd.rate > 0) {
      const due = t0 + (sent * 1e9) / cmd.rate;
      const wait = (due - nowNs()) / 1e6;
      if (wait >= 1) await sleep(wait);
    }
    await sendFrames(sock, out);
    sent++;
    job.k++;
    if (job.k === job.script.length) {
      if (f[2] === "FINISHED") finishedJobs++;
      running[j] = running[running.length - 1];
      running.pop();
    }
    const now = nowNs();
    if (now - lastReport > 200e6) {
      lastReport = now;
      send({ type: "soakProgress", sent, started, finishedJobs });
      await new Promise((r) => setImmediate(r));
    }
  }
  send({ type: "soakDone", sent, started, finishedJobs, t0, t1: nowNs(), retries });
}

async function runPreload(cmd: PreloadCmd): Promise<void> {
  const sock = peers[0];
  const t0 = nowNs();
  let msgs = 0;
  for (let i = cmd.from; i < cmd.to; i++) {
    const name = channelId(cmd.tag, cmd.wave, i);
    for (let k = 0; k < cmd.length; k++) {
      await sendFrames(sock, frames(name, k, cmd.tasks));
      msgs++;
    }
  }
  send({ type: "preloaded", msgs, t0, t1: nowNs() });
}

process.on("message", (raw) => {
  const cmd = raw as Cmd;
  if (cmd.type === "init") {
    peers = [];
    for (let p = 0; p < cmd.peers; p++) {
      const sock = new zmq.Router({ mandatory: true, routingId: `bench-broker-${process.pid}-${p}`, linger: 0 });
      sock.connect(`tcp://127.0.0.1:${cmd.zmqPort}`);
      peers.push(sock);
    }
    send({ type: "ready" });
  } else if (cmd.type === "wave") {
    runWave(cmd).catch((e) => send({ type: "error", error: String(e) }));
  } else if (cmd.type === "preload") {
    runPreload(cmd).catch((e) => send({ type: "error", error: String(e) }));
  } else if (cmd.type === "soak") {
    runSoak(cmd).catch((e) => send({ type: "error", error: String(e) }));
  } else if (cmd.type === "exit") {
    for (const p of peers) p.close();
    process.exit(0);
  }
});
