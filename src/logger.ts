// Logging through tslog with the original monitor's level names. The file sink is a
// size-rotated stream (rotating-file-stream, logrotate-style names monitor.log.1 ...);
// "-" writes to stderr, which journald picks up under systemd.
import { closeSync, fstatSync, mkdirSync, openSync } from "node:fs";
import { basename, dirname } from "node:path";
import { createStream, type RotatingFileStream } from "rotating-file-stream";
import { Logger as TsLogger, type ILogObj } from "tslog";
import type { LogLevelName } from "./config.ts";
import { monitorError, reasonOf } from "./errors.ts";

// tslog's numeric levels: 2 debug, 3 info, 4 warn, 5 error, 6 fatal.
const TSLOG_LEVEL: Readonly<Record<LogLevelName, number>> = Object.freeze({
  debug: 2,
  info: 3,
  warning: 4,
  error: 5,
  critical: 6,
});

const LABEL: Readonly<Record<number, string>> = Object.freeze({
  2: "DEBUG",
  3: "INFO",
  4: "WARNING",
  5: "ERROR",
  6: "CRITICAL",
});

// syslog priorities (sd-daemon(3) "<N>" prefixes) of tslog's levels
const JOURNAL_PRIORITY: Readonly<Record<number, number>> = Object.freeze({ 2: 7, 3: 6, 4: 4, 5: 3, 6: 2 });

export interface LoggerOptions {
  file: string;
  level: LogLevelName;
  "max-size": number;
  rotations: number;
}

export class Log {
  private readonly tslog: TsLogger<ILogObj>;
  private readonly stream: RotatingFileStream | null;
  private level: number;
  private stderrBroken = false;
  /** stderr is systemd's journal stream: lines carry a priority and no timestamp. */
  private readonly journal: boolean;
  readonly destination: string;

  constructor(options: LoggerOptions) {
    this.level = TSLOG_LEVEL[options.level];
    this.destination = options.file === "-" ? "stderr" : options.file;
    this.stream = options.file === "-" ? null : openRotating(options);
    this.journal = this.stream === null && stderrIsJournal();
    // A closed stderr (the terminal or the parent went away) must neither crash the relay
    // nor loop on logging its own write errors: the log is then lost, the service is not.
    process.stderr.on("error", () => {
      this.stderrBroken = true;
    });
    this.tslog = new TsLogger<ILogObj>({ type: "hidden", minLevel: this.level, stack: { capture: "off" } });
    this.tslog.attachTransport((obj) => this.write(obj));
  }

  get debugEnabled(): boolean {
    return this.level <= TSLOG_LEVEL.debug;
  }

  setLevel(level: LogLevelName): void {
    this.level = TSLOG_LEVEL[level];
    this.tslog.settings.minLevel = this.level;
  }

  debug(message: string): void {
    if (this.level <= 2) this.tslog.debug(message);
  }
  info(message: string): void {
    this.tslog.info(message);
  }
  warning(message: string): void {
    this.tslog.warn(message);
  }
  error(message: string): void {
    this.tslog.error(message);
  }
  critical(message: string): void {
    this.tslog.fatal(message);
  }

  /** Writes out everything buffered and closes the file. */
  async close(): Promise<void> {
    const stream = this.stream;
    if (stream === null) return;
    await new Promise<void>((resolve) => {
      stream.once("error", () => resolve());
      stream.end(() => resolve());
    });
  }

  private write(obj: ILogObj): void {
    const meta = obj._logMeta as { logLevelId: number; date: Date } | undefined;
    const text = String(obj[0] ?? "");
    const id = meta?.logLevelId ?? 3;
    const label = `[${LABEL[id] ?? "INFO"}] `;
    let line: string;
    if (this.journal) {
      // journald takes every line of a multi-line message as an entry of its own
      const prefix = `<${JOURNAL_PRIORITY[id] ?? 6}>`;
      line = `${prefix}${label}${text.replaceAll("\n", `\n${prefix}`)}\n`;
    } else {
      line = `${timestamp(meta?.date ?? new Date())} ${label}${text}\n`;
    }
    if (this.stream === null) {
      if (!this.stderrBroken) process.stderr.write(line);
    } else {
      this.stream.write(line);
    }
  }
}

/** systemd names the journal stream it connected to stderr in $JOURNAL_STREAM
 *  ("device:inode"); a redirected stderr no longer matches it. */
function stderrIsJournal(): boolean {
  const stream = process.env.JOURNAL_STREAM;
  if (!stream) return false;
  try {
    const st = fstatSync(2, { bigint: true });
    return stream === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}

function timestamp(d: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())},${p(d.getMilliseconds(), 3)}`;
}

function openRotating(options: LoggerOptions): RotatingFileStream {
  const file = options.file;
  // Open synchronously once, so that an unwritable path is a start-up error rather than
  // an asynchronous stream error after the monitor reports itself ready.
  try {
    mkdirSync(dirname(file), { recursive: true });
    closeSync(openSync(file, "a"));
  } catch (err) {
    throw monitorError("RMON_ERR_LOG_FILE", { path: file, reason: reasonOf(err) });
  }
  const name = basename(file);
  const stream = createStream((index: number | Date | null) => (index ? `${name}.${String(index)}` : name), {
    path: dirname(file),
    ...(options.rotations > 0 ? { size: `${options["max-size"]}B`, rotate: options.rotations } : {}),
  });
  // A log write failing later (disk full, file removed by hand) must not stop the relay.
  stream.on("error", (err) => process.stderr.write(`recodex-monitor: log file ${file}: ${err.message}\n`));
  return stream;
}

/**
 * Repeated warnings of one kind (a flood of malformed frames) are logged at most `limit`
 * times a window; how many were held back is logged when the window closes, by the next
 * warning of that kind or by flush(), which the monitor calls on its sweep tick.
 */
export class WarnLimiter {
  private readonly windows = new Map<string, { start: number; count: number; suppressed: number }>();
  private readonly log: Pick<Log, "warning">;
  private readonly windowMs: number;
  private readonly limit: number;
  private readonly now: () => number;

  constructor(log: Pick<Log, "warning">, windowMs = 60_000, limit = 20, now: () => number = () => performance.now()) {
    this.log = log;
    this.windowMs = windowMs;
    this.limit = limit;
    this.now = now;
  }

  warn(kind: string, line: string): void {
    const now = this.now();
    let w = this.windows.get(kind);
    if (w !== undefined && now - w.start >= this.windowMs) {
      this.close(kind, w);
      w = undefined;
    }
    if (w === undefined) {
      w = { start: now, count: 0, suppressed: 0 };
      this.windows.set(kind, w);
    }
    if (++w.count <= this.limit) this.log.warning(line);
    else w.suppressed++;
  }

  /** Closes the windows that have run out. */
  flush(): void {
    const now = this.now();
    for (const [kind, w] of this.windows) {
      if (now - w.start >= this.windowMs) this.close(kind, w);
    }
  }

  private close(kind: string, w: { suppressed: number }): void {
    this.windows.delete(kind);
    if (w.suppressed > 0) this.log.warning(`${w.suppressed} more "${kind}" warnings suppressed in the last ${this.windowMs / 1000} s`);
  }
}
