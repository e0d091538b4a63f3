// A channel's history kept as bytes in pooled blocks (src/history.ts): every message comes back
// exactly as it went in, whatever its characters and size, and blocks go back to the pool.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BLOCK, BlockPool, History } from "../src/history.ts";

const filled = (h: History) => h.toArray();

test("messages come back exactly: ASCII, latin1, other scripts, emoji, a lone surrogate, empty", () => {
  const pool = new BlockPool();
  const h = new History(pool);
  const messages = [
    '{"command": "TASK", "task_id": "A001", "task_state": "COMPLETED"}',
    '{"command": "TASK", "task_id": "café", "task_state": "FAILED"}',
    '{"command": "TASK", "task_id": "úloha-č.1", "task_state": "COMPLETED"}',
    '{"command": "TASK", "task_id": "测试 🚀", "task_state": "SKIPPED"}',
    '{"command": "TASK", "task_id": "\ud800 alone", "task_state": "COMPLETED"}',
    "",
    '{"command": "FINISHED"}',
  ];
  for (const m of messages) h.push(m);
  assert.equal(h.length, messages.length);
  assert.deepEqual(filled(h), messages);
  messages.forEach((m, i) => assert.equal(h.at(i), m));
});

test("an empty message first, and only empty messages, come back too", () => {
  const pool = new BlockPool();
  const h = new History(pool);
  h.push("");
  h.push("");
  assert.deepEqual(h.toArray(), ["", ""]);
  h.push('{"command": "FINISHED"}');
  assert.equal(h.shift(), 0);
  assert.deepEqual(h.toArray(), ["", '{"command": "FINISHED"}']);
  assert.equal(pool.size > 0, true);
});

test("messages larger than a block, and messages that straddle blocks, come back whole", () => {
  const pool = new BlockPool();
  const h = new History(pool);
  const messages: string[] = [];
  for (let i = 0; i < 40; i++) {
    // Lengths that put message ends on every side of the block boundaries.
    const n = [1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7, 90][i % 6] + i;
    messages.push(i % 5 === 4 ? "ž".repeat(n) : String.fromCharCode(97 + (i % 26)).repeat(n));
  }
  // Larger than the pool's scratch buffer (64 KB): encoded in a buffer of their own.
  messages.push("q".repeat(100_000), "ě".repeat(40_000), '{"command": "FINISHED"}');
  for (const m of messages) h.push(m);
  assert.deepEqual(filled(h), messages);
});

test("shift drops the oldest, gives its JSON length, and hands emptied blocks back to the pool", () => {
  const pool = new BlockPool();
  const h = new History(pool);
  const other = new History(pool);
  // ~1.6 MB: two of the pool's 1 MB buffers.
  const messages = Array.from({ length: 200 }, (_, i) => (i % 3 === 0 ? `{"n": "${i} ✓"}` : `{"command": "TASK", "n": ${i}}`).padEnd(i % 3 === 0 ? 4000 : 8000 + (i % 50), " "));
  for (const m of messages) h.push(m);
  for (let i = 0; i < 150; i++) assert.equal(h.shift(), messages[i].length, `message ${i}`);
  assert.equal(h.length, 50);
  assert.deepEqual(filled(h), messages.slice(150));
  // The blocks the dropped messages took are reused: a second history as large as what was
  // dropped fits in the buffers the pool has, without another.
  const size = pool.size;
  assert.equal(size, 2 * 1024 * 1024);
  for (const m of messages.slice(0, 150)) other.push(m);
  assert.equal(pool.size, size);
  assert.deepEqual(filled(other), messages.slice(0, 150));
  assert.deepEqual(filled(h), messages.slice(150));
});

test("release gives every block back: histories made and dropped again and again take no more memory", () => {
  const pool = new BlockPool();
  const round = () => {
    const hs = Array.from({ length: 500 }, () => new History(pool));
    for (let m = 0; m < 40; m++) for (const h of hs) h.push(`{"command": "TASK", "task_id": "t${m}", "task_state": "COMPLETED"}`);
    for (const h of hs) assert.equal(h.length, 40);
    for (const h of hs) h.release();
    for (const h of hs) assert.equal(h.length, 0);
  };
  round();
  const size = pool.size;
  for (let i = 0; i < 5; i++) round();
  assert.equal(pool.size, size);
  assert.ok(size > 0);
});

test("many histories written in turns, trimmed and compacted, keep exactly what a plain array would", () => {
  // A fixed pseudo-random script, checked against string arrays.
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  const pool = new BlockPool();
  const hs = Array.from({ length: 30 }, () => new History(pool));
  const model: string[][] = hs.map(() => []);
  for (let step = 0; step < 20_000; step++) {
    const k = rnd(hs.length);
    const op = rnd(100);
    if (op < 70) {
      const len = rnd(8) === 0 ? rnd(3 * BLOCK) : 20 + rnd(120);
      const m = (rnd(10) === 0 ? "ř" : "x").repeat(len) + step;
      hs[k].push(m);
      model[k].push(m);
    } else if (op < 95 && model[k].length > 0) {
      assert.equal(hs[k].shift(), model[k].shift()!.length);
    } else if (op < 98) {
      hs[k].compact();
    } else {
      hs[k].release();
      model[k] = [];
    }
  }
  hs.forEach((h, k) => assert.deepEqual(filled(h), model[k], `history ${k}`));
});
