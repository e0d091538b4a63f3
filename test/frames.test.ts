// ZeroMQ frames to the exact JSON bytes of the original (Python json.dumps(sort_keys=True)).
// Every expected string below was produced by python3's json.dumps(..., sort_keys=True).
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeMessage, parseFrames, pythonJsonString } from "../src/frames.ts";

const b = (s: string | Buffer): Buffer => (typeof s === "string" ? Buffer.from(s, "utf8") : s);
const ROUTING = Buffer.from([0, 1, 2, 3, 4]);

function parse(...frames: (string | Buffer)[]) {
  return parseFrames([ROUTING, ...frames.map(b)], 1, 256);
}

function json(...frames: (string | Buffer)[]): string {
  const parsed = parse(...frames);
  assert.equal(parsed.kind, "message", JSON.stringify(parsed));
  if (parsed.kind !== "message") throw new Error("unreachable");
  return parsed.json;
}

test("a command alone becomes {\"command\": ...} with Python's separators", () => {
  assert.equal(json("job1", "DOWNLOADED"), '{"command": "DOWNLOADED"}');
});

test("a TASK message has its keys sorted: command, task_id, task_state", () => {
  assert.equal(
    json("job1", "TASK", "t1", "COMPLETED"),
    '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}',
  );
});

test("missing frames are missing keys (command and task id only)", () => {
  assert.equal(json("job1", "TASK", "t1"), '{"command": "TASK", "task_id": "t1"}');
});

test("frames past the task state are ignored", () => {
  assert.equal(
    json("job1", "TASK", "t1", "FAILED", "extra", "more"),
    '{"command": "TASK", "task_id": "t1", "task_state": "FAILED"}',
  );
});

test("non-ASCII characters are escaped as lowercase \\uXXXX", () => {
  assert.equal(
    json("job1", "TASK", "úkol-2", "FAILED"),
    '{"command": "TASK", "task_id": "\\u00fakol-2", "task_state": "FAILED"}',
  );
  assert.equal(
    json("job1", "TASK", "é\u0080\uffff", "x"),
    '{"command": "TASK", "task_id": "\\u00e9\\u0080\\uffff", "task_state": "x"}',
  );
  assert.equal(json("job1", "\u2028"), '{"command": "\\u2028"}');
});

test("astral characters become UTF-16 surrogate pairs", () => {
  assert.equal(
    json("job1", "TASK", "😀", "x"),
    '{"command": "TASK", "task_id": "\\ud83d\\ude00", "task_state": "x"}',
  );
});

test("quotes and backslashes are escaped as Python does", () => {
  assert.equal(
    json("job1", "TASK", 'a"b\\c', "x"),
    '{"command": "TASK", "task_id": "a\\"b\\\\c", "task_state": "x"}',
  );
});

test("control characters and DEL are escaped as Python does", () => {
  assert.equal(
    json("job1", "TASK", "\x00\x01\x1f\x7f", "x"),
    '{"command": "TASK", "task_id": "\\u0000\\u0001\\u001f\\u007f", "task_state": "x"}',
  );
  assert.equal(
    json("job1", "TASK", "\n\r\t\b\f", "x"),
    '{"command": "TASK", "task_id": "\\n\\r\\t\\b\\f", "task_state": "x"}',
  );
});

test("characters Python leaves alone (/ < > & ') pass through unescaped", () => {
  assert.equal(json("job1", "/<>&'"), '{"command": "/<>&\'"}');
});

test("a byte order mark at the start of a frame is kept and escaped, not stripped", () => {
  assert.equal(json("job1", Buffer.from([0xef, 0xbb, 0xbf, 0x41])), '{"command": "\\ufeffA"}');
});

test("an empty command is forwarded as an empty string", () => {
  assert.equal(json("job1", ""), '{"command": ""}');
});

test("the output is pure ASCII", () => {
  const parsed = parse("job1", "TASK", "úkol 😀 \u0000", "ž");
  assert.equal(parsed.kind, "message");
  if (parsed.kind === "message") {
    for (const ch of parsed.json) assert.ok(ch.charCodeAt(0) < 0x80, `character ${JSON.stringify(ch)} is not ASCII`);
    assert.deepEqual(JSON.parse(parsed.json), { command: "TASK", task_id: "úkol 😀 \u0000", task_state: "ž" });
  }
});

test("the parsed message names its channel and command", () => {
  const parsed = parse("student_abc", "STARTED");
  assert.deepEqual(
    parsed.kind === "message" ? { channel: parsed.channel, command: parsed.command } : parsed,
    { channel: "student_abc", command: "STARTED" },
  );
});

test("channel 0 with command exit is the exit command, not a message", () => {
  assert.deepEqual(parse("0", "exit"), { kind: "exit" });
});

test("channel 0 with another command is an ordinary message", () => {
  assert.equal(json("0", "EXIT"), '{"command": "EXIT"}');
  assert.equal(json("00", "exit"), '{"command": "exit"}');
});

test("a message with nothing after the routing id is invalid", () => {
  assert.equal(parseFrames([ROUTING], 1, 256).kind, "invalid");
});

test("a message with only a channel frame is invalid", () => {
  const parsed = parse("job1");
  assert.equal(parsed.kind, "invalid");
});

test("an empty channel id is invalid", () => {
  assert.equal(parse("", "STARTED").kind, "invalid");
});

test("a channel id longer than the limit is invalid; one at the limit is accepted", () => {
  assert.equal(parseFrames([ROUTING, b("x".repeat(257)), b("A")], 1, 256).kind, "invalid");
  assert.equal(parseFrames([ROUTING, b("x".repeat(256)), b("A")], 1, 256).kind, "message");
});

test("invalid UTF-8 in the channel, command, task id or task state is invalid", () => {
  const bad = Buffer.from([0x61, 0xff, 0x62]);
  assert.equal(parse(bad, "STARTED").kind, "invalid");
  assert.equal(parse("job1", bad).kind, "invalid");
  assert.equal(parse("job1", "TASK", bad, "COMPLETED").kind, "invalid");
  assert.equal(parse("job1", "TASK", "t1", bad).kind, "invalid");
  // An encoded UTF-16 surrogate (CESU-style) is not valid UTF-8 either.
  assert.equal(parse("job1", Buffer.from([0xed, 0xa0, 0xbd])).kind, "invalid");
});

test("invalid UTF-8 in a frame past the task state does not matter", () => {
  assert.equal(
    json("job1", "TASK", "t1", "OK", Buffer.from([0xff])),
    '{"command": "TASK", "task_id": "t1", "task_state": "OK"}',
  );
});

test("encodeMessage and pythonJsonString agree with Python for mixed text", () => {
  assert.equal(encodeMessage(["A", "b"]), '{"command": "A", "task_id": "b"}');
  assert.equal(pythonJsonString("plain text"), '"plain text"');
  assert.equal(pythonJsonString("ž\"😀"), '"\\u017e\\"\\ud83d\\ude00"');
});

test("a message whose JSON is larger than the limit is refused, one at the limit passes", () => {
  const exact = encodeMessage(["TASK", "t", "x".repeat(50)]).length;
  const frames = [ROUTING, b("job"), b("TASK"), b("t"), b("x".repeat(50))];
  assert.equal(parseFrames(frames, 1, 256, exact).kind, "message");
  const refused = parseFrames(frames, 1, 256, exact - 1);
  assert.equal(refused.kind, "invalid");
  if (refused.kind === "invalid") assert.match(refused.reason, /bytes as JSON \(limit/);
});

test("the plain-ASCII fast path builds the same bytes as the general encoder, frame by frame", () => {
  // Every printable ASCII byte, with and without the two that need escaping, in 1-3 value frames.
  const alphabet = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).join("");
  let seed = 7;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2147483648) % n);
  for (let round = 0; round < 500; round++) {
    const values = Array.from({ length: 1 + rand(3) }, () =>
      Array.from({ length: rand(40) }, () => alphabet[rand(alphabet.length)]).join(""));
    assert.equal(json("job1", ...values), encodeMessage(values), JSON.stringify(values));
  }
  // A message far larger than the fast path's scratch buffer.
  const big = "x".repeat(100_000);
  assert.equal(json("job1", "TASK", big, "COMPLETED"), encodeMessage(["TASK", big, "COMPLETED"]));
  assert.equal(json("job1", "TASK", "t", "COMPLETED"), '{"command": "TASK", "task_id": "t", "task_state": "COMPLETED"}');
});

test("the channel id and the TASK state come back as strings on either path", () => {
  const fast = parse("job-1", "TASK", "t1", "COMPLETED");
  const slow = parse("jöb-1", "TASK", "t\"1", "COMPLETED");
  assert.deepEqual(fast, { kind: "message", channel: "job-1", command: "TASK", json: '{"command": "TASK", "task_id": "t1", "task_state": "COMPLETED"}', taskState: "COMPLETED" });
  assert.equal(slow.kind === "message" && slow.channel, "jöb-1");
  assert.equal(slow.kind === "message" && slow.taskState, "COMPLETED");
  assert.equal(parse("0", "exit").kind, "exit");
  assert.equal(parse("0", "exit", "x", "y").kind, "exit");
});
