// The jobs ReCodEx produces (PROTOCOL.md §1), each a channel's broker messages in order,
// and the broker playing one.
import type { Broker } from "./broker.ts";

/** One broker message: the frames after the channel id. */
export type Step = readonly string[];

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

/** Sends `steps` on `channel`, in order. */
export async function sendJob(broker: Broker, channel: string, steps: readonly Step[]): Promise<void> {
  for (const [command, ...rest] of steps) await broker.send(channel, command, ...rest);
}
