// SIGHUP with a config file that is empty (truncated, or caught half-written) keeps the
// running configuration instead of taking it as "all defaults", which would silently drop
// every configured limit.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { reloadConfig } from "../src/config.ts";
import { upgradeOutcome } from "./helpers/browser.ts";
import { monitor, writeConfig } from "./helpers/monitor-process.ts";

test("reloadConfig refuses an empty, whitespace-only or comment-only file and reads any other", () => {
  for (const text of ["", "   \n\t\n", "# only a comment\n\n"]) {
    const path = writeConfig(text);
    assert.throws(() => reloadConfig(path), (err: Error & { code?: string }) => {
      assert.equal(err.code, "RMON_ERR_CONFIG_EMPTY");
      assert.match(err.message, /is empty/);
      return true;
    }, JSON.stringify(text));
  }
  assert.equal(reloadConfig(writeConfig("access:\n  max_connections: 3\n")).config.access.max_connections, 3);
});

test("SIGHUP with an emptied config file keeps the running limits and says why", async (t) => {
  const m = await monitor(t, { extraYaml: "access:\n  max_connections: 1\n" });
  const original = readFileSync(m.configPath, "utf8");
  const first = await upgradeOutcome(m.url());
  t.after(() => first.browser.close());
  assert.equal(first.status, "open");
  for (const text of ["", " \n\n  \n"]) {
    writeFileSync(m.configPath, text);
    assert.match(await m.reload(), /configuration not reloaded, keeping the running one: config file \S+ is empty/);
    const second = await upgradeOutcome(m.url());
    t.after(() => second.browser.close());
    assert.equal(second.status, 503, "max_connections: 1 still applies");
  }
  // A real edit is applied again.
  writeFileSync(m.configPath, original.replace("max_connections: 1", "max_connections: 2"));
  assert.match(await m.reload(), /configuration reloaded: access\.max_connections: 1 -> 2/);
});
