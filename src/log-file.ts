// The log file: a size-rotated stream (rotating-file-stream, logrotate-style names
// monitor.log.1 ...) that outlives what can happen to its file while the monitor runs. A
// write that fails (disk full, read-only file system, no descriptor left) stops the stream;
// the file is then reopened every second until a line goes through again, with one line on
// stderr when writing stops and one when it resumes, and the lines lost in between counted
// in the file. A file removed or replaced under a running monitor (its directory deleted, an
// outside rotation) is noticed within a second and opened again by its name.
import { closeSync, mkdirSync, openSync, stat } from "node:fs";
import { basename, dirname } from "node:path";
import { createStream, type RotatingFileStream } from "rotating-file-stream";
import { monitorError, reasonOf } from "./errors.ts";

export interface LogFileOptions {
  file: string;
  "max-size": number;
  rotations: number;
}

const CHECK_MS = 1000;

/** How the log formats its lines and times (logger.ts), for what this file says about itself. */
export interface LineFormat {
  warning(text: string): string;
  time(d: Date): string;
}

export class LogFile {
  private readonly options: LogFileOptions;
  private readonly format: LineFormat;
  private stream: RotatingFileStream | null = null;
  /** The inode the stream writes to, once opened; null while opening or rotating. */
  private ino: number | null = null;
  private failure: { since: Date; reason: string } | null = null;
  private lost = 0;
  private probing = false;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(options: LogFileOptions, format: LineFormat) {
    this.options = options;
    this.format = format;
    const file = options.file;
    // Open synchronously once, so that an unwritable path is a start-up error rather than
    // an asynchronous stream error after the monitor reports itself ready.
    try {
      mkdirSync(dirname(file), { recursive: true });
      closeSync(openSync(file, "a"));
    } catch (err) {
      throw monitorError("RMON_ERR_LOG_FILE", { path: file, reason: reasonOf(err) });
    }
    this.stream = this.open();
    this.timer = setInterval(() => this.check(), CHECK_MS);
    this.timer.unref();
  }

  write(line: string): void {
    if (this.stream === null) this.lost++;
    else this.stream.write(line);
  }

  /** Writes out everything buffered and closes the file. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    const stream = this.stream;
    this.stream = null;
    if (stream === null) return;
    await new Promise<void>((resolve) => {
      stream.once("error", () => resolve());
      stream.end(() => resolve());
    });
  }

  private open(): RotatingFileStream {
    const { file, rotations } = this.options;
    const name = basename(file);
    const stream = createStream((index: number | Date | null) => (index ? `${name}.${String(index)}` : name), {
      path: dirname(file),
      ...(rotations > 0 ? { size: `${this.options["max-size"]}B`, rotate: rotations } : {}),
    });
    stream.on("rotation", () => {
      if (stream === this.stream) this.ino = null;
    });
    stream.on("open", () =>
      stat(file, (err, st) => {
        if (stream === this.stream && !err) this.ino = st.ino;
      }),
    );
    stream.on("error", (err) => this.failed(stream, err));
    return stream;
  }

  private failed(stream: RotatingFileStream, err: Error): void {
    stream.destroy();
    if (stream !== this.stream) return;
    this.stream = null;
    this.ino = null;
    if (this.failure === null) {
      this.failure = { since: new Date(), reason: reasonOf(err) };
      process.stderr.write(
        `recodex-monitor: log file ${this.options.file} cannot be written (${this.failure.reason}); lines are lost until writing works again (retried every second)\n`,
      );
    }
  }

  private check(): void {
    if (this.failure !== null) {
      this.retry();
      return;
    }
    const stream = this.stream;
    if (stream === null || this.ino === null) return;
    stat(this.options.file, (err, st) => {
      if (stream !== this.stream || this.ino === null || (!err && st.ino === this.ino)) return;
      // Lines written since the file went away are in the old inode: lost to anyone reading the log.
      this.stream = this.open();
      stream.end();
      this.stream.write(this.format.warning(`log file ${this.options.file} was removed or replaced while in use: re-created`));
    });
  }

  /** Opens the file again and writes the news of the gap; the first write that succeeds ends the failure. */
  private retry(): void {
    if (this.probing || this.failure === null) return;
    this.probing = true;
    const { since, reason } = this.failure;
    const stream = this.open();
    stream.once("error", () => {
      this.probing = false;
    });
    const note = this.format.warning(`log file ${this.options.file} could not be written since ${this.format.time(since)} (${reason}): ${this.lost} lines lost`);
    stream.write(note, (err) => {
      this.probing = false;
      if (err) return;
      this.stream = stream;
      this.failure = null;
      process.stderr.write(`recodex-monitor: log file ${this.options.file} written again (${this.lost} lines lost)\n`);
      this.lost = 0;
    });
  }
}
