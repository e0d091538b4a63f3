// Load generator, browser side: `ws` clients (no permessage-deflate) that subscribe to channels
// like the ReCodEx web-app, check every frame's exact bytes and order, and measure end-to-end
// latency from the send timestamp the sender puts in each task id (`<seq>:<monotonic ns>`).
// Driven by run.ts over IPC.
import WebSocket from "ws";
import { FIXED_JSON, channelId, jobLength, jobTasks, prng, taskState } from "./jobs.ts";
import { nowNs, summarize } from "./sampling.ts";

type Cmd =
  | { type: "init"; wsPort: number }
  | { type: "subscribe"; tag: number; wave: number; count: number; perChannel: number }
  | { type: "abortWave" }
  | { type: "idle"; tag: number; count: number; offset?: number }
  | { type: "late"; channel: string; expect: number }
  | { type: "idleClose" }
  | { type: "stats" }
  | { type: "soakStart"; tag: number; concurrent: number; seed: number }
  | { type: "soakProgress"; started: number }
  | { type: "soakStop" }
  | { type: "exit" };

const WS_OPTIONS = { perMessageDeflate: false, skipUTF8Validation: true, maxPayload: 1 << 20 };
const TASK_PREFIX = '{"command": "TASK", "task_id": "';
const FIXED_BY_JSON = new Map(Object.entries(FIXED_JSON).map(([c, j]) => [j, c]));
const CONCURRENCY = 256;

let url = "";
function report(msg: unknown): void {
  process.send!(msg);
}

// ---- latency accumulation -------------------------------------------------------------------
let lat = new Float64Array(1 << 16);
let latN = 0;
function addLatency(us: number): void {
  if (latN === lat.length) {
    const bigger = new Float64Array(lat.length * 2);
    bigger.set(lat);
    lat = bigger;
  }
  lat[latN++] = us;
}

// ---- opening many connections -----------------------------------------------------------------
/** Open `n` connections, at most CONCURRENCY handshakes in flight; `setup(i)` makes connection i. */
function openMany(n: number, setup: (i: number, done: (ok: boolean) => void) => void): Promise<number> {
  return new Promise((resolve) => {
    let next = 0;
    let finished = 0;
    let ok = 0;
    const start = (): void => {
      if (next >= n) return;
      const i = next++;
      setup(i, (good) => {
        finished++;
        if (good) ok++;
        if (finished === n) resolve(ok);
        else start();
      });
    };
    if (n === 0) resolve(0);
    for (let k = 0; k < Math.min(n, CONCURRENCY); k++) start();
  });
}

/** Connect, send the channel id, call back once the id is written to the kernel. */
function subscribe(channel: string, onReady: (ok: boolean) => void): WebSocket {
  const ws = new WebSocket(url, WS_OPTIONS);
  let settled = false;
  const settle = (ok: boolean) => {
    if (!settled) {
      settled = true;
      onReady(ok);
    }
  };
  ws.on("open", () => ws.send(channel, (err) => settle(!err)));
  ws.on("error", () => settle(false));
  return ws;
}

// ---- measured waves ---------------------------------------------------------------------------
type Wave = {
  wave: number;
  conns: WebSocket[];
  open: number;
  expected: number;
  delivered: number;
  lost: number;
  reordered: number;
  malformed: number;
  badClose: number;
  firstRecv: number;
  lastRecv: number;
  reported: boolean;
};
let current: Wave | null = null;

function finishWave(w: Wave): void {
  if (w.reported) return;
  w.reported = true;
  report({
    type: "waveDone",
    wave: w.wave,
    expected: w.expected,
    delivered: w.delivered,
    lost: w.lost,
    reordered: w.reordered,
    malformed: w.malformed,
    badClose: w.badClose,
    firstRecv: w.firstRecv,
    lastRecv: w.lastRecv,
  });
  if (current === w) current = null;
}

function watch(w: Wave, ws: WebSocket, nTasks: number): void {
  const total = jobLength(nTasks);
  let next = 0; // index of the next expected message
  let got = 0;
  ws.on("message", (data: Buffer, isBinary: boolean) => {
    const now = nowNs();
    if (w.firstRecv === 0) w.firstRecv = now;
    w.lastRecv = now;
    got++;
    w.delivered++;
    const s = data.toString("latin1");
    let index = -1;
    if (!isBinary && s.startsWith(TASK_PREFIX)) {
      const colon = s.indexOf(":", TASK_PREFIX.length);
      const quote = s.indexOf('"', colon);
      index = Number(s.slice(TASK_PREFIX.length, colon));
      const sent = Number(s.slice(colon + 1, quote));
      if (colon < 0 || quote < 0 || s.slice(quote) !== `", "task_state": "${taskState(index)}"}`) {
        w.malformed++;
        return;
      }
      addLatency((now - sent) / 1000);
    } else {
      const command = isBinary ? undefined : FIXED_BY_JSON.get(s);
      if (command === "DOWNLOADED") index = 0;
      else if (command === "STARTED") index = 1;
      else if (command === "ENDED") index = nTasks + 2;
      else if (command === "UPLOADED") index = nTasks + 3;
      else if (command === "FINISHED") index = nTasks + 4;
      else {
        w.malformed++;
        return;
      }
    }
    if (index !== next) w.reordered++;
    if (index >= next) next = index + 1;
  });
  ws.on("close", (code: number) => {
    if (code !== 1000) w.badClose++;
    if (got < total) w.lost += total - got;
    w.open--;
    if (w.open === 0) finishWave(w);
  });
}

async function subscribeWave(cmd: { tag: number; wave: number; count: number; perChannel: number }): Promise<void> {
  const w: Wave = {
    wave: cmd.wave,
    conns: [],
    open: 0,
    expected: 0,
    delivered: 0,
    lost: 0,
    reordered: 0,
    malformed: 0,
    badClose: 0,
    firstRecv: 0,
    lastRecv: 0,
    reported: false,
  };
  current = w;
  const n = cmd.count * cmd.perChannel;
  const t0 = nowNs();
  const ok = await openMany(n, (i, done) => {
    const ch = i % cmd.count;
    const nTasks = jobTasks(cmd.tag, cmd.wave, ch);
    w.expected += jobLength(nTasks);
    w.open++;
    const ws = subscribe(channelId(cmd.tag, cmd.wave, ch), done);
    w.conns.push(ws);
    watch(w, ws, nTasks);
  });
  report({ type: "subscribed", wave: cmd.wave, ok, n, ms: (nowNs() - t0) / 1e6 });
}

// ---- idle subscribed connections ----------------------------------------------------------------
let idle: WebSocket[] = [];
let idleUnexpected = 0;
let idleClosedByServer = 0;

/** Open `count` more idle connections, to the channels `offset`.. of the idle wave (0xfffe). */
async function openIdle(tag: number, count: number, offset: number): Promise<void> {
  const t0 = nowNs();
  const ok = await openMany(count, (i, done) => {
    const ws = subscribe(channelId(tag, 0xfffe, offset + i), done);
    ws.on("message", () => idleUnexpected++);
    ws.on("close", () => idleClosedByServer++);
    idle.push(ws);
  });
  report({ type: "idleOpen", ok, n: count, ms: (nowNs() - t0) / 1e6 });
}

function closeIdle(): void {
  const closedByServer = idleClosedByServer;
  for (const ws of idle) {
    ws.removeAllListeners("close");
    ws.on("close", () => {});
    ws.terminate();
  }
  idle = [];
  report({ type: "idleClosed", unexpected: idleUnexpected, closedByServer });
}

// ---- a late joiner: the whole history of a channel the sender preloaded -------------------------
/**
 * Subscribe to `channel` once its history is kept and receive it: `expect` frames, the job's
 * messages in order (TASK ids `<k>:...`), then the 1000 close after FINISHED. Reports the time
 * from sending the channel id to the close, and to the last frame.
 */
function lateJoiner(channel: string, expect: number): void {
  const ws = new WebSocket(url, WS_OPTIONS);
  let t0 = 0;
  let last = 0;
  let got = 0;
  let reordered = 0;
  let malformed = 0;
  let prev = -1;
  ws.on("open", () => {
    t0 = nowNs();
    ws.send(channel);
  });
  ws.on("message", (data: Buffer) => {
    last = nowNs();
    got++;
    const s = data.toString("latin1");
    let k: number;
    if (s.startsWith(TASK_PREFIX)) k = Number(s.slice(TASK_PREFIX.length, s.indexOf(":", TASK_PREFIX.length)));
    else if (s === FIXED_JSON.DOWNLOADED) k = 0;
    else if (s === FIXED_JSON.STARTED) k = 1;
    else if (s === FIXED_JSON.ENDED) k = expect - 3;
    else if (s === FIXED_JSON.UPLOADED) k = expect - 2;
    else if (s === FIXED_JSON.FINISHED) k = expect - 1;
    else {
      malformed++;
      return;
    }
    if (k !== prev + 1) reordered++;
    prev = k;
  });
  ws.on("error", () => {});
  ws.on("close", (code: number) => {
    const end = nowNs();
    report({ type: "lateDone", got, lost: Math.max(0, expect - got), reordered, malformed, code, ms: (end - t0) / 1e6, lastMs: (last - t0) / 1e6 });
  });
}

// ---- soak: churning subscribers -------------------------------------------------------------------
let soak: {
  tag: number;
  concurrent: number;
  rnd: () => number;
  started: number;
  open: number;
  subscriptions: number;
  delivered: number;
  reordered: number;
  malformed: number;
  closeCodes: Record<number, number>;
  failed: number;
  stopping: boolean;
} | null = null;

function soakSubscriber(): void {
  const s = soak;
  if (s === null || s.stopping) return;
  // a channel that was recently started, or one about to start (the web-app subscribes right
  // after the submission, sometimes before the first message)
  const index = Math.max(0, Math.floor(s.started - 3000 + s.rnd() * 3300));
  const hold = 200 + s.rnd() * 3000;
  s.open++;
  s.subscriptions++;
  let last = -1;
  const ws = new WebSocket(url, WS_OPTIONS);
  let timer: NodeJS.Timeout | undefined;
  ws.on("open", () => {
    ws.send(channelId(s.tag, 0xffff, index));
    timer = setTimeout(() => ws.close(1000), hold);
  });
  ws.on("message", (data: Buffer) => {
    s.delivered++;
    const m = data.toString("latin1");
    if (m.startsWith(TASK_PREFIX)) {
      const k = Number(m.slice(TASK_PREFIX.length, m.indexOf(":", TASK_PREFIX.length)));
      if (!(k > last)) s.reordered++;
      last = k;
    } else if (!m.startsWith('{"command": "')) s.malformed++;
  });
  ws.on("error", () => s.failed++);
  ws.on("close", (code: number) => {
    clearTimeout(timer);
    s.closeCodes[code] = (s.closeCodes[code] ?? 0) + 1;
    s.open--;
    if (!s.stopping) soakSubscriber();
    else if (s.open === 0) soakReport();
  });
}

function soakReport(): void {
  const s = soak!;
  report({
    type: "soakStopped",
    subscriptions: s.subscriptions,
    delivered: s.delivered,
    reordered: s.reordered,
    malformed: s.malformed,
    closeCodes: s.closeCodes,
    failed: s.failed,
  });
}

process.on("message", (raw) => {
  const cmd = raw as Cmd;
  switch (cmd.type) {
    case "init":
      url = `ws://127.0.0.1:${cmd.wsPort}/`;
      report({ type: "ready" });
      break;
    case "subscribe":
      void subscribeWave(cmd);
      break;
    case "abortWave": {
      const w = current;
      if (w !== null) {
        for (const ws of w.conns) ws.terminate(); // close handlers count what is missing
        setTimeout(() => finishWave(w), 200);
      }
      break;
    }
    case "idle":
      void openIdle(cmd.tag, cmd.count, cmd.offset ?? 0);
      break;
    case "late":
      lateJoiner(cmd.channel, cmd.expect);
      break;
    case "idleClose":
      closeIdle();
      break;
    case "stats":
      report({ type: "stats", latency: summarize(lat, latN) });
      latN = 0;
      break;
    case "soakStart":
      soak = {
        tag: cmd.tag,
        concurrent: cmd.concurrent,
        rnd: prng(cmd.seed),
        started: 0,
        open: 0,
        subscriptions: 0,
        delivered: 0,
        reordered: 0,
        malformed: 0,
        closeCodes: {},
        failed: 0,
        stopping: false,
      };
      for (let i = 0; i < cmd.concurrent; i++) soakSubscriber();
      break;
    case "soakProgress":
      if (soak) soak.started = cmd.started;
      break;
    case "soakStop":
      if (soak) {
        soak.stopping = true;
        if (soak.open === 0) soakReport(); // else the last subscriber to close reports
      }
      break;
    case "exit":
      process.exit(0);
  }
});
