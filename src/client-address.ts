// Who a connection is from: the TCP peer, unless the peer is a trusted reverse proxy. Then it
// is the address that proxy reports in X-Forwarded-For or Forwarded, read from the right:
// every proxy appends the address it got the request from, so the rightmost entry that is
// not itself a trusted proxy is the client, and everything to the left of it is whatever the
// client chose to send. From any other peer the headers mean nothing.
import { BlockList, isIP } from "node:net";

export const FORWARDED_HEADERS = ["X-Forwarded-For", "Forwarded"] as const;
export type ForwardedHeader = (typeof FORWARDED_HEADERS)[number];

interface AddressPattern {
  address: string;
  prefix: number;
  family: "ipv4" | "ipv6";
}

/** An address ("10.0.0.1", "::1") or a CIDR ("10.0.0.0/8", "2001:db8::/32"); null if neither. */
export function parseAddressPattern(text: string): AddressPattern | null {
  const slash = text.indexOf("/");
  const address = slash < 0 ? text : text.slice(0, slash);
  const version = isIP(address);
  if (version === 0) return null;
  const bits = version === 4 ? 32 : 128;
  let prefix = bits;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > bits) return null;
    prefix = Number(p);
  }
  return { address, prefix, family: version === 4 ? "ipv4" : "ipv6" };
}

/** An address as logs and per-address limits key it: IPv4-mapped IPv6 as IPv4, no zone, lower case. */
export function normalizeAddress(address: string): string {
  let a = address.toLowerCase();
  const zone = a.indexOf("%");
  if (zone >= 0) a = a.slice(0, zone);
  if (a.startsWith("::ffff:") && isIP(a.slice(7)) === 4) a = a.slice(7);
  return a;
}

export class TrustedProxies {
  private readonly list = new BlockList();
  readonly size: number;

  constructor(entries: readonly string[]) {
    for (const entry of entries) {
      const p = parseAddressPattern(entry);
      // The config check has refused anything else.
      if (p !== null) this.list.addSubnet(p.address, p.prefix, p.family);
    }
    this.size = entries.length;
  }

  /** BlockList matches an IPv4-mapped IPv6 address against IPv4 entries and the other way round. */
  has(address: string): boolean {
    if (this.size === 0) return false;
    const version = isIP(address);
    return version !== 0 && this.list.check(address, version === 4 ? "ipv4" : "ipv6");
  }
}

/** The client behind `peer`, given the value of the configured header (node joins repeated lines with ", "). */
export function clientAddress(peer: string, headerValue: string | undefined, header: ForwardedHeader, trusted: TrustedProxies): string {
  let client = normalizeAddress(peer);
  if (headerValue === undefined || headerValue === "" || !trusted.has(client)) return client;
  const hops = header === "Forwarded" ? forwardedFor(headerValue) : headerValue.split(",");
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hopAddress(hops[i]);
    // Garbage (or "unknown", or an obfuscated name): the last trusted hop passed it on, and
    // that hop is as far as anything can be known.
    if (hop === null) return client;
    client = hop;
    if (!trusted.has(hop)) return hop;
  }
  return client;
}

/** The for= values of a Forwarded header, in order (elements without one are left out). */
function forwardedFor(value: string): string[] {
  const out: string[] = [];
  for (const element of value.split(",")) {
    for (const pair of element.split(";")) {
      const eq = pair.indexOf("=");
      if (eq >= 0 && pair.slice(0, eq).trim().toLowerCase() === "for") out.push(pair.slice(eq + 1));
    }
  }
  return out;
}

/** One entry: "1.2.3.4", "1.2.3.4:80", "2001:db8::1", "[2001:db8::1]:80", optionally quoted. */
function hopAddress(entry: string): string | null {
  let a = entry.trim();
  if (a.length > 2 && a.startsWith('"') && a.endsWith('"')) a = a.slice(1, -1);
  if (a.startsWith("[")) {
    const end = a.indexOf("]");
    if (end < 0 || (end + 1 < a.length && !/^:\d{1,5}$/.test(a.slice(end + 1)))) return null;
    a = a.slice(1, end);
  } else if (/^[\d.]+:\d{1,5}$/.test(a)) {
    a = a.slice(0, a.indexOf(":"));
  }
  return isIP(a) === 0 ? null : normalizeAddress(a);
}
