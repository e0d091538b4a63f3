// store.state_file: the memory store's channels across a graceful restart. One JSON line of
// header, one per channel, and a trailer with the SHA-256 of everything before it, so that
// a truncated or damaged file is told from a sound one before anything of it is used.
// Written atomically (temporary file, fsync, rename, fsync of the directory). A file that
// cannot be used is renamed aside for the operator, and the monitor starts empty; a file
// that was restored is removed at once, so that a later crash can never bring back a state
// older than what the crashed process had handed out.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { createInterface } from "node:readline";
import type { Persistence, SavedChannel, Snapshot } from "./channel-store.ts";
import { reasonOf } from "./errors.ts";
import type { RetentionLimits } from "./store-backend.ts";

const FORMAT = "recodex-monitor channel state";
const VERSION = 1;

export type Notice = (level: "info" | "warning" | "error", line: string) => void;

class Unusable extends Error {}

/** The largest file the retention caps can lead to: JSON escaping at most doubles a message. */
export function maxStateFileBytes(limits: RetentionLimits): number {
  return 2 * limits.max_total_bytes + limits.max_channels * 2048 + 1024 * 1024;
}

export class StateFile implements Persistence {
  readonly path: string;
  private readonly notice: Notice;
  private readonly clock: () => number;

  constructor(path: string, notice: Notice, clock: () => number = Date.now) {
    this.path = path;
    this.notice = notice;
    this.clock = clock;
  }

  /** The saved channels with their ages brought up to now, or null (with one warning) when there are none to use. */
  async load(limits: RetentionLimits): Promise<Snapshot | null> {
    let size: number;
    try {
      size = (await stat(this.path)).size;
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === "ENOENT"
        ? "does not exist (first start, or the last stop was not graceful: a crash, kill -9 or power loss loses what the last graceful stop did not save)"
        : `cannot be read: ${reasonOf(err)}`;
      this.notice("warning", `state file ${this.path} ${why}: starting with no channels`);
      return null;
    }
    try {
      const max = maxStateFileBytes(limits);
      if (size > max) throw new Unusable(`it is ${size} bytes, more than the retention caps allow (${max})`);
      const snapshot = await this.read();
      await unlink(this.path);
      return snapshot;
    } catch (err) {
      const why = err instanceof Unusable ? err.message : `cannot be read: ${reasonOf(err)}`;
      const aside = await this.putAside();
      this.notice("warning", `state file ${this.path} not restored: ${why}; ${aside}; starting with no channels`);
      return null;
    }
  }

  restored(channels: number, messages: number, dropped: number): void {
    const expired = dropped > 0 ? `; ${dropped} dropped (their ttl ran out while the monitor was down, or past the retention caps)` : "";
    this.notice("info", `state file ${this.path} restored: ${channels} channels, ${messages} messages${expired}`);
  }

  /** Writes the snapshot atomically; a failure is logged, never thrown (the stop goes on). */
  async save(snapshot: Snapshot): Promise<void> {
    const tmp = `${this.path}.tmp-${process.pid}`;
    const started = performance.now();
    try {
      const file = await open(tmp, "w", 0o600);
      try {
        const hash = createHash("sha256");
        let chunk = "";
        const flush = async () => {
          hash.update(chunk);
          await file.write(chunk);
          chunk = "";
        };
        const put = async (line: string) => {
          chunk += line + "\n";
          if (chunk.length >= 1 << 20) await flush();
        };
        await put(JSON.stringify({ format: FORMAT, version: VERSION, saved_at: this.clock(), next_base: snapshot.nextBase, channels: snapshot.channels.length }));
        for (const ch of snapshot.channels) await put(encodeChannel(ch));
        await flush();
        await file.write(JSON.stringify({ end: true, sha256: hash.digest("hex") }) + "\n");
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(tmp, this.path);
      await syncDirectory(dirname(this.path));
      const messages = snapshot.channels.reduce((n, ch) => n + ch.history.length, 0);
      this.notice("info", `state file ${this.path} written: ${snapshot.channels.length} channels, ${messages} messages (${(performance.now() - started).toFixed(0)} ms)`);
    } catch (err) {
      await unlink(tmp).catch(() => {});
      this.notice("error", `state file ${this.path} NOT written, the channels are lost with this process: ${reasonOf(err)} (is its directory there and writable? the package's unit has StateDirectory=recodex-monitor)`);
    }
  }

  private async read(): Promise<Snapshot> {
    const lines = createInterface({ input: createReadStream(this.path, { encoding: "utf8" }), crlfDelay: Infinity });
    const hash = createHash("sha256");
    let header: { saved_at: number; next_base: number; channels: number } | null = null;
    let trailer: { sha256: string } | null = null;
    const channels: SavedChannel[] = [];
    const ids = new Set<string>();
    let n = 0;
    for await (const line of lines) {
      n++;
      if (trailer !== null) throw new Unusable(`line ${n} follows the end marker`);
      const value = parseLine(line, n);
      if (header === null) {
        header = checkHeader(value);
      } else if (isRecord(value) && value.end === true) {
        if (typeof value.sha256 !== "string") throw new Unusable(`line ${n}: end marker without a checksum`);
        trailer = { sha256: value.sha256 };
        continue;
      } else {
        const ch = decodeChannel(value, n);
        if (ids.has(ch.id)) throw new Unusable(`line ${n}: channel ${JSON.stringify(ch.id)} appears twice`);
        ids.add(ch.id);
        channels.push(ch);
      }
      hash.update(line + "\n");
    }
    if (header === null) throw new Unusable("it is empty");
    if (trailer === null) throw new Unusable(`it ends after ${n} lines without its end marker (truncated)`);
    if (hash.digest("hex") !== trailer.sha256) throw new Unusable("its checksum does not match its contents (damaged)");
    if (channels.length !== header.channels) throw new Unusable(`it holds ${channels.length} channels, its header says ${header.channels}`);
    const down = Math.max(0, this.clock() - header.saved_at);
    return {
      nextBase: header.next_base,
      channels: channels.map((ch) => ({ ...ch, idleMs: ch.idleMs + down, finishedMs: ch.finishedMs < 0 ? -1 : ch.finishedMs + down })),
    };
  }

  /** Renames an unusable file so that the operator can look at it and the next stop does not overwrite it. */
  private async putAside(): Promise<string> {
    const stamp = new Date(this.clock()).toISOString().replace(/[:.]/g, "-");
    const aside = `${this.path}.bad-${stamp}`;
    try {
      await rename(this.path, aside);
      return `kept aside as ${basename(aside)}`;
    } catch (err) {
      return `could not be renamed aside (${reasonOf(err)})`;
    }
  }
}

function encodeChannel(ch: SavedChannel): string {
  return JSON.stringify({
    id: ch.id,
    base: ch.baseOffset,
    first: ch.firstOffset,
    next: ch.nextOffset,
    idle_ms: Math.round(ch.idleMs),
    finished_ms: ch.finishedMs < 0 ? -1 : Math.round(ch.finishedMs),
    truncated: ch.truncated,
    history: ch.history,
  });
}

function parseLine(line: string, n: number): unknown {
  try {
    return JSON.parse(line) as unknown;
  } catch {
    throw new Unusable(`line ${n} is not JSON (damaged)`);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const offset = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

function checkHeader(v: unknown): { saved_at: number; next_base: number; channels: number } {
  if (!isRecord(v) || v.format !== FORMAT) throw new Unusable("it is not a recodex-monitor state file");
  if (v.version !== VERSION) throw new Unusable(`it has format version ${JSON.stringify(v.version)}, this monitor reads version ${VERSION}`);
  if (typeof v.saved_at !== "number" || !offset(v.next_base) || !offset(v.channels)) throw new Unusable("its header is damaged");
  return { saved_at: v.saved_at, next_base: v.next_base, channels: v.channels };
}

function decodeChannel(v: unknown, n: number): SavedChannel {
  const bad = (what: string) => new Unusable(`line ${n}: ${what} (damaged)`);
  if (!isRecord(v) || typeof v.id !== "string" || v.id === "") throw bad("not a channel");
  const { base, first, next, idle_ms: idle, finished_ms: finished, truncated, history } = v;
  if (!offset(base) || !offset(first) || !offset(next) || base > first || first > next) throw bad("impossible offsets");
  if (!Array.isArray(history) || history.length !== next - first || !history.every((m) => typeof m === "string")) throw bad("history does not match its offsets");
  if (typeof idle !== "number" || idle < 0 || typeof finished !== "number" || finished < -1 || typeof truncated !== "boolean") throw bad("bad times");
  return { id: v.id, baseOffset: base, firstOffset: first, nextOffset: next, idleMs: idle, finishedMs: finished, truncated, history: history as string[] };
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
