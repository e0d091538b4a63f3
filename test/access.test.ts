// Access limits on WebSocket upgrades: origins, connection caps, per-address rate. All are
// off by default: a legacy config accepts everyone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { upgradeOutcome } from "./helpers/browser.ts";
import { metric } from "./helpers/http.ts";
import { monitor } from "./helpers/monitor-process.ts";
import { waitUntil } from "./helpers/wait.ts";

const refused = (reason: string) => `recodex_monitor_refused_upgrades_total{reason="${reason}"}`;

test("access.allowed_origins: a foreign Origin gets 403; the allowed origin and a client without Origin connect", async (t) => {
  const m = await monitor(t, {
    extraYaml: 'http:\n  enabled: true\naccess:\n  allowed_origins: ["https://recodex.example"]\n',
  });
  const url = `ws://127.0.0.1:${m.wsPort}/`;
  const evil = await upgradeOutcome(url, { origin: "https://evil.example" });
  t.after(() => evil.browser.close());
  assert.equal(evil.status, 403);
  assert.match(evil.body, /origin not allowed/);

  const good = await upgradeOutcome(url, { origin: "https://recodex.example" });
  t.after(() => good.browser.close());
  assert.equal(good.status, "open");
  const none = await upgradeOutcome(url);
  t.after(() => none.browser.close());
  assert.equal(none.status, "open");
  // Origins are compared exactly: another scheme or port is another origin.
  const otherPort = await upgradeOutcome(url, { origin: "https://recodex.example:8443" });
  t.after(() => otherPort.browser.close());
  assert.equal(otherPort.status, 403);

  await m.waitFor(/refused WebSocket upgrade from 127\.0\.0\.1: origin not allowed \(access\.allowed_origins\)/);
  assert.equal(await metric(m.wsPort, refused("origin")), 2);
  assert.equal(await metric(m.wsPort, "recodex_monitor_connections"), 2);
});

test("access.max_connections: 2 refuses the third connection with 503 and admits again once one has left", async (t) => {
  const m = await monitor(t, { extraYaml: "http:\n  enabled: true\naccess:\n  max_connections: 2\n" });
  const url = `ws://127.0.0.1:${m.wsPort}/`;
  const a = await upgradeOutcome(url);
  const b = await upgradeOutcome(url);
  t.after(() => a.browser.close());
  t.after(() => b.browser.close());
  assert.equal(a.status, "open");
  assert.equal(b.status, "open");
  const c = await upgradeOutcome(url);
  t.after(() => c.browser.close());
  assert.equal(c.status, 503);
  assert.match(c.body, /access\.max_connections/);
  await m.waitFor(/refused WebSocket upgrade from 127\.0\.0\.1: connection limit reached/);
  assert.equal(await metric(m.wsPort, refused("capacity")), 1);

  a.browser.ws.close();
  await a.browser.waitClose();
  await waitUntil(async () => (await metric(m.wsPort, "recodex_monitor_connections")) === 1, "one connection left");
  const d = await upgradeOutcome(url);
  t.after(() => d.browser.close());
  assert.equal(d.status, "open");
});

test("access.max_connections holds under simultaneous upgrades: 10 at once with a limit of 3 open exactly 3", async (t) => {
  const m = await monitor(t, { extraYaml: "access:\n  max_connections: 3\n" });
  const url = `ws://127.0.0.1:${m.wsPort}/`;
  const all = await Promise.all(Array.from({ length: 10 }, () => upgradeOutcome(url)));
  t.after(() => all.forEach((o) => o.browser.close()));
  const statuses = all.map((o) => o.status);
  assert.equal(statuses.filter((s) => s === "open").length, 3, JSON.stringify(statuses));
  assert.equal(statuses.filter((s) => s === 503).length, 7, JSON.stringify(statuses));
});

test("access.max_connections_per_ip: 1 refuses a second connection from 127.0.0.1 with 429; another address connects", async (t) => {
  const m = await monitor(t, { extraYaml: "http:\n  enabled: true\naccess:\n  max_connections_per_ip: 1\n" });
  const url = `ws://127.0.0.1:${m.wsPort}/`;
  const first = await upgradeOutcome(url, { localAddress: "127.0.0.1" });
  t.after(() => first.browser.close());
  assert.equal(first.status, "open");
  const second = await upgradeOutcome(url, { localAddress: "127.0.0.1" });
  t.after(() => second.browser.close());
  assert.equal(second.status, 429);
  assert.match(second.body, /access\.max_connections_per_ip/);
  const elsewhere = await upgradeOutcome(url, { localAddress: "127.0.0.2" });
  t.after(() => elsewhere.browser.close());
  assert.equal(elsewhere.status, "open");
  await m.waitFor(/refused WebSocket upgrade from 127\.0\.0\.1: too many connections from this address/);
  assert.equal(await metric(m.wsPort, refused("per_ip")), 1);

  // The first one leaving frees its address's slot.
  first.browser.ws.close();
  await first.browser.waitClose();
  await waitUntil(async () => (await metric(m.wsPort, "recodex_monitor_connections")) === 1, "one connection left");
  const again = await upgradeOutcome(url, { localAddress: "127.0.0.1" });
  t.after(() => again.browser.close());
  assert.equal(again.status, "open");
});

test("access.upgrades_per_second_per_ip: 0.5 with upgrade_burst: 2 refuses the third quick upgrade with 429, per address", async (t) => {
  const m = await monitor(t, {
    extraYaml: "http:\n  enabled: true\naccess:\n  upgrades_per_second_per_ip: 0.5\n  upgrade_burst: 2\n",
  });
  const url = `ws://127.0.0.1:${m.wsPort}/`;
  const outcomes = [];
  for (let i = 0; i < 3; i++) {
    const o = await upgradeOutcome(url, { localAddress: "127.0.0.1" });
    t.after(() => o.browser.close());
    outcomes.push(o.status);
    if (i === 2) assert.match(o.body, /access\.upgrades_per_second_per_ip/);
  }
  assert.deepEqual(outcomes, ["open", "open", 429]);
  const other = await upgradeOutcome(url, { localAddress: "127.0.0.3" });
  t.after(() => other.browser.close());
  assert.equal(other.status, "open", "another address has its own budget");
  await m.waitFor(/refused WebSocket upgrade from 127\.0\.0\.1: too many new connections from this address/);
  assert.equal(await metric(m.wsPort, refused("rate")), 1);

  // The refill is the behaviour under test: 2.2 s at 0.5 a second is more than one upgrade's worth.
  await sleep(2200);
  const later = await upgradeOutcome(url, { localAddress: "127.0.0.1" });
  t.after(() => later.browser.close());
  assert.equal(later.status, "open", "the budget refills at the configured rate");
});

test("access limits change on SIGHUP: a lowered max_connections applies to the next upgrade, open clients stay", async (t) => {
  const m = await monitor(t);
  const url = `ws://127.0.0.1:${m.wsPort}/`;
  const a = await upgradeOutcome(url);
  t.after(() => a.browser.close());
  assert.equal(a.status, "open");
  m.editConfig((text) => text + "access:\n  max_connections: 1\n");
  assert.match(await m.reload(), /access\.max_connections: 0 -> 1/);
  const b = await upgradeOutcome(url);
  t.after(() => b.browser.close());
  assert.equal(b.status, 503);
  assert.equal(a.browser.closed, null);
});

test("a legacy config sets no access limits: any origin, many connections from one address at once", async (t) => {
  const m = await monitor(t);
  const url = `ws://127.0.0.1:${m.wsPort}/`;
  const all = await Promise.all(
    Array.from({ length: 40 }, (_, i) => upgradeOutcome(url, i % 2 ? { origin: `https://site${i}.example` } : {})),
  );
  t.after(() => all.forEach((o) => o.browser.close()));
  assert.deepEqual(
    all.map((o) => o.status),
    all.map(() => "open"),
  );
  assert.doesNotMatch(m.output(), /refused WebSocket upgrade/);
});
