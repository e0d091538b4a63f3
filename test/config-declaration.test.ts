// The one declaration of the config keys: README's table follows from it, and a reload
// keeps exactly the keys declared "restart".
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { combine, DECLARATION, DEFAULTS, documentationTable, KEYS, validateConfig, valueAt } from "../src/config.ts";
import { ROOT } from "./helpers/monitor-process.ts";

test("README's configuration table is the one generated from the declaration", () => {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const block = readme.match(/<!-- config-table[^>]*-->\n([\s\S]*?)<!-- \/config-table -->/);
  assert.ok(block, "README.md has no <!-- config-table --> block");
  assert.equal(block[1].trim(), documentationTable(), "README's table is out of date; replace it with documentationTable() from src/config.ts");
});

test("every declared key has its default in DEFAULTS, a check that accepts it, and a reload rule", () => {
  assert.ok(KEYS.size >= 30);
  for (const [path, key] of KEYS) {
    assert.deepEqual(valueAt(DEFAULTS, path), key.default, path);
    assert.ok(key.reload === "live" || key.reload === "restart", path);
    if (key.default !== null) assert.ok(key.check(key.default).ok, `${path}: its own default fails its check`);
    assert.ok(key.doc.length > 0, `${path} has no documentation line`);
  }
  assert.equal(DECLARATION.retention.idle_ttl.reload, "live");
  assert.equal(DECLARATION.websocket_uri.reload, "restart");
});

test("combine takes each key from the config its rule picks, and keeps the result frozen", () => {
  const a = DEFAULTS;
  const b = validateConfig({ websocket_uri: ["::1", 1], retention: { idle_ttl: 7 } }, null).config;
  const merged = combine(a, b, (_path, key) => (key.reload === "live" ? "b" : "a"));
  assert.deepEqual(merged.websocket_uri, a.websocket_uri);
  assert.equal(merged.retention.idle_ttl, 7);
  assert.ok(Object.isFrozen(merged.retention));
});
