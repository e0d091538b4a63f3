// Keepalive: every connection is pinged once an interval, and one that has not answered the
// previous ping by then is given up. Pings are spread over the interval: each connection has
// its own due time and a tick every 1/30 of the interval pings those that are due; pinging
// 10,000 tabs in one go would stall the relay for a noticeable moment every interval.

export interface Pingable {
  /** Answered the last ping (set again by the pong handler). */
  alive: boolean;
  nextPing: number;
}

const TICKS_PER_INTERVAL = 30;

export class Keepalive<T extends Pingable> {
  private readonly targets: Iterable<T>;
  private readonly ping: (target: T) => void;
  private readonly timedOut: (target: T) => void;
  private intervalMs: number;
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(targets: Iterable<T>, intervalSeconds: number, ping: (target: T) => void, timedOut: (target: T) => void) {
    this.targets = targets;
    this.intervalMs = intervalSeconds * 1000;
    this.ping = ping;
    this.timedOut = timedOut;
  }

  start(): void {
    this.stop();
    this.timer = setInterval(() => this.tick(performance.now()), this.intervalMs / TICKS_PER_INTERVAL);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  setInterval(seconds: number): void {
    if (seconds * 1000 === this.intervalMs) return;
    this.intervalMs = seconds * 1000;
    if (this.timer !== null) this.start();
  }

  /** Sets a new connection's first ping: somewhere in the second half of an interval. */
  admit(target: T, now = performance.now()): void {
    target.alive = true;
    target.nextPing = now + this.intervalMs * (0.5 + Math.random() / 2);
  }

  private tick(now: number): void {
    for (const target of this.targets) {
      if (target.nextPing > now) continue;
      target.nextPing = now + this.intervalMs;
      if (!target.alive) {
        this.timedOut(target);
        continue;
      }
      target.alive = false;
      this.ping(target);
    }
  }
}
