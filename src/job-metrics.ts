// What the evaluations are doing, read from the messages that pass through: how long jobs
// take, how they end, how their tasks end, and how many are running now. No figure names a
// job. Fed by the monitor with every stored broker message and every channel the store lets
// go of, so it keeps an entry only for channels the store keeps (and that had a message).
//
// A job is one channel's life in the store. It ends with FINISHED (also after a build
// failure: FAILED then FINISHED), or when the store lets go of it without FINISHED: by its
// last message a broker FAILED or ABORTED, else expired (idle_ttl) or evicted (a cap). Only
// then is it certain that no FINISHED follows, so those outcomes are counted late; the
// jobs waiting for that verdict are a gauge of their own. A DOWNLOADED after a FAILED or
// ABORTED is the broker's reassignment: the same job, a new run.
import type { DropCause } from "./channel-store.ts";

export type Outcome = "finished" | "failed" | "aborted" | "expired" | "evicted";
export type TaskOutcome = "completed" | "failed" | "skipped" | "other";

/** Where durations go (the Prometheus histograms, when the HTTP endpoints are on). */
export interface JobTimings {
  /** A job's first message to its FINISHED, in seconds. */
  evaluation(seconds: number): void;
  /** A run's DOWNLOADED to its STARTED, in seconds. */
  downloadedToStarted(seconds: number): void;
}

const RUNNING = 0;
const FAILED = 1;
const ABORTED = 2;

interface Job {
  readonly firstAt: number;
  /** When the current run's DOWNLOADED came, until its STARTED (NaN: none pending). */
  downloadedAt: number;
  phase: typeof RUNNING | typeof FAILED | typeof ABORTED;
}

// Finished jobs stay known until the store drops their channel, so that a message after
// FINISHED (which the store does not deliver) is not taken for a new job; they share one
// marker instead of an object each.
const DONE = Object.freeze({ firstAt: 0, downloadedAt: NaN, phase: RUNNING }) as Job;

const TASK_STATES: Readonly<Record<string, TaskOutcome>> = { COMPLETED: "completed", FAILED: "failed", SKIPPED: "skipped" };

export class JobMetrics {
  private readonly jobs = new Map<string, Job>();
  private readonly now: () => number;
  timings: JobTimings | null = null;
  /** Jobs whose last message is neither FINISHED nor a FAILED or ABORTED. */
  inProgress = 0;
  /** Jobs whose last message is a FAILED or ABORTED: ended unless a FINISHED or a new run follows. */
  failedOrAborted = 0;
  /** Finished jobs whose channel the store still keeps. */
  finishedKept = 0;
  reassigned = 0;
  readonly ended: Record<Outcome, number> = { finished: 0, failed: 0, aborted: 0, expired: 0, evicted: 0 };
  readonly tasks: Record<TaskOutcome, number> = { completed: 0, failed: 0, skipped: 0, other: 0 };

  constructor(now: () => number = () => performance.now()) {
    this.now = now;
  }

  /** Jobs known, by channel id (finished or not), for the status listing. */
  channels(): IterableIterator<string> {
    return this.jobs.keys();
  }

  /** A message the store has taken for `channel` (the broker's command, and a TASK's state). */
  message(channel: string, command: string, taskState: string | undefined): void {
    let job = this.jobs.get(channel);
    if (job === DONE) return;
    const now = this.now();
    if (job === undefined) {
      job = { firstAt: now, downloadedAt: NaN, phase: RUNNING };
      this.jobs.set(channel, job);
      this.inProgress++;
    } else if (job.phase !== RUNNING) {
      this.failedOrAborted--;
      this.inProgress++;
      job.phase = RUNNING;
      if (command === "DOWNLOADED") this.reassigned++;
    }
    switch (command) {
      case "DOWNLOADED":
        job.downloadedAt = now;
        break;
      case "STARTED":
        if (!Number.isNaN(job.downloadedAt)) {
          this.timings?.downloadedToStarted((now - job.downloadedAt) / 1000);
          job.downloadedAt = NaN;
        }
        break;
      case "TASK":
        this.tasks[TASK_STATES[taskState ?? ""] ?? "other"]++;
        break;
      case "FAILED":
      case "ABORTED":
        job.phase = command === "FAILED" ? FAILED : ABORTED;
        this.inProgress--;
        this.failedOrAborted++;
        break;
      case "FINISHED":
        this.inProgress--;
        this.finishedKept++;
        this.ended.finished++;
        this.timings?.evaluation((now - job.firstAt) / 1000);
        this.jobs.set(channel, DONE);
        break;
    }
  }

  /** The store let go of `channel`. */
  dropped(channel: string, cause: DropCause): void {
    const job = this.jobs.get(channel);
    if (job === undefined) return;
    this.jobs.delete(channel);
    if (job === DONE) {
      this.finishedKept--;
      return;
    }
    if (job.phase === RUNNING) this.inProgress--;
    else this.failedOrAborted--;
    // A shutdown is not the job's end: the monitor's.
    if (cause === "shutdown") return;
    const outcome: Outcome =
      job.phase === FAILED ? "failed" : job.phase === ABORTED ? "aborted" : cause === "evicted" ? "evicted" : "expired";
    this.ended[outcome]++;
  }
}
