// The operator's commands (watch, send) running in the background: a test waits on what
// they print and on how they end, while it plays the broker or stops the monitor.
import { spawn, type ChildProcess } from "node:child_process";
import type { TestContext } from "node:test";
import { killOnExit, MAIN, type MonitorProcess } from "./monitor-process.ts";
import { subscribedLine } from "./relay.ts";
import { WAIT_MS, waitUntil } from "./wait.ts";

/** tcpmux: a privileged port that no service here listens on, so a connection is refused. */
export const NOBODY = 1;

export class CliProcess {
  readonly child: ChildProcess;
  /** The exit code (or the signal's name), once the process has ended and its output is read. */
  readonly exited: Promise<number | string>;
  private out = "";
  private err = "";
  private done = false;

  constructor(child: ChildProcess) {
    this.child = child;
    child.stdout!.on("data", (d: Buffer) => (this.out += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (this.err += d.toString()));
    this.exited = new Promise((resolve) => child.on("close", (code, signal) => resolve(code ?? signal ?? "unknown")));
    void this.exited.then(() => (this.done = true));
  }

  stdout(): string {
    return this.out;
  }

  stderr(): string {
    return this.err;
  }

  /** The first match of `pattern` in stdout or stderr; fails, showing both, if the process ends first. */
  async waitFor(pattern: RegExp, ms = WAIT_MS): Promise<string> {
    let found: RegExpMatchArray | null = null;
    const both = () => `${pattern}\nstdout:\n${this.out}\nstderr:\n${this.err}`;
    await waitUntil(
      () => {
        found = `${this.out}\n${this.err}`.match(pattern);
        if (found === null && this.done) throw new Error(`the command exited (${this.child.exitCode ?? this.child.signalCode}) before ${both()}`);
        return found !== null;
      },
      both,
      ms,
    );
    return found![0];
  }
}

/** Runs `node src/main.ts ARGS` (or `command ARGS`) in the background; killed when the test ends. */
export function startCli(t: TestContext, args: string[], command = [process.execPath, MAIN]): CliProcess {
  const child = spawn(command[0], [...command.slice(1), ...args], { stdio: ["ignore", "pipe", "pipe"] });
  killOnExit(child);
  const cli = new CliProcess(child);
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  return cli;
}

/**
 * `watch CHANNEL ARGS` in the background, once `m` has logged the subscription: what the
 * broker sends from then on reaches it live.
 */
export async function startWatch(
  t: TestContext,
  m: MonitorProcess,
  channel: string,
  args: string[],
  command?: string[],
): Promise<CliProcess> {
  const since = m.mark();
  const w = startCli(t, ["watch", channel, ...args], command);
  await Promise.race([
    m.waitFor(subscribedLine(channel), { since }),
    w.exited.then((code) => {
      throw new Error(`watch exited (${code}) before it subscribed:\n${w.stderr()}`);
    }),
  ]);
  return w;
}
