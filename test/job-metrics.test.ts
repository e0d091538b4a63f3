// Job metrics: every figure for the job sequences ReCodEx produces, with a clock the test
// moves; then the unit behind a real store at its caps (it never keeps more than the store).
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChannelStore } from "../src/channel-store.ts";
import { DEFAULTS } from "../src/config.ts";
import { encodeMessage } from "../src/frames.ts";
import { JobMetrics } from "../src/job-metrics.ts";

function setup() {
  let now = 0;
  const jobs = new JobMetrics(() => now);
  const evaluation: number[] = [];
  const downloadedToStarted: number[] = [];
  jobs.timings = {
    evaluation: (s) => evaluation.push(s),
    downloadedToStarted: (s) => downloadedToStarted.push(s),
  };
  /** Feeds `channel` one message at `at` seconds. */
  const at = (seconds: number, channel: string, command: string, taskState?: string) => {
    now = seconds * 1000;
    jobs.message(channel, command, taskState);
  };
  const figures = () => ({
    inProgress: jobs.inProgress,
    failedOrAborted: jobs.failedOrAborted,
    finishedKept: jobs.finishedKept,
    reassigned: jobs.reassigned,
    ended: { ...jobs.ended },
    tasks: { ...jobs.tasks },
    known: [...jobs.channels()].length,
  });
  return { jobs, at, evaluation, downloadedToStarted, figures };
}

const ENDED_NONE = { finished: 0, failed: 0, aborted: 0, expired: 0, evicted: 0 };
const TASKS_NONE = { completed: 0, failed: 0, skipped: 0, other: 0 };
/** The figures of a unit that knows no job. */
const NO_JOBS = { inProgress: 0, failedOrAborted: 0, finishedKept: 0, reassigned: 0, ended: ENDED_NONE, tasks: TASKS_NONE, known: 0 };

test("a whole job: DOWNLOADED, STARTED, three tasks, ENDED, UPLOADED, FINISHED", () => {
  const { jobs, at, evaluation, downloadedToStarted, figures } = setup();
  at(100, "student_a", "DOWNLOADED");
  assert.equal(jobs.inProgress, 1);
  at(101.5, "student_a", "STARTED");
  at(103, "student_a", "TASK", "COMPLETED");
  at(104, "student_a", "TASK", "FAILED");
  at(105, "student_a", "TASK", "SKIPPED");
  at(106, "student_a", "ENDED");
  at(107, "student_a", "UPLOADED");
  assert.equal(jobs.inProgress, 1);
  at(110, "student_a", "FINISHED");
  assert.deepEqual(evaluation, [10]);
  assert.deepEqual(downloadedToStarted, [1.5]);
  assert.deepEqual(figures(), { ...NO_JOBS, finishedKept: 1, ended: { ...ENDED_NONE, finished: 1 }, tasks: { completed: 1, failed: 1, skipped: 1, other: 0 }, known: 1 });
  // finished_ttl passes: the job was counted at FINISHED, not again.
  jobs.dropped("student_a", "finished");
  assert.deepEqual(figures(), { ...NO_JOBS, ended: { ...ENDED_NONE, finished: 1 }, tasks: { completed: 1, failed: 1, skipped: 1, other: 0 } });
});

test("a build failure (FAILED then FINISHED) is a finished job", () => {
  const { jobs, at, evaluation, downloadedToStarted, figures } = setup();
  at(0, "student_b", "DOWNLOADED");
  at(2, "student_b", "STARTED");
  at(3, "student_b", "FAILED");
  assert.equal(jobs.inProgress, 0);
  assert.equal(jobs.failedOrAborted, 1);
  at(3.25, "student_b", "FINISHED");
  assert.deepEqual(evaluation, [3.25]);
  assert.deepEqual(downloadedToStarted, [2]);
  assert.deepEqual(figures(), { ...NO_JOBS, finishedKept: 1, ended: { ...ENDED_NONE, finished: 1 }, known: 1 });
});

test("the broker's FAILED alone: out of progress at once, counted failed when the channel expires", () => {
  const { jobs, at, evaluation, figures } = setup();
  at(0, "student_c", "FAILED");
  assert.deepEqual(figures(), { ...NO_JOBS, failedOrAborted: 1, known: 1 });
  jobs.dropped("student_c", "idle");
  assert.deepEqual(evaluation, []);
  assert.deepEqual(figures(), { ...NO_JOBS, ended: { ...ENDED_NONE, failed: 1 } });
});

test("a reassigned job: ABORTED, then a new run from DOWNLOADED on the same channel, then FINISHED", () => {
  const { jobs, at, evaluation, downloadedToStarted, figures } = setup();
  at(10, "student_d", "DOWNLOADED");
  at(11, "student_d", "STARTED");
  at(12, "student_d", "TASK", "COMPLETED");
  at(15, "student_d", "ABORTED");
  assert.equal(jobs.inProgress, 0);
  assert.equal(jobs.failedOrAborted, 1);
  at(20, "student_d", "DOWNLOADED");
  assert.equal(jobs.inProgress, 1);
  assert.equal(jobs.failedOrAborted, 0);
  assert.equal(jobs.reassigned, 1);
  at(23, "student_d", "STARTED");
  at(24, "student_d", "TASK", "COMPLETED");
  at(25, "student_d", "TASK", "COMPLETED");
  at(26, "student_d", "ENDED");
  at(27, "student_d", "UPLOADED");
  at(30, "student_d", "FINISHED");
  // The student waited from the first run's DOWNLOADED; each run is timed to its STARTED.
  assert.deepEqual(evaluation, [20]);
  assert.deepEqual(downloadedToStarted, [1, 3]);
  assert.deepEqual(figures(), { ...NO_JOBS, finishedKept: 1, reassigned: 1, ended: { ...ENDED_NONE, finished: 1 }, tasks: { ...TASKS_NONE, completed: 3 }, known: 1 });
});

test("ABORTED alone is counted aborted when the channel goes, whether it expires or is evicted", () => {
  const { jobs, at, figures } = setup();
  at(0, "student_e1", "DOWNLOADED");
  at(1, "student_e1", "ABORTED");
  at(0, "student_e2", "ABORTED");
  jobs.dropped("student_e1", "idle");
  jobs.dropped("student_e2", "evicted");
  assert.deepEqual(figures(), { ...NO_JOBS, ended: { ...ENDED_NONE, aborted: 2 } });
});

test("a job whose messages stop is expired at idle_ttl, or evicted at a cap", () => {
  const { jobs, at, evaluation, downloadedToStarted, figures } = setup();
  at(0, "student_f", "DOWNLOADED");
  at(1, "student_f", "STARTED");
  at(2, "student_f", "TASK", "COMPLETED");
  at(0, "student_g", "DOWNLOADED");
  assert.equal(jobs.inProgress, 2);
  jobs.dropped("student_f", "idle");
  jobs.dropped("student_g", "evicted");
  assert.deepEqual(evaluation, []);
  assert.deepEqual(downloadedToStarted, [1]);
  assert.deepEqual(figures(), { ...NO_JOBS, ended: { ...ENDED_NONE, expired: 1, evicted: 1 }, tasks: { ...TASKS_NONE, completed: 1 } });
});

test("a finished job evicted at a cap stays counted as finished only", () => {
  const { jobs, at, figures } = setup();
  at(0, "student_h", "DOWNLOADED");
  at(1, "student_h", "FINISHED");
  jobs.dropped("student_h", "evicted");
  assert.deepEqual(figures().ended, { ...ENDED_NONE, finished: 1 });
  assert.equal(jobs.finishedKept, 0);
});

test("messages after FINISHED are not a new job; after the channel is dropped the id starts a new one", () => {
  const { jobs, at, evaluation, figures } = setup();
  at(0, "student_i", "DOWNLOADED");
  at(5, "student_i", "FINISHED");
  at(6, "student_i", "TASK", "COMPLETED");
  at(7, "student_i", "DOWNLOADED");
  assert.deepEqual(figures(), { ...NO_JOBS, finishedKept: 1, ended: { ...ENDED_NONE, finished: 1 }, known: 1 });
  jobs.dropped("student_i", "finished");
  at(100, "student_i", "DOWNLOADED");
  at(104, "student_i", "FINISHED");
  assert.deepEqual(evaluation, [5, 4]);
  assert.equal(jobs.ended.finished, 2);
});

test("task states other than COMPLETED, FAILED and SKIPPED are counted as other, never as a label of their own", () => {
  const { at, figures } = setup();
  at(0, "student_j", "TASK", "WEIRD");
  at(0, "student_j", "TASK");
  at(0, "student_j", "TASK", "completed");
  assert.deepEqual(figures().tasks, { ...TASKS_NONE, other: 3 });
});

test("a shutdown lets go of every job without counting an end; an unknown channel's drop is ignored", () => {
  const { jobs, at, figures } = setup();
  at(0, "student_k", "DOWNLOADED");
  at(0, "student_l", "FAILED");
  at(0, "student_m", "FINISHED");
  jobs.dropped("never-seen", "idle");
  for (const id of ["student_k", "student_l", "student_m"]) jobs.dropped(id, "shutdown");
  assert.deepEqual(figures(), { ...NO_JOBS, ended: { ...ENDED_NONE, finished: 1 } });
});

test("STARTED without a DOWNLOADED (the monitor came up mid-job) is not timed", () => {
  const { at, downloadedToStarted, evaluation } = setup();
  at(0, "student_n", "STARTED");
  at(1, "student_n", "STARTED");
  at(9, "student_n", "FINISHED");
  assert.deepEqual(downloadedToStarted, []);
  assert.deepEqual(evaluation, [9]);
});

test("behind a real store at its caps, the unit knows no channel the store has let go of", () => {
  let now = 0;
  const jobs = new JobMetrics(() => now);
  const store = new ChannelStore(
    { ...DEFAULTS.retention, max_channels: 50, idle_ttl: 10, finished_ttl: 5 },
    { dropped: (ch, cause) => jobs.dropped(ch.id, cause) },
    () => now,
  );
  const publish = (id: string, command: string, taskState?: string) => {
    store.publish(id, command, encodeMessage(taskState === undefined ? [command] : [command, "t", taskState]));
    jobs.message(id, command, taskState);
  };
  // 2,000 jobs through a store that keeps 50 channels: every tenth finishes, every
  // seventh is failed by the broker, the rest stop half-way.
  for (let i = 0; i < 2000; i++) {
    now = i;
    const id = `student_${i}`;
    publish(id, "DOWNLOADED");
    publish(id, "STARTED");
    publish(id, "TASK", "COMPLETED");
    if (i % 10 === 0) publish(id, "FINISHED");
    else if (i % 7 === 0) publish(id, "FAILED");
    assert.ok([...jobs.channels()].length <= store.size, `job ${i}: ${[...jobs.channels()].length} known, store keeps ${store.size}`);
    if (i % 100 === 0) store.sweep(now);
  }
  store.sweep(now + 60_000);
  assert.equal(store.size, 0);
  assert.equal([...jobs.channels()].length, 0);
  const { ended } = jobs;
  assert.equal(ended.finished, 200);
  assert.equal(ended.finished + ended.failed + ended.aborted + ended.expired + ended.evicted, 2000);
  assert.equal(ended.evicted + ended.expired + ended.failed, 1800);
  assert.equal(jobs.inProgress, 0);
  assert.equal(jobs.failedOrAborted, 0);
  assert.equal(jobs.finishedKept, 0);
  assert.equal(jobs.tasks.completed, 2000);
  assert.equal(store.counters.evicted + store.counters.expired + store.counters.finishedDropped, 2000);
});
