// The soak: a million messages over a hundred thousand channels with churning subscribers,
// memory and CPU sampled every second; the verdict is whether live memory levels off.
import { Child, nextTag } from "./generators.ts";
import { f0, f1, machine } from "./report.ts";
import { startServer, stopServer, type RelaySettings, type TargetName } from "./relay.ts";
import { cpuMicros, memInfo, nowNs, sleep } from "./sampling.ts";
import type { Retention } from "./shapes.ts";

/** Short retention, so that the soak shows channels being reclaimed while it runs. */
const SOAK_RETENTION: Retention = {
  finished_ttl: 2,
  idle_ttl: 5,
  max_channels: 20000,
  max_messages_per_channel: 200,
  max_bytes_per_channel: 65536,
  max_total_bytes: 67108864,
};

async function scrapeMetrics(port: number): Promise<Record<string, number>> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) });
    const out: Record<string, number> = {};
    for (const line of (await res.text()).split("\n")) {
      const m = /^(recodex_monitor_[a-z_]+) ([\d.e+-]+)$/.exec(line);
      if (m) out[m[1]] = Number(m[2]);
    }
    return out;
  } catch {
    return {};
  }
}

/** The soak's load; the runner's defaults are 1,000,000 messages over 100,000 channels. */
export type SoakLoad = { messages: number; channels: number; rate: number; subscribers: number };

/** Runs the soak against `target` and returns bench/SOAK.md; exit status 1 when it fails. */
export async function soak(target: TargetName, load: SoakLoad, settings: RelaySettings): Promise<string> {
  const { messages: MESSAGES, channels: CHANNELS, rate: RATE, subscribers: SUBSCRIBERS } = load;
  const NODE_ARGS = settings.nodeArgs;
  const isMonitor = target !== "floor";
  // --trace-gc: the JS heap left after each full GC shows live memory, which RSS (V8 keeps
  // freed pages for a while) does not; /metrics gives the monitor's own channel accounting
  const server = await startServer(target, SOAK_RETENTION, settings, {
    extraConfig: isMonitor ? ["http: {enabled: true}"] : [],
    nodeArgs: target === "binary" ? [] : ["--trace-gc", ...NODE_ARGS],
  });
  let liveHeapMB = NaN;
  server.onLine = (line) => {
    const m = /Mark-Compact[^>]*-> ([\d.]+) \(/.exec(line);
    if (m) liveHeapMB = Number(m[1]);
  };
  const clients = new Child("clients.ts");
  const sender = new Child("sender.ts");
  const tag = nextTag();
  await clients.request({ type: "init", wsPort: server.wsPort }, "ready");
  await sender.request({ type: "init", zmqPort: server.zmqPort, peers: 1 }, "ready");
  let sent = 0;
  let started = 0;
  sender.onMessage = (m) => {
    if (m.type === "soakProgress") {
      sent = Number(m.sent);
      started = Number(m.started);
      clients.send({ type: "soakProgress", started });
    }
  };
  type Sample = { t: number; sent: number; started: number; rssKB: number; cpuS: number; heapMB: number; channels: number; storedMB: number; conns: number };
  const samples: Sample[] = [];
  const t0 = nowNs();
  const sample = async () => {
    const metrics = isMonitor ? await scrapeMetrics(server.wsPort) : {};
    samples.push({
      t: (nowNs() - t0) / 1e9,
      sent,
      started,
      rssKB: memInfo(server.pid).rssKB,
      cpuS: cpuMicros(server.pid) / 1e6,
      heapMB: liveHeapMB,
      channels: metrics.recodex_monitor_channels ?? NaN,
      storedMB: (metrics.recodex_monitor_stored_bytes ?? NaN) / 1048576,
      conns: metrics.recodex_monitor_connections ?? NaN,
    });
  };
  await sample();
  const timer = setInterval(() => void sample(), 1000);
  clients.send({ type: "soakStart", tag, concurrent: SUBSCRIBERS, seed: tag });
  const done = await sender.request(
    { type: "soak", tag, messages: MESSAGES, channels: CHANNELS, active: 2000, finishedShare: 0.1, rate: RATE, seed: tag },
    "soakDone",
    1800000,
  );
  sent = Number(done.sent);
  const sendEnd = (nowNs() - t0) / 1e9;
  const sendS = (Number(done.t1) - Number(done.t0)) / 1e9;
  const subs = await clients.request({ type: "soakStop" }, "soakStopped", 60000);
  // let retention reclaim the idle channels (idle_ttl) and watch memory settle
  await sleep(Number(SOAK_RETENTION.idle_ttl) * 3000);
  clearInterval(timer);
  await sample();
  // the monitor still relays correctly after the soak
  await clients.request({ type: "subscribe", tag: tag + 1, wave: 0, count: 10, perChannel: 1 }, "subscribed");
  await sleep(200);
  const doneCheck = clients.wait("waveDone", 30000);
  await sender.request({ type: "wave", tag: tag + 1, wave: 0, count: 10, rate: 0, seed: 1 }, "sent");
  const checked = await doneCheck;
  const hwmKB = memInfo(server.pid).hwmKB;
  await sender.exit();
  await clients.exit();
  const exitCode = await stopServer(server, settings);

  // verdict: memory must stop growing while messages keep flowing
  const during = samples.filter((s) => s.t <= sendEnd);
  const between = (lo: number, hi: number, f: (s: Sample) => number) =>
    Math.max(...during.filter((s) => s.sent > lo * sent && s.sent <= hi * sent).map(f).filter(Number.isFinite));
  const rss1 = between(0.25, 0.5, (s) => s.rssKB);
  const rss2 = between(0.5, 1, (s) => s.rssKB);
  const heap1 = between(0.25, 0.5, (s) => s.heapMB);
  const heap2 = between(0.5, 1, (s) => s.heapMB);
  const maxChannels = Math.max(...samples.map((s) => s.channels).filter(Number.isFinite));
  const heapLeveled = Number.isFinite(heap1) && heap2 <= heap1 * 1.2 + 8;
  const rssLeveled = rss2 <= rss1 * 1.2 + 16 * 1024;
  const codes = subs.closeCodes as Record<string, number>;
  const faults =
    Number(subs.reordered) + Number(subs.malformed) + (codes["1006"] ?? 0) + Number(subs.failed) +
    Number(checked.lost) + Number(checked.reordered) + Number(checked.malformed) + Number(checked.badClose);
  const mb = (kb: number) => (kb / 1024).toFixed(1);
  const last = samples[samples.length - 1];
  const L: string[] = [];
  L.push(`# recodex-monitor soak (${target === "floor" ? "floor relay" : target === "binary" ? "dist/recodex-monitor" : "node src/main.ts"})`, "");
  L.push(`Generated by \`npm run bench -- --soak\` on ${new Date().toISOString()}; ${machine()}.`, "");
  L.push(
    `Load: ${sent.toLocaleString("en")} broker messages in ${sendS.toFixed(0)} s (asked ${RATE.toLocaleString("en")}/s, got ${f0(sent / sendS)}/s) over ${started.toLocaleString("en")} channels ` +
      `(2,000 jobs running at once; 10 % run to FINISHED, the others stop midway, 30 % of those with a broker FAILED/ABORTED), ` +
      `${SUBSCRIBERS} churning subscribers (each watches a recent or upcoming channel for 0.2-3.2 s, then closes or is closed; ${Number(subs.subscriptions).toLocaleString("en")} subscriptions in all).`,
    "",
  );
  L.push(`Monitor retention for the soak: \`${JSON.stringify(SOAK_RETENTION)}\`; \`http.enabled\` for /metrics; node \`--trace-gc${NODE_ARGS.map((a) => " " + a).join("")}\` (the JS heap left after each full GC).`, "");
  L.push("| | |", "|---|---|");
  L.push(`| channels kept (max seen / retention.max_channels) | ${f0(maxChannels)} / ${f0(SOAK_RETENTION.max_channels)} |`);
  L.push(`| JS heap after full GC: max in 25-50 % / 50-100 % of the messages | ${f1(heap1)} / ${f1(heap2)} MB |`);
  L.push(`| RSS: max in 25-50 % / 50-100 % of the messages | ${mb(rss1)} / ${mb(rss2)} MB |`);
  L.push(`| RSS, heap after GC, channels kept ${Number(SOAK_RETENTION.idle_ttl) * 3} s after the last message | ${mb(last.rssKB)} MB, ${f1(last.heapMB)} MB, ${f0(last.channels)} |`);
  L.push(`| peak RSS (VmHWM) | ${mb(hwmKB)} MB |`);
  L.push(`| live memory levels off (heap after GC in the 2nd half <= 1.2 x 1st + 8 MB) | **${heapLeveled ? "yes" : "NO"}** |`);
  L.push(`| RSS levels off (2nd-half max <= 1.2 x 25-50 % max + 16 MB) | **${rssLeveled ? "yes" : "NO"}** |`);
  L.push(`| frames delivered to the churning subscribers | ${Number(subs.delivered).toLocaleString("en")} |`);
  L.push(`| close codes seen by the subscribers | ${Object.entries(codes).map(([c, n]) => `${c}: ${n}`).join(", ")} |`);
  L.push(`| reordered / malformed frames, failed connects | ${subs.reordered} / ${subs.malformed} / ${subs.failed} |`);
  L.push(`| post-soak check (10 full jobs): lost / reordered / malformed / unclean closes | ${checked.lost} / ${checked.reordered} / ${checked.malformed} / ${checked.badClose} |`);
  L.push(`| monitor CPU for the whole soak | ${(last.cpuS - samples[0].cpuS).toFixed(1)} s |`);
  L.push(`| exit status after SIGTERM | ${exitCode} |`, "");
  L.push("Over time (one sample per second; heap = JS heap after the latest full GC):", "");
  L.push("| t (s) | messages sent | channels started | channels kept | stored (MB) | connections | heap (MB) | RSS (MB) | CPU (s) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const s of samples) {
    L.push(`| ${s.t.toFixed(1)} | ${s.sent.toLocaleString("en")} | ${s.started.toLocaleString("en")} | ${f0(s.channels)} | ${f1(s.storedMB)} | ${f0(s.conns)} | ${f1(s.heapMB)} | ${mb(s.rssKB)} | ${(s.cpuS - samples[0].cpuS).toFixed(1)} |`);
  }
  L.push("");
  if (!heapLeveled || faults > 0) process.exitCode = 1;
  return L.join("\n");
}
