// `recodex-monitor send CHANNEL COMMAND [TASK_ID TASK_STATE]`: plays the broker for one
// message, or with --job for a whole job. The first message waits for the connection to the
// monitor (a ROUTER drops what it cannot address, silently); the process then lingers until
// the messages have left.
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
  const peer = new BrokerPeer(o.url, o.timeoutMs);
  try {
    for (let i = 0; i < o.messages.length; i++) {
      const frames = [o.channel, ...o.messages[i]];
      if (i === 0) {
        try {
          await peer.sendWhenConnected(frames, o.timeoutMs);
        } catch (err) {
          throw monitorError("RMON_ERR_UNREACHABLE", {
            what: "ZeroMQ socket",
            url: o.url,
            reason: `${(err as Error).message} within ${o.timeoutMs / 1000} s`,
            hint: "is the monitor running, and the URL (or zeromq_uri) right?",
          });
        }
      } else {
        if (o.intervalMs > 0) await new Promise((r) => setTimeout(r, o.intervalMs));
        await peer.send(frames).catch((err: Error & { code?: string }) => {
          if (err.code !== "EHOSTUNREACH") throw err;
          throw monitorError("RMON_ERR_UNREACHABLE", {
            what: "ZeroMQ socket",
            url: o.url,
            reason: `the connection was lost after ${i} of ${o.messages.length} messages`,
            hint: "did the monitor stop?",
          });
        });
      }
      out(`sent ${encodeMessage(o.messages[i])}`);
    }
  } finally {
    peer.close();
  }
  return 0;
}
