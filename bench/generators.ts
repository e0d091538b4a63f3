// The load generators: bench/clients.ts (the browsers) and bench/sender.ts (the broker) as
// forked processes, driven over IPC.
import { fork, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { BENCH } from "./relay.ts";

export type Msg = { type: string; [k: string]: unknown };

let tagCounter = (Date.now() / 1000) >>> 0;

/** A tag no earlier run of this process used: it names the run's channels. */
export function nextTag(): number {
  return ++tagCounter;
}

export class Child {
  proc: ChildProcess;
  inbox: Msg[] = [];
  waiters: { type: string; resolve: (m: Msg) => void }[] = [];
  onMessage: ((m: Msg) => void) | null = null;
  constructor(script: string) {
    this.proc = fork(join(BENCH, script), [], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    this.proc.on("message", (raw) => {
      const m = raw as Msg;
      if (m.type === "error") {
        console.error(`${script}: ${String(m.error)}`);
        process.exitCode = 2;
      }
      if (this.onMessage) this.onMessage(m);
      const i = this.waiters.findIndex((w) => w.type === m.type);
      if (i >= 0) this.waiters.splice(i, 1)[0].resolve(m);
      else this.inbox.push(m);
    });
  }
  get pid(): number {
    return this.proc.pid!;
  }
  send(m: Msg): void {
    this.proc.send(m);
  }
  /** Next message of `type` (queued or future); rejects after `timeoutMs`. */
  wait(type: string, timeoutMs = 120000): Promise<Msg> {
    const i = this.inbox.findIndex((m) => m.type === type);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]);
    return new Promise((res, rej) => {
      const w = {
        type,
        resolve: (m: Msg) => {
          clearTimeout(t);
          res(m);
        },
      };
      const t = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        rej(new Error(`timeout waiting for ${type}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }
  async request(m: Msg, reply: string, timeoutMs?: number): Promise<Msg> {
    const p = this.wait(reply, timeoutMs);
    this.send(m);
    return p;
  }
  async exit(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const done = new Promise((r) => this.proc.once("exit", r));
    this.send({ type: "exit" });
    await done;
  }
}
