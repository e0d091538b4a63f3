// Start-up with a restored state file (issue 13: ~100 MB, ready in < 1 s). The file is made by
// the monitor itself: it is fed history until it keeps about the wanted bytes, stopped with
// SIGTERM (it writes store.state_file), then started again and again; every start restores the
// file (and removes it) and every graceful stop writes it anew, so each start reads a full one.
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { closeRig, abortRig, openRig } from "./measure.ts";
import { scrapeMetrics, startServer, stopServer, type RelaySettings, type TargetName } from "./relay.ts";
import { median, nowNs, sleep } from "./sampling.ts";
import { SCALING_RETENTION } from "./shapes.ts";

export type StateStartup = {
  target: TargetName;
  fileBytes: number;
  channels: number;
  messages: number;
  /** Spawn -> both ports accept, per start (the restore happens before the ports are bound). */
  readyMs: number[];
  /** SIGTERM -> exit, per stop: the state file is written meanwhile. */
  stopMs: number[];
  /** Starts whose log did not say that the file was restored with every channel. */
  badRestores: number;
  exitCodes: (number | null)[];
};

const CHUNK_CHANNELS = 2000;
const MESSAGES_PER_CHANNEL = 55; // a whole job of 50 tasks; no FINISHED: the channels stay until idle_ttl

/** Retention that keeps everything the file is made of (max_total_bytes bounds the file's size, see state-file.ts). */
const STATE_RETENTION = { ...SCALING_RETENTION, max_total_bytes: 2 * 1073741824 };

export async function measureStateStartup(target: TargetName, bytes: number, starts: number, settings: RelaySettings): Promise<StateStartup> {
  const dir = mkdtempSync(join(tmpdir(), "recodex-bench-state-"));
  const path = join(dir, "channels.state");
  const store = [`state_file: ${JSON.stringify(path)}`];
  const out: StateStartup = { target, fileBytes: NaN, channels: 0, messages: 0, readyMs: [], stopMs: [], badRestores: 0, exitCodes: [] };
  try {
    // Fed until the kept bytes reach a guess of the file's size, stopped (the file is written),
    // started again (restored) and fed more while the file is short of 90 % of `bytes`.
    let goal = bytes / 1.8; // a file holds ~1.8 bytes per stored byte (JSON-escaped history, one line per channel)
    let from = 0;
    for (;;) {
      const rig = await openRig(target, settings, 1, STATE_RETENTION, { store, extraConfig: ["http: {enabled: true, on_websocket_port: true}"] });
      try {
        for (;;) {
          const m = await scrapeMetrics(rig.server.wsPort);
          if ((m.recodex_monitor_messages_in_total ?? NaN) < rig.sent) {
            await sleep(20); // what was sent is not all stored yet
            continue;
          }
          const stored = m.recodex_monitor_stored_bytes ?? NaN;
          if (!Number.isFinite(stored)) throw new Error("the monitor's /metrics has no recodex_monitor_stored_bytes");
          out.channels = m.recodex_monitor_channels ?? NaN;
          if (stored >= goal) break;
          const r = await rig.sender.request(
            { type: "preload", tag: 1, wave: 0xfffb, from, to: from + CHUNK_CHANNELS, length: MESSAGES_PER_CHANNEL - 1, tasks: MESSAGES_PER_CHANNEL - 5 },
            "preloaded",
            1_800_000,
          );
          from += CHUNK_CHANNELS;
          rig.sent += Number(r.msgs);
          out.messages += Number(r.msgs);
        }
      } catch (e) {
        await abortRig(rig, settings, `state file: ${String(e)}`);
        throw e;
      }
      out.exitCodes.push(await closeRig(rig, settings));
      out.fileBytes = statSync(path).size;
      if (out.fileBytes >= 0.9 * bytes || out.exitCodes.some((c) => c !== 0)) break;
      goal *= bytes / out.fileBytes;
    }
    const restoredLine = new RegExp(`restored: ${out.channels} channels`);
    for (let i = 0; i < starts; i++) {
      const s = await startServer(target, STATE_RETENTION, settings, { level: "info", store });
      out.readyMs.push(s.readyMs);
      // the log line is written before the ports are bound; the pipe may deliver it a moment later
      const deadline = performance.now() + 5000;
      while (!s.log.some((l) => restoredLine.test(l)) && performance.now() < deadline) await sleep(5);
      if (!s.log.some((l) => restoredLine.test(l))) out.badRestores++;
      const t0 = nowNs();
      out.exitCodes.push(await stopServer(s, settings));
      out.stopMs.push((nowNs() - t0) / 1e6);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

export const stateSummary = (s: StateStartup) =>
  `${(s.fileBytes / 1048576).toFixed(0)} MB state file (${s.channels} channels, ${s.messages} messages): ready median ${median(s.readyMs).toFixed(0)} ms, ` +
  `max ${Math.max(...s.readyMs).toFixed(0)} ms; stop (writes the file) median ${median(s.stopMs).toFixed(0)} ms; bad restores ${s.badRestores}, exits ${[...new Set(s.exitCodes)].join(",")}`;
