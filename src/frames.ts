// ZeroMQ frames to the JSON bytes the original monitor sends (Python's
// json.dumps(sort_keys=True)): keys in order command, task_id, task_state; ", " and ": "
// separators; every character outside printable ASCII escaped as \uXXXX (lowercase hex,
// UTF-16 code units, so astral characters become surrogate pairs).

const KEYS = ["command", "task_id", "task_state"] as const;

const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export type ParsedFrames =
  | { kind: "message"; channel: string; json: string; command: string; taskState: string | undefined }
  | { kind: "exit" }
  | { kind: "invalid"; reason: string; channel?: string };

/**
 * Turns frames[start..] (channel, command, task id, task state) into a message; `start`
 * skips the routing id. Frames past the task state are ignored, as the original does.
 */
export function parseFrames(
  frames: readonly Uint8Array[],
  start: number,
  maxChannelLength: number,
  maxMessageLength = Number.MAX_SAFE_INTEGER,
): ParsedFrames {
  if (frames.length <= start) return { kind: "invalid", reason: "empty message (no channel frame)" };
  const rawChannel = frames[start];
  if (rawChannel.length === 0) return { kind: "invalid", reason: "empty channel id" };
  if (rawChannel.length > maxChannelLength) {
    return { kind: "invalid", reason: `channel id of ${rawChannel.length} bytes (limit ${maxChannelLength})` };
  }
  const channel = decode(rawChannel);
  if (channel === null) return { kind: "invalid", reason: "channel id is not valid UTF-8" };
  if (frames.length < start + 2) return { kind: "invalid", reason: "no command frame", channel };

  const values: string[] = [];
  const n = Math.min(frames.length - start - 1, KEYS.length);
  for (let i = 0; i < n; i++) {
    const value = decode(frames[start + 1 + i]);
    if (value === null) return { kind: "invalid", reason: `${KEYS[i]} frame is not valid UTF-8`, channel };
    values.push(value);
  }
  const command = values[0];
  if (channel === "0" && command === "exit") return { kind: "exit" };
  const json = encodeMessage(values);
  // A message larger than a channel's whole history allowance would push every other
  // channel out of memory on its own; no ReCodEx message comes near it.
  if (json.length > maxMessageLength) {
    return { kind: "invalid", reason: `message of ${json.length} bytes as JSON (limit ${maxMessageLength})`, channel };
  }
  return { kind: "message", channel, command, json, taskState: values[2] };
}

function decode(bytes: Uint8Array): string | null {
  try {
    return decoder.decode(bytes);
  } catch {
    return null;
  }
}

/**
 * The JSON object for up to three values. Pure ASCII by construction, so its characters
 * are its bytes; kept as a string, which V8 stores compactly (one byte a character).
 */
export function encodeMessage(values: readonly string[]): string {
  let out = "{";
  for (let i = 0; i < values.length && i < KEYS.length; i++) {
    if (i > 0) out += ", ";
    out += '"' + KEYS[i] + '": ' + pythonJsonString(values[i]);
  }
  return out + "}";
}

// Printable ASCII except '"' and '\\' passes through; this matches Python's ensure_ascii.
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

const SHORT_ESCAPES: Readonly<Record<number, string>> = {
  0x22: '\\"',
  0x5c: "\\\\",
  0x0a: "\\n",
  0x0d: "\\r",
  0x09: "\\t",
  0x08: "\\b",
  0x0c: "\\f",
};

export function pythonJsonString(s: string): string {
  if (PLAIN.test(s)) return '"' + s + '"';
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x20 && c <= 0x7e && c !== 0x22 && c !== 0x5c) {
      out += s[i];
    } else {
      out += SHORT_ESCAPES[c] ?? "\\u" + c.toString(16).padStart(4, "0");
    }
  }
  return out + '"';
}
