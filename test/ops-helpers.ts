// Test tools for the operator's commands (watch, send, status) and the Prometheus files:
// a command running in the background whose output a test waits on, and the job
// sequences ReCodEx produces.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { MAIN } from "./helpers.ts";
import type { TestContext } from "node:test";

export interface CliProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Waits until stdout or stderr matches, or fails after `ms` showing both. */
  waitFor(pattern: RegExp, ms?: number): Promise<string>;
  /** Resolves with the exit code (or signal name) once the process has ended and its output is read. */
  exited: Promise<number | string>;
}

/** Runs `node src/main.ts ARGS` (or `command ARGS`) in the background; killed when the test ends. */
export function startCli(t: TestContext, args: string[], command = [process.execPath, MAIN]): CliProcess {
  const child = spawn(command[0], [...command.slice(1), ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  const wakers = new Set<() => void>();
  const wake = () => {
    for (const w of [...wakers]) w();
  };
  child.stdout!.on("data", (d: Buffer) => {
    out += d.toString();
    wake();
  });
  child.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
    wake();
  });
  const exited = new Promise<number | string>((resolve) => child.on("close", (code, signal) => resolve(code ?? signal ?? "unknown")));
  let done = false;
  void exited.then(() => {
    done = true;
    wake();
  });
  t.after(() => {
    if (!done) child.kill("SIGKILL");
  });
  const waitFor = (pattern: RegExp, ms = 10_000) =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`timed out waiting for ${pattern}`)), ms);
      const check = () => {
        const m = (out + "\n" + err).match(pattern);
        if (m) finish(null, m[0]);
        else if (done) finish(new Error(`exited before ${pattern}`));
      };
      const finish = (e: Error | null, value = "") => {
        clearTimeout(timer);
        wakers.delete(check);
        if (e === null) resolve(value);
        else reject(new Error(`${e.message}\nstdout:\n${out}\nstderr:\n${err}`));
      };
      wakers.add(check);
      check();
    });
  return { child, stdout: () => out, stderr: () => err, waitFor, exited };
}

/** One broker message: the frames after the channel id, and the JSON browsers get for it. */
export type Step = readonly string[];

/** The sequences of PROTOCOL.md §1, each a job's messages in order. */
export const SEQUENCES = {
  whole: [["DOWNLOADED"], ["STARTED"], ["TASK", "compilation", "COMPLETED"], ["TASK", "test01", "FAILED"], ["TASK", "test02", "SKIPPED"], ["ENDED"], ["UPLOADED"], ["FINISHED"]],
  buildFailure: [["DOWNLOADED"], ["STARTED"], ["FAILED"], ["FINISHED"]],
  brokerFailed: [["FAILED"]],
  brokerAborted: [["ABORTED"]],
  reassigned: [
    ["DOWNLOADED"], ["STARTED"], ["TASK", "compilation", "COMPLETED"], ["ABORTED"],
    ["DOWNLOADED"], ["STARTED"], ["TASK", "compilation", "COMPLETED"], ["TASK", "test01", "COMPLETED"], ["ENDED"], ["UPLOADED"], ["FINISHED"],
  ],
  stalled: [["DOWNLOADED"], ["STARTED"], ["TASK", "compilation", "COMPLETED"]],
} as const satisfies Record<string, readonly Step[]>;

/** The path of a tool, or null when it is not installed. */
export function which(tool: string): string | null {
  const r = spawnSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : null;
}
