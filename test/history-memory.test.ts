// Kept history is compact: retention.max_total_bytes counts each message's JSON length, and the
// memory the history really takes (the V8 heap and the buffers its bytes are kept in) stays
// within the factor the README states (1.5x plus ~0.8 KB a channel). Issue 10 found ~7 heap
// bytes per counted byte (messages kept as concatenation trees).
import { test } from "node:test";
import assert from "node:assert/strict";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { ChannelStore } from "../src/channel-store.ts";
import { DEFAULTS } from "../src/config.ts";
import { parseFrames } from "../src/frames.ts";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

/** The heap and the ArrayBuffers' bytes (where history.ts keeps the messages), after full GCs. */
function memoryAfterGc(): number {
  gc();
  gc();
  const { heapUsed, arrayBuffers } = process.memoryUsage();
  return heapUsed + arrayBuffers;
}

/** Bytes of memory per counted byte for `channels` finished jobs of `perJob` messages, built as the broker link builds them. */
function factor(channels: number, perJob: number): { factor: number; perChannel: number } {
  const store = new ChannelStore({ ...DEFAULTS.retention, max_channels: 10_000_000, max_total_bytes: 1e12, max_messages_per_channel: 1e6 });
  const routing = Buffer.from("broker");
  const publish = (...frames: string[]) => {
    // A fresh Buffer per frame, as zeromq hands them over.
    const parsed = parseFrames([routing, ...frames.map((f) => Buffer.from(f))], 1, 1024);
    assert.equal(parsed.kind, "message");
    if (parsed.kind === "message") store.publish(parsed.channel, parsed.command, parsed.json);
  };
  const before = memoryAfterGc();
  for (let c = 0; c < channels; c++) {
    const id = `job-${c}-${(c * 7919).toString(36)}`;
    publish(id, "STARTED");
    for (let m = 1; m < perJob - 1; m++) publish(id, "TASK", `task_${m}_compile`, m % 7 ? "COMPLETED" : "FAILED");
    publish(id, "FINISHED");
  }
  const used = memoryAfterGc() - before;
  assert.equal(store.size, channels);
  return { factor: used / store.totalBytes, perChannel: used / channels };
}

test("kept history takes at most 1.5x the bytes max_total_bytes counts, plus ~0.8 KB a channel", (t) => {
  const long = factor(5000, 50);
  const short = factor(20000, 5);
  t.diagnostic(`memory per counted byte: ${long.factor.toFixed(2)} (50-message jobs), ${short.factor.toFixed(2)} (5-message jobs, ${short.perChannel.toFixed(0)} B a channel)`);
  // The README's bound: 1.5 x counted + 800 B per channel, for both kinds of job (a channel's
  // messages take whole blocks of 512 bytes: a 5-message job, ~270 bytes, takes one).
  for (const [jobs, r, perJob] of [["50-message", long, 50], ["5-message", short, 5]] as const) {
    const counted = r.perChannel / r.factor;
    assert.ok(r.perChannel <= 1.5 * counted + 800, `${jobs} jobs: ${r.perChannel.toFixed(0)} B of memory a channel for ${counted.toFixed(0)} counted bytes (${perJob} messages)`);
  }
});
