// The subscription protocol: what a client's first message means, and how messages are
// wrapped for the opt-in resumable protocol. Legacy clients send the channel id and get the
// original bytes; a client that offered RESUME_PROTOCOL may send {"channel", "after"} and
// gets every message with its offset (README, "Resumable streams").
import type { CloseReason } from "./channel-store.ts";
import { CLOSE } from "./errors.ts";

/** Subprotocol a client offers to get offsets and resume after a reconnect. */
export const RESUME_PROTOCOL = "recodex-monitor.resume.v1";

export type FirstMessage =
  | { readonly ok: true; readonly channel: string; readonly after: number }
  | { readonly ok: false; readonly close: CloseReason; readonly what: string };

/** The subprotocol to accept among those a client offers (ws's handleProtocols). */
export function chooseProtocol(offered: ReadonlySet<string>, resumable: boolean): string | false {
  return resumable && offered.has(RESUME_PROTOCOL) ? RESUME_PROTOCOL : false;
}

/**
 * Reads a client's first message: the channel to subscribe to and, for a resume, the last
 * offset the client already has (-1: none). ws has already refused text that is not UTF-8
 * (1007) and messages over limits.max_client_message (1009).
 */
export function readFirstMessage(data: Buffer, isBinary: boolean, resumable: boolean, maxChannelIdLength: number): FirstMessage {
  if (isBinary) return { ok: false, close: CLOSE.BINARY, what: "a binary first message" };
  let channel = data.toString("utf8");
  let after = -1;
  if (resumable && channel.startsWith("{")) {
    const request = parseResumeRequest(channel);
    if (request === null) return { ok: false, close: CLOSE.BAD_CHANNEL, what: "an invalid resume request" };
    channel = request.channel;
    after = request.after;
  }
  if (channel.length === 0) return { ok: false, close: CLOSE.BAD_CHANNEL, what: "an empty channel id" };
  const length = Buffer.byteLength(channel);
  if (length > maxChannelIdLength) return { ok: false, close: CLOSE.BAD_CHANNEL, what: `a channel id of ${length} bytes` };
  return { ok: true, channel, after };
}

function parseResumeRequest(text: string): { channel: string; after: number } | null {
  try {
    const value = JSON.parse(text) as { channel?: unknown; after?: unknown };
    if (typeof value !== "object" || value === null || typeof value.channel !== "string") return null;
    const after = value.after ?? -1;
    if (typeof after !== "number" || !Number.isInteger(after) || after < -1) return null;
    return { channel: value.channel, after };
  } catch {
    return null;
  }
}

/** A stored message as a resumable client receives it: offsetPrefix(offset) + json + OFFSET_SUFFIX. */
export function withOffset(json: string, offset: number): string {
  return offsetPrefix(offset) + json + OFFSET_SUFFIX;
}

export function offsetPrefix(offset: number): string {
  return `{"offset": ${offset}, "message": `;
}

export const OFFSET_SUFFIX = "}";

/** Tells a resumable client that the history it asked for starts later (or was lost). */
export function gapNotice(firstOffset: number): string {
  return `{"gap": {"first_offset": ${firstOffset}}}`;
}
