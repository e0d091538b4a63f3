// Admission: who may open a WebSocket. The Origin allowlist, the connection caps (overall
// and per address) and the per-address upgrade rate, with the HTTP answer for each refusal.
// Knows addresses and counts, nothing of WebSockets or channels.
import type { Config } from "./config.ts";

export type AccessSettings = Config["access"];

export type Refusal = "origin" | "capacity" | "per_ip" | "rate" | "draining";

const REFUSALS: Readonly<Record<Refusal, readonly [status: string, text: string]>> = Object.freeze({
  origin: ["403 Forbidden", "origin not allowed (access.allowed_origins)"],
  capacity: ["503 Service Unavailable", "connection limit reached (access.max_connections)"],
  per_ip: ["429 Too Many Requests", "too many connections from this address (access.max_connections_per_ip)"],
  rate: ["429 Too Many Requests", "too many new connections from this address (access.upgrades_per_second_per_ip)"],
  draining: ["503 Service Unavailable", "monitor shutting down"],
});

export class Admission {
  private settings: AccessSettings;
  private readonly perIp = new Map<string, number>();
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private open = 0;
  private readonly now: () => number;
  readonly refused: Record<Refusal, number> = { origin: 0, capacity: 0, per_ip: 0, rate: 0, draining: 0 };

  constructor(settings: AccessSettings, now: () => number = () => performance.now()) {
    this.settings = settings;
    this.now = now;
  }

  setSettings(settings: AccessSettings): void {
    this.settings = settings;
  }

  /** Decides on a new connection from `ip`; a refusal is counted. */
  check(ip: string, origin: string | undefined, draining: boolean): Refusal | null {
    const refusal = this.decide(ip, origin, draining);
    if (refusal !== null) this.refused[refusal]++;
    return refusal;
  }

  opened(ip: string): void {
    this.open++;
    this.perIp.set(ip, (this.perIp.get(ip) ?? 0) + 1);
  }

  closed(ip: string): void {
    this.open--;
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

  private decide(ip: string, origin: string | undefined, draining: boolean): Refusal | null {
    const s = this.settings;
    if (draining) return "draining";
    if (s.allowed_origins.length > 0 && origin !== undefined && !s.allowed_origins.includes(origin)) return "origin";
    if (s.max_connections > 0 && this.open >= s.max_connections) return "capacity";
    if (s.max_connections_per_ip > 0 && (this.perIp.get(ip) ?? 0) >= s.max_connections_per_ip) return "per_ip";
    if (s.upgrades_per_second_per_ip > 0 && !this.takeToken(ip)) return "rate";
    return null;
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

/** The raw HTTP response that refuses an upgrade (the socket is then closed). */
export function refusalResponse(refusal: Refusal): string {
  const [status, text] = REFUSALS[refusal];
  return `HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${text.length + 1}\r\n\r\n${text}\n`;
}

/** What a refusal means, for the log. */
export function refusalText(refusal: Refusal): string {
  return REFUSALS[refusal][1];
}
