// Admission in isolation (an injected clock and open-files limit): seats from accept, caps,
// per-address counts (direct peers at accept, proxied clients at the upgrade), the token
// bucket, and the order in which refusals are decided.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Admission, refusalResponse, type Seat } from "../src/admission.ts";
import { descriptorCap } from "../src/descriptors.ts";
import { DEFAULTS } from "../src/config.ts";

const access = (over: Partial<typeof DEFAULTS.access>) => ({ ...DEFAULTS.access, ...over });
const plain = { origin: undefined, forwarded: undefined };

function seat(a: Admission, peer: string): Seat {
  const s = a.accept(peer, false);
  assert.equal(typeof s, "object", `accept(${peer}) refused: ${String(s)}`);
  return s as Seat;
}

test("draining refuses first; then the overall cap and the per-address cap at accept, origin and rate at the upgrade", () => {
  let now = 0;
  const a = new Admission(
    access({ allowed_origins: ["https://ok"], max_connections: 2, max_connections_per_ip: 1, upgrades_per_second_per_ip: 1, upgrade_burst: 1 }),
    65536,
    () => now,
  );
  assert.equal(a.accept("1.1.1.1", true), "draining");
  const one = seat(a, "1.1.1.1");
  assert.deepEqual(a.upgrade(one, { origin: "https://evil", forwarded: undefined }, false), { refusal: "origin", address: "1.1.1.1" });
  assert.deepEqual(a.upgrade(one, { origin: undefined, forwarded: undefined }, false), { address: "1.1.1.1" }, "no Origin: not a browser, allowed");
  assert.equal(a.accept("1.1.1.1", false), "per_ip", "counted from accept, before any upgrade");
  const two = seat(a, "2.2.2.2");
  assert.equal(a.accept("3.3.3.3", false), "capacity");
  a.release(one);
  const again = seat(a, "1.1.1.1");
  assert.deepEqual(a.upgrade(again, { origin: "https://ok", forwarded: undefined }, false), { refusal: "rate", address: "1.1.1.1" }, "the bucket of 1 was spent");
  now += 1000;
  assert.deepEqual(a.upgrade(again, { origin: "https://ok", forwarded: undefined }, false), { address: "1.1.1.1" }, "a second later the bucket has a token again");
  a.release(two);
  assert.equal(a.connections, 1);
  assert.deepEqual(a.refused, { draining: 1, origin: 1, per_ip: 1, capacity: 1, rate: 1 });
});

test("behind a trusted proxy the per-address cap applies to the forwarded client, at the upgrade", () => {
  const a = new Admission(access({ trusted_proxies: ["10.0.0.1"], max_connections_per_ip: 1 }), 65536);
  const req = (forwarded: string) => ({ origin: undefined, forwarded });
  const s1 = seat(a, "::ffff:10.0.0.1");
  const s2 = seat(a, "10.0.0.1");
  const s3 = seat(a, "10.0.0.1");
  assert.deepEqual(a.upgrade(s1, req("198.51.100.1"), false), { address: "198.51.100.1" });
  assert.deepEqual(a.upgrade(s2, req("198.51.100.2"), false), { address: "198.51.100.2" });
  assert.deepEqual(a.upgrade(s3, req("198.51.100.1"), false), { refusal: "per_ip", address: "198.51.100.1" });
  a.release(s1);
  a.release(s3);
  const s4 = seat(a, "10.0.0.1");
  assert.deepEqual(a.upgrade(s4, req("198.51.100.1"), false), { address: "198.51.100.1" }, "released with its connection");
});

test("the default cap leaves a reserve below the open-files limit, and caps a configured value above it", () => {
  assert.equal(descriptorCap(1024), 896);
  assert.equal(descriptorCap(256), 128);
  assert.equal(descriptorCap(100), 50);
  assert.equal(new Admission(access({}), 1024).maxConnections, 896);
  assert.equal(new Admission(access({ max_connections: 100 }), 1024).maxConnections, 100);
  assert.equal(new Admission(access({ max_connections: 5000 }), 1024).maxConnections, 896);
  const unknown = new Admission(access({}), null);
  assert.deepEqual(unknown.fdLimit, { value: 1024, known: false });
  assert.equal(unknown.maxConnections, 896);
});

test("sweep forgets full buckets only", () => {
  let now = 0;
  const a = new Admission(access({ upgrades_per_second_per_ip: 1, upgrade_burst: 2 }), 65536, () => now);
  const s = seat(a, "1.1.1.1");
  a.upgrade(s, plain, false);
  a.upgrade(s, plain, false);
  a.sweep();
  assert.equal("refusal" in a.upgrade(s, plain, false), true, "an empty bucket survives the sweep");
  now += 5000;
  a.sweep();
  assert.equal("refusal" in a.upgrade(s, plain, false), false);
});

test("a refusal is a complete HTTP response with its status and a reason naming the config key", () => {
  const r = refusalResponse("per_ip");
  assert.match(r, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
  const [head, body] = r.split("\r\n\r\n");
  assert.match(head, new RegExp(`Content-Length: ${Buffer.byteLength(body)}`));
  assert.match(body, /access\.max_connections_per_ip/);
});
