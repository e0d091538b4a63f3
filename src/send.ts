// `recodex-monitor send CHANNEL COMMAND [TASK_ID TASK_STATE]`: plays the broker for one
// message, or with --job for a whole job. Each message waits for the connection to the
// monitor (a plain ROUTER drops what it cannot address, silently); the process then lingers
// until the messages have left.
import { monitorError } from "./errors.ts";
import { encodeMessage } from "./frames.ts";
import { BrokerPeer } from "./monitor-client.ts";

export interface SendOptions {
  url: string;
  channel: string;
  /** Each message's frames after the channel: command, then a TASK's id and state. */
  messages: string[][];
  intervalMs: number;
  timeoutMs: number;
}

/** A job as a worker reports it: DOWNLOADED, STARTED, one TASK per task, ENDED, UPLOADED, FINISHED. */
export function jobMessages(tasks: number): string[][] {
  const ids = Array.from({ length: tasks }, (_, i) => (i === 0 ? "compilation" : `test${String(i).padStart(2, "0")}`));
  return [["DOWNLOADED"], ["STARTED"], ...ids.map((id) => ["TASK", id, "COMPLETED"]), ["ENDED"], ["UPLOADED"], ["FINISHED"]];
}

export async function runSend(o: SendOptions, out: (line: string) => void): Promise<number> {
  const peer = await BrokerPeer.connect(o.url, o.timeoutMs);
  try {
    for (let i = 0; i < o.messages.length; i++) {
      if (i > 0 && o.intervalMs > 0) await new Promise((r) => setTimeout(r, o.intervalMs));
      try {
        await peer.send([o.channel, ...o.messages[i]]);
      } catch (err) {
        throw monitorError("RMON_ERR_UNREACHABLE", {
          what: "ZeroMQ socket",
          url: o.url,
          reason: i === 0 ? (err as Error).message : `${(err as Error).message} (after ${i} of ${o.messages.length} messages)`,
          hint: i === 0 ? "is the monitor running, and the URL (or zeromq_uri) right?" : "did the monitor stop?",
        });
      }
      out(`sent ${encodeMessage(o.messages[i])}`);
    }
  } finally {
    peer.close();
  }
  return 0;
}
