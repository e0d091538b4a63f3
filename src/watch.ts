// `recodex-monitor watch CHANNEL`: subscribes like a browser and prints every message as it
// arrives, one line each, exactly as the monitor sends it; then how the connection ended.
// Exit 0 once FINISHED has come and the monitor closed with 1000. With --resume it speaks
// the resumable protocol and, when the connection is lost, reconnects and resumes after
// the last offset it printed.
import { rootCertificates } from "node:tls";
import { WebSocket } from "ws";
import { monitorError } from "./errors.ts";
import { RESUME_PROTOCOL } from "./subscription.ts";

export interface WatchOptions {
  channel: string;
  url: string;
  /** Check the server's certificate (wss://): off when the URL comes from the monitor's own config. */
  verify: boolean;
  ca: Buffer | undefined;
  resume: boolean;
  timestamps: boolean;
  /** How long to wait for the connection, and then for each message; null: messages may take forever. */
  timeoutMs: number | null;
}

const CONNECT_TIMEOUT_MS = 10_000;
// Closes after which a resumable stream can go on: the monitor restarting, the connection
// lost (also a proxy cutting it), or this client cut for falling behind.
const RESUMABLE_CLOSES = new Set([1001, 1006, 1011, 1012, 1013, 4003]);
const MAX_RECONNECTS = 10;
const MAX_BACKOFF_MS = 5000;
/** The shell's status for a process ended by SIGINT. */
const INTERRUPTED = 130;

interface Outcome {
  /** The connection ended; how, in words (for the error line). */
  how: string;
  code: number;
  finished: boolean;
  interrupted: boolean;
  /** The connection never opened (a refusal, no one listening, a TLS failure). */
  unopened: Error | null;
}

export async function runWatch(o: WatchOptions, out: (line: string) => void, note: (line: string) => void): Promise<number> {
  const stamp = (line: string) => (o.timestamps ? `${new Date().toISOString()} ${line}` : line);
  let lastOffset = -1;
  let failures = 0;
  let opened = false;
  for (;;) {
    const outcome = await watchOnce(o, lastOffset, {
      opened: () => {
        note(stamp(lastOffset < 0 ? `watching channel ${o.channel} at ${o.url}` : `resumed after offset ${lastOffset}`));
        opened = true;
        failures = 0;
      },
      message: (text, offset) => {
        out(stamp(text));
        if (offset !== undefined) lastOffset = offset;
      },
    });
    if (outcome.finished && outcome.code === 1000) {
      note(stamp(`closed: ${outcome.how}`));
      return 0;
    }
    if (outcome.interrupted) {
      note(stamp("interrupted"));
      return INTERRUPTED;
    }
    const retry = o.resume && opened && failures < MAX_RECONNECTS && (outcome.unopened !== null || RESUMABLE_CLOSES.has(outcome.code));
    if (outcome.unopened !== null && !retry) {
      throw monitorError("RMON_ERR_UNREACHABLE", {
        what: "WebSocket port",
        url: o.url,
        reason: outcome.unopened.message,
        hint: "is the monitor running, and the URL (or websocket_uri) right?",
      });
    }
    if (!retry) throw monitorError("RMON_ERR_STREAM_ENDED", { channel: o.channel, how: outcome.how });
    const wait = Math.min(MAX_BACKOFF_MS, 100 * 2 ** failures++);
    note(stamp(`${outcome.how}; reconnecting in ${wait / 1000} s (${failures}/${MAX_RECONNECTS})`));
    await new Promise((r) => setTimeout(r, wait));
  }
}

function watchOnce(
  o: WatchOptions,
  after: number,
  on: { opened(): void; message(text: string, offset: number | undefined): void },
): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(o.url, o.resume ? [RESUME_PROTOCOL] : [], {
      perMessageDeflate: false,
      handshakeTimeout: o.timeoutMs ?? CONNECT_TIMEOUT_MS,
      rejectUnauthorized: o.verify,
      // Node's `ca` replaces the usual trust store; --ca adds to it.
      ca: o.ca === undefined ? undefined : [...rootCertificates, o.ca.toString("latin1")],
    });
    let open = false;
    let finished = false;
    let idle: ReturnType<typeof setTimeout> | undefined;
    /** Why this side ended the connection, if it did. */
    let endedBy: string | null = null;
    let refusal: Error | null = null;
    const armIdle = () => {
      if (o.timeoutMs === null) return;
      clearTimeout(idle);
      idle = setTimeout(() => {
        endedBy = `no message for ${o.timeoutMs! / 1000} s (is the channel id right? \`recodex-monitor status --channel ID\` tells whether the monitor keeps it)`;
        ws.terminate();
      }, o.timeoutMs);
    };
    let interrupted = false;
    const onSignal = () => {
      interrupted = true;
      endedBy = "interrupted";
      ws.terminate();
    };
    process.once("SIGINT", onSignal);

    ws.on("unexpected-response", (_req, res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => {
        refusal = new Error(`HTTP ${res.statusCode}${body.trim() !== "" ? `: ${body.trim().slice(0, 200)}` : ""}`);
        ws.terminate();
      });
    });
    ws.on("error", (err) => {
      // ws refuses the handshake when the server does not take the subprotocol offered.
      if (o.resume && err.message === "Server sent no subprotocol") {
        reject(monitorError("RMON_ERR_SWITCHED_OFF", { what: "the resumable protocol", key: "websocket.resumable", apply: "restart it" }));
      }
      refusal ??= err;
    });
    ws.on("open", () => {
      open = true;
      ws.send(after >= 0 ? JSON.stringify({ channel: o.channel, after }) : o.channel);
      on.opened();
      armIdle();
    });
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      armIdle();
      if (isBinary) {
        on.message(`<binary message of ${data.length} bytes>`, undefined);
        return;
      }
      const text = data.toString("utf8");
      const { command, offset } = read(text, o.resume);
      on.message(text, offset);
      if (command === "FINISHED") finished = true;
    });
    ws.on("close", (code: number, reason: Buffer) => {
      clearTimeout(idle);
      process.off("SIGINT", onSignal);
      const words = reason.toString();
      const how =
        endedBy ??
        (code === 1006 ? "connection lost without a close frame (1006)" : `closed by the monitor with ${code}${words !== "" ? ` (${words})` : ""}`);
      resolve({
        how: finished && code === 1000 ? `${code} ${words}`.trim() : how,
        code,
        finished,
        interrupted,
        unopened: open ? null : (refusal ?? new Error(endedBy ?? "closed during the opening handshake")),
      });
    });
  });
}

/** A frame's command, and with the resumable protocol its offset. */
function read(text: string, resumable: boolean): { command: unknown; offset: number | undefined } {
  try {
    const value = JSON.parse(text) as { command?: unknown; offset?: unknown; message?: { command?: unknown } };
    if (!resumable) return { command: value.command, offset: undefined };
    return { command: value.message?.command, offset: typeof value.offset === "number" ? value.offset : undefined };
  } catch {
    return { command: undefined, offset: undefined };
  }
}
