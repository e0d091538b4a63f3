// Admission in isolation (an injected clock): caps, per-address counts, the token bucket,
// and the order in which refusals are decided.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Admission, refusalResponse } from "../src/admission.ts";
import { DEFAULTS } from "../src/config.ts";

const access = (over: Partial<typeof DEFAULTS.access>) => ({ ...DEFAULTS.access, ...over });

test("draining refuses first; then origin, the overall cap, the per-address cap and the rate", () => {
  let now = 0;
  const a = new Admission(access({ allowed_origins: ["https://ok"], max_connections: 2, max_connections_per_ip: 1, upgrades_per_second_per_ip: 1, upgrade_burst: 1 }), () => now);
  assert.equal(a.check("1.1.1.1", "https://ok", true), "draining");
  assert.equal(a.check("1.1.1.1", "https://evil", false), "origin");
  assert.equal(a.check("1.1.1.1", undefined, false), null, "no Origin header: not a browser, allowed");
  a.opened("1.1.1.1");
  assert.equal(a.check("1.1.1.1", "https://ok", false), "per_ip");
  assert.equal(a.check("2.2.2.2", "https://ok", false), null);
  a.opened("2.2.2.2");
  assert.equal(a.check("3.3.3.3", "https://ok", false), "capacity");
  a.closed("1.1.1.1");
  assert.equal(a.check("1.1.1.1", "https://ok", false), "rate", "the bucket of 1 was spent on the first upgrade");
  now += 1000;
  assert.equal(a.check("1.1.1.1", "https://ok", false), null, "a second later the bucket has a token again");
  assert.deepEqual(a.refused, { draining: 1, origin: 1, per_ip: 1, capacity: 1, rate: 1 });
});

test("sweep forgets full buckets only", () => {
  let now = 0;
  const a = new Admission(access({ upgrades_per_second_per_ip: 1, upgrade_burst: 2 }), () => now);
  a.check("1.1.1.1", undefined, false);
  a.check("1.1.1.1", undefined, false);
  a.sweep();
  assert.equal(a.check("1.1.1.1", undefined, false), "rate", "an empty bucket survives the sweep");
  now += 5000;
  a.sweep();
  assert.equal(a.check("1.1.1.1", undefined, false), null);
});

test("a refusal is a complete HTTP response with its status and a reason naming the config key", () => {
  const r = refusalResponse("per_ip");
  assert.match(r, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
  const [head, body] = r.split("\r\n\r\n");
  assert.match(head, new RegExp(`Content-Length: ${Buffer.byteLength(body)}`));
  assert.match(body, /access\.max_connections_per_ip/);
});
