// access.trusted_proxies: the client address behind a reverse proxy comes from the header
// the proxy appends to (X-Forwarded-For or Forwarded), the rightmost entry that is not a
// trusted proxy itself; from any other peer the headers mean nothing. The nginx recipe is
// tested for real in test/reverse-proxy.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { clientAddress, normalizeAddress, TrustedProxies } from "../src/client-address.ts";
import { validateConfig } from "../src/config.ts";
import { upgradeOutcome } from "./helpers/browser.ts";
import { monitor } from "./helpers/monitor-process.ts";

const trusted = new TrustedProxies(["127.0.0.1", "10.0.0.0/8", "fd00::/8"]);
const xff = (peer: string, value?: string) => clientAddress(peer, value, "X-Forwarded-For", trusted);

test("from a trusted proxy the rightmost X-Forwarded-For entry that is not a trusted proxy is the client", () => {
  assert.equal(xff("127.0.0.1", "198.51.100.7"), "198.51.100.7");
  // What the client wrote itself is to the left of what the proxy appended: ignored.
  assert.equal(xff("127.0.0.1", "6.6.6.6, 198.51.100.7"), "198.51.100.7");
  // A chain of trusted proxies is walked through.
  assert.equal(xff("127.0.0.1", "198.51.100.7, 10.1.2.3"), "198.51.100.7");
  assert.equal(xff("10.9.9.9", "2001:db8::5,fd12::1"), "2001:db8::5");
  // Every hop trusted: the farthest one.
  assert.equal(xff("127.0.0.1", "10.0.0.1, 10.0.0.2"), "10.0.0.1");
  // No header: the proxy itself.
  assert.equal(xff("127.0.0.1", undefined), "127.0.0.1");
  assert.equal(xff("127.0.0.1", ""), "127.0.0.1");
});

test("a peer that is not a trusted proxy is its own address, whatever headers it sends", () => {
  assert.equal(xff("203.0.113.5", "198.51.100.7"), "203.0.113.5");
  assert.equal(clientAddress("203.0.113.5", "for=198.51.100.7", "Forwarded", trusted), "203.0.113.5");
  assert.equal(new TrustedProxies([]).has("127.0.0.1"), false);
  assert.equal(clientAddress("127.0.0.1", "198.51.100.7", "X-Forwarded-For", new TrustedProxies([])), "127.0.0.1");
});

test("addresses with ports, brackets, IPv4-mapped IPv6 and zone ids are read as their address", () => {
  assert.equal(xff("127.0.0.1", "198.51.100.7:1234"), "198.51.100.7");
  assert.equal(xff("127.0.0.1", "[2001:db8::1]:4711"), "2001:db8::1");
  assert.equal(xff("127.0.0.1", "::ffff:198.51.100.7"), "198.51.100.7");
  assert.equal(xff("::ffff:127.0.0.1", "198.51.100.7"), "198.51.100.7", "an IPv4-mapped peer matches its IPv4 entry");
  assert.equal(xff("::ffff:10.2.3.4", "::ffff:10.0.0.1, 2001:db8::9"), "2001:db8::9");
  assert.equal(normalizeAddress("::ffff:192.0.2.1"), "192.0.2.1");
  assert.equal(normalizeAddress("fe80::1%eth0"), "fe80::1");
  assert.equal(normalizeAddress("2001:DB8::1"), "2001:db8::1");
});

test("an entry that is not an address stops the walk at the proxy that passed it on", () => {
  assert.equal(xff("127.0.0.1", "unknown"), "127.0.0.1");
  assert.equal(xff("127.0.0.1", "garbage, 198.51.100.7"), "198.51.100.7");
  assert.equal(xff("127.0.0.1", "198.51.100.7, garbage"), "127.0.0.1");
  assert.equal(xff("127.0.0.1", "198.51.100.7, garbage, 10.0.0.3"), "10.0.0.3");
  assert.equal(xff("127.0.0.1", "x".repeat(10_000)), "127.0.0.1");
});

test("Forwarded (RFC 7239): the for= parameters, quoted or not, in any case, and only when configured", () => {
  const fwd = (value: string) => clientAddress("127.0.0.1", value, "Forwarded", trusted);
  assert.equal(fwd("for=192.0.2.60;proto=http;by=203.0.113.43"), "192.0.2.60");
  assert.equal(fwd('for=192.0.2.60, For="[2001:db8:cafe::17]:4711"'), "2001:db8:cafe::17");
  assert.equal(fwd('for=198.51.100.1, for="10.0.0.7"'), "198.51.100.1");
  assert.equal(fwd('proto=https;FOR="192.0.2.9:80"'), "192.0.2.9");
  assert.equal(fwd('for="_hidden"'), "127.0.0.1");
  assert.equal(fwd("by=10.0.0.1"), "127.0.0.1");
});

test("access.trusted_proxies takes IPv4 and IPv6 addresses and CIDRs and rejects anything else", () => {
  const ok = validateConfig({ access: { trusted_proxies: ["127.0.0.1", "::1", "10.0.0.0/8", "2001:db8::/32", "::ffff:192.168.0.0/112"] } }, null);
  assert.equal(ok.config.access.trusted_proxies.length, 5);
  for (const bad of ["10.0.0.0/33", "2001:db8::/129", "localhost", "10.0.0.1/", "/8", "10.0.0.0/8/8", "1.2.3.4.5"]) {
    assert.throws(() => validateConfig({ access: { trusted_proxies: [bad] } }, null), /access\.trusted_proxies/, bad);
  }
  const mapped = new TrustedProxies(["::ffff:192.168.0.0/112"]);
  assert.equal(mapped.has("192.168.3.4"), true);
  assert.equal(new TrustedProxies(["192.168.0.0/16"]).has("::ffff:192.168.3.4"), true);
  assert.throws(() => validateConfig({ access: { forwarded_header: "X-Real-IP" } }, null), /access\.forwarded_header/);
});

test("end to end: a trusted peer's X-Forwarded-For names the client in the log and in the per-address limit; a direct client cannot spoof it", async (t) => {
  const m = await monitor(t, {
    extraYaml: 'access:\n  trusted_proxies: ["127.0.0.1"]\n  max_connections_per_ip: 1\n',
  });
  const url = `ws://127.0.0.1:${m.wsPort}/`;
  // Through the "proxy" (127.0.0.1 is trusted): two users, one slot each.
  const a = await upgradeOutcome(url, { localAddress: "127.0.0.1", headers: { "X-Forwarded-For": "198.51.100.1" } });
  t.after(() => a.browser.close());
  const b = await upgradeOutcome(url, { localAddress: "127.0.0.1", headers: { "X-Forwarded-For": "198.51.100.2" } });
  t.after(() => b.browser.close());
  assert.deepEqual([a.status, b.status], ["open", "open"], "two users behind one proxy have separate budgets");
  const a2 = await upgradeOutcome(url, { localAddress: "127.0.0.1", headers: { "X-Forwarded-For": "198.51.100.1" } });
  t.after(() => a2.browser.close());
  assert.equal(a2.status, 429, "the same user's second connection is over its own budget");
  await m.waitFor(/client #\d+ connected from 198\.51\.100\.1 /);
  await m.waitFor(/client #\d+ connected from 198\.51\.100\.2 /);
  await m.waitFor(/refused WebSocket upgrade from 198\.51\.100\.1: too many connections from this address/);

  // A direct client (127.0.0.5 is not trusted) is itself, whatever it claims.
  const direct = await upgradeOutcome(url, {
    localAddress: "127.0.0.5",
    headers: { "X-Forwarded-For": "198.51.100.3", Forwarded: "for=198.51.100.4" },
  });
  t.after(() => direct.browser.close());
  assert.equal(direct.status, "open");
  await m.waitFor(/client #\d+ connected from 127\.0\.0\.5 /);
  const again = await upgradeOutcome(url, { localAddress: "127.0.0.5", headers: { "X-Forwarded-For": "198.51.100.99" } });
  t.after(() => again.browser.close());
  assert.equal(again.status, 429, "a new spoofed header does not buy a direct client a new budget");
  // The refusal's line is the marker: whatever was logged about these clients is written by then.
  await m.waitFor(/refused connection from 127\.0\.0\.5: too many connections from this address/);
  assert.doesNotMatch(m.output(), /198\.51\.100\.(3|4|99)/);
});
