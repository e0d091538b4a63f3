// Admission: who may hold a connection, and who may open a WebSocket. Every accepted TCP
// connection takes a seat from accept on (also one that never finishes its handshake), so
// the connection caps bound the sockets, not just the WebSockets; the Origin allowlist and
// the per-address upgrade rate apply at the upgrade. The client address is the TCP peer, or
// what a trusted proxy reports (client-address.ts): a proxied connection is counted per
// address once its upgrade request names the client. Knows addresses and counts, nothing of
// WebSockets or channels.
import { clientAddress, normalizeAddress, TrustedProxies } from "./client-address.ts";
import type { Config } from "./config.ts";
import { descriptorCap, FD_LIMIT_FALLBACK, openFilesLimit } from "./descriptors.ts";

export type AccessSettings = Config["access"];

export type Refusal = "origin" | "capacity" | "per_ip" | "rate" | "draining";

const REFUSALS: Readonly<Record<Refusal, readonly [status: string, text: string]>> = Object.freeze({
  origin: ["403 Forbidden", "origin not allowed (access.allowed_origins)"],
  capacity: ["503 Service Unavailable", "connection limit reached (access.max_connections)"],
  per_ip: ["429 Too Many Requests", "too many connections from this address (access.max_connections_per_ip)"],
  rate: ["429 Too Many Requests", "too many new connections from this address (access.upgrades_per_second_per_ip)"],
  draining: ["503 Service Unavailable", "monitor shutting down"],
});

/** A connection's place in the counts, from accept until it closes. */
export interface Seat {
  readonly peer: string;
  /** The peer is a trusted proxy: the client address comes with the upgrade request. */
  readonly proxied: boolean;
  /** The address counted against max_connections_per_ip for this connection, once known. */
  address: string | null;
}

export interface UpgradeRequest {
  origin: string | undefined;
  /** The value of access.forwarded_header, if the request has it. */
  forwarded: string | undefined;
}

export class Admission {
  private settings: AccessSettings;
  private trusted: TrustedProxies;
  private readonly fdCap: number;
  private readonly perIp = new Map<string, number>();
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private open = 0;
  private readonly now: () => number;
  readonly refused: Record<Refusal, number> = { origin: 0, capacity: 0, per_ip: 0, rate: 0, draining: 0 };
  /** The open-files limit the cap was derived from, and whether it was read or assumed. */
  readonly fdLimit: { value: number; known: boolean };

  constructor(settings: AccessSettings, fdLimit: number | null = openFilesLimit(), now: () => number = () => performance.now()) {
    this.settings = settings;
    this.trusted = new TrustedProxies(settings.trusted_proxies);
    this.fdLimit = { value: fdLimit ?? FD_LIMIT_FALLBACK, known: fdLimit !== null };
    this.fdCap = descriptorCap(this.fdLimit.value);
    this.now = now;
  }

  setSettings(settings: AccessSettings): void {
    if (settings.trusted_proxies !== this.settings.trusted_proxies) this.trusted = new TrustedProxies(settings.trusted_proxies);
    this.settings = settings;
  }

  /** The connection cap in force: access.max_connections, never above what the open-files limit allows. */
  get maxConnections(): number {
    const configured = this.settings.max_connections;
    return configured === 0 ? this.fdCap : Math.min(configured, this.fdCap);
  }

  /** Connections holding a seat. */
  get connections(): number {
    return this.open;
  }

  /** A TCP connection from `peer` was accepted: a seat, or the refusal (counted). */
  accept(peer: string, draining: boolean): Seat | Refusal {
    const s = this.settings;
    const ip = normalizeAddress(peer);
    const proxied = this.trusted.has(ip);
    let refusal: Refusal | null = null;
    if (draining) refusal = "draining";
    else if (this.open >= this.maxConnections) refusal = "capacity";
    else if (!proxied && s.max_connections_per_ip > 0 && (this.perIp.get(ip) ?? 0) >= s.max_connections_per_ip) refusal = "per_ip";
    if (refusal !== null) {
      this.refused[refusal]++;
      return refusal;
    }
    this.open++;
    const seat: Seat = { peer: ip, proxied, address: null };
    if (!proxied) this.count(seat, ip);
    return seat;
  }

  /** The upgrade request on a seated connection: the client's address, or the refusal (counted). */
  upgrade(seat: Seat, request: UpgradeRequest, draining: boolean): { address: string } | { refusal: Refusal; address: string } {
    const s = this.settings;
    const address = seat.proxied ? clientAddress(seat.peer, request.forwarded, s.forwarded_header, this.trusted) : seat.peer;
    const refuse = (refusal: Refusal) => {
      this.refused[refusal]++;
      return { refusal, address };
    };
    if (draining) return refuse("draining");
    if (s.allowed_origins.length > 0 && request.origin !== undefined && !s.allowed_origins.includes(request.origin)) return refuse("origin");
    if (seat.address === null) {
      if (s.max_connections_per_ip > 0 && (this.perIp.get(address) ?? 0) >= s.max_connections_per_ip) return refuse("per_ip");
      this.count(seat, address);
    }
    if (s.upgrades_per_second_per_ip > 0 && !this.takeToken(address)) return refuse("rate");
    return { address };
  }

  /** The connection has closed. */
  release(seat: Seat): void {
    this.open--;
    const ip = seat.address;
    if (ip === null) return;
    const n = (this.perIp.get(ip) ?? 1) - 1;
    if (n <= 0) this.perIp.delete(ip);
    else this.perIp.set(ip, n);
  }

  /** Forgets the rate buckets that have filled up again (they are as good as new). */
  sweep(): void {
    const now = this.now();
    const { upgrades_per_second_per_ip: rate, upgrade_burst: burst } = this.settings;
    for (const [ip, bucket] of this.buckets) {
      if (bucket.tokens + ((now - bucket.at) / 1000) * rate >= burst) this.buckets.delete(ip);
    }
  }

  private count(seat: Seat, address: string): void {
    seat.address = address;
    this.perIp.set(address, (this.perIp.get(address) ?? 0) + 1);
  }

  private takeToken(ip: string): boolean {
    const { upgrades_per_second_per_ip: rate, upgrade_burst: burst } = this.settings;
    const now = this.now();
    let bucket = this.buckets.get(ip);
    if (bucket === undefined) {
      bucket = { tokens: burst, at: now };
      this.buckets.set(ip, bucket);
    }
    bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * rate);
    bucket.at = now;
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }
}

/** The raw HTTP response that refuses a connection or an upgrade (the socket is then closed). */
export function refusalResponse(refusal: Refusal): string {
  const [status, text] = REFUSALS[refusal];
  return `HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${text.length + 1}\r\n\r\n${text}\n`;
}

/** What a refusal means, for the log. */
export function refusalText(refusal: Refusal): string {
  return REFUSALS[refusal][1];
}
