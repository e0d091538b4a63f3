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
  const channel = isPlain(rawChannel) ? latin1(rawChannel) : decode(rawChannel);
  if (channel === null) return { kind: "invalid", reason: "channel id is not valid UTF-8" };
  if (frames.length < start + 2) return { kind: "invalid", reason: "no command frame", channel };

  const n = Math.min(frames.length - start - 1, KEYS.length);
  const fast = plainJson(frames, start + 1, n);
  if (fast !== null) {
    const command = latin1(frames[start + 1]);
    if (channel === "0" && command === "exit") return { kind: "exit" };
    if (fast.length > maxMessageLength) return tooLong(fast.length, maxMessageLength, channel);
    return { kind: "message", channel, command, json: fast, taskState: n === 3 ? latin1(frames[start + 3]) : undefined };
  }

  const values: string[] = [];
  for (let i = 0; i < n; i++) {
    const value = decode(frames[start + 1 + i]);
    if (value === null) return { kind: "invalid", reason: `${KEYS[i]} frame is not valid UTF-8`, channel };
    values.push(value);
  }
  const command = values[0];
  if (channel === "0" && command === "exit") return { kind: "exit" };
  const json = flat(encodeMessage(values));
  if (json.length > maxMessageLength) return tooLong(json.length, maxMessageLength, channel);
  return { kind: "message", channel, command, json, taskState: values[2] };
}

// A message larger than a channel's whole history allowance would push every other
// channel out of memory on its own; no ReCodEx message comes near it.
function tooLong(length: number, limit: number, channel: string): ParsedFrames {
  return { kind: "invalid", reason: `message of ${length} bytes as JSON (limit ${limit})`, channel };
}

function decode(bytes: Uint8Array): string | null {
  try {
    return decoder.decode(bytes);
  } catch {
    return null;
  }
}

// ---- the fast path -----------------------------------------------------------------------
// Nearly every broker frame is printable ASCII without quotes or backslashes: then its bytes
// are its JSON string's characters, and the message's JSON is the frames' bytes between fixed
// pieces. Built in one buffer and read back as one latin1 string, it is a flat one-byte
// string (a string built by concatenation would be a tree of a dozen pieces).

const PIECES = [
  Buffer.from('{"command": "', "latin1"),
  Buffer.from('", "task_id": "', "latin1"),
  Buffer.from('", "task_state": "', "latin1"),
];
const CLOSE_OBJECT = Buffer.from('"}', "latin1");
let scratch = Buffer.allocUnsafeSlow(4096);

/** Printable ASCII except '"' and '\\': the bytes a JSON string carries as they are (Python's ensure_ascii). */
function isPlain(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) return false;
  }
  return true;
}

function latin1(bytes: Uint8Array): string {
  const buffer = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  return buffer.toString("latin1");
}

/** The JSON of frames[first..first+n) when all of them are plain, else null. */
function plainJson(frames: readonly Uint8Array[], first: number, n: number): string | null {
  let length = CLOSE_OBJECT.length;
  for (let i = 0; i < n; i++) {
    const f = frames[first + i];
    if (!isPlain(f)) return null;
    length += PIECES[i].length + f.length;
  }
  if (length > scratch.length) scratch = Buffer.allocUnsafeSlow(Math.max(length, scratch.length * 2));
  const out = scratch;
  let at = 0;
  for (let i = 0; i < n; i++) {
    out.set(PIECES[i], at);
    at += PIECES[i].length;
    const f = frames[first + i];
    out.set(f, at);
    at += f.length;
  }
  out.set(CLOSE_OBJECT, at);
  return out.toString("latin1", 0, length);
}

/** The same characters as one flat string (the JSON is ASCII, so latin1 carries it exactly). */
function flat(json: string): string {
  return Buffer.from(json, "latin1").toString("latin1");
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
