// The first-message protocol in isolation: legacy channel ids, resume requests, and every
// refusal with its close code.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chooseProtocol, gapNotice, readFirstMessage, RESUME_PROTOCOL, withOffset } from "../src/subscription.ts";

const read = (text: string, resumable = false, max = 16) => readFirstMessage(Buffer.from(text), false, resumable, max);

test("a legacy first message is the channel id, even when it looks like JSON", () => {
  assert.deepEqual(read("student_1"), { ok: true, channel: "student_1", after: -1 });
  assert.deepEqual(read('{"channel": "x"}', false, 64), { ok: true, channel: '{"channel": "x"}', after: -1 });
});

test("a resumable client may resume after an offset, or subscribe by id", () => {
  assert.deepEqual(read('{"channel": "job", "after": 3}', true), { ok: true, channel: "job", after: 3 });
  assert.deepEqual(read('{"channel": "job"}', true), { ok: true, channel: "job", after: -1 });
  assert.deepEqual(read("job", true), { ok: true, channel: "job", after: -1 });
});

test("binary, empty, too long and malformed resume requests are refused with their close codes", () => {
  const refused = (r: ReturnType<typeof read>) => (r.ok ? null : r.close.code);
  assert.equal(refused(readFirstMessage(Buffer.from("job"), true, false, 16)), 1003);
  assert.equal(refused(read("")), 1008);
  assert.equal(refused(read("x".repeat(17))), 1008);
  assert.equal(refused(read("é".repeat(9))), 1008, "the limit counts bytes, not characters");
  for (const bad of ["{", '{"after": 1}', '{"channel": 5}', '{"channel": "j", "after": -2}', '{"channel": "j", "after": 1.5}', '{"channel": "j", "after": "1"}', "[]", "null"]) {
    assert.equal(refused(read(bad, true)), bad.startsWith("{") ? 1008 : null, bad);
  }
});

test("the resume subprotocol is chosen only when offered and enabled", () => {
  assert.equal(chooseProtocol(new Set([RESUME_PROTOCOL, "other"]), true), RESUME_PROTOCOL);
  assert.equal(chooseProtocol(new Set([RESUME_PROTOCOL]), false), false);
  assert.equal(chooseProtocol(new Set(["other"]), true), false);
});

test("resumable wrapping: offset and message, and the gap notice", () => {
  assert.equal(withOffset('{"command": "STARTED"}', 7), '{"offset": 7, "message": {"command": "STARTED"}}');
  assert.equal(gapNotice(4), '{"gap": {"first_offset": 4}}');
});
