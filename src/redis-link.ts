// The Redis store's connections, through node-redis (@redis/client): one for commands (the
// scripts, in the order they are given) and one that blocks reading the shared feed. Both
// are made anew when they drop or when a command stays unanswered past store.redis.timeout
// (a stopped or unreachable Redis keeps the TCP connection up but answers nothing). No
// command is ever resent by the client library: the store decides what to send again (its
// appends are idempotent, see redis-scripts.ts).
import type { RedisClientType } from "@redis/client";
import { reasonOf } from "./errors.ts";
import { APPEND, READ, STATS } from "./redis-scripts.ts";

type Client = RedisClientType<Record<string, never>, Record<string, never>, Record<string, never>, 2>;
type Script = "append" | "read" | "stats";
const SOURCES: Readonly<Record<Script, string>> = { append: APPEND, read: READ, stats: STATS };
const FEED_BLOCK_MS = 1000;
const FEED_COUNT = 1000;

export interface LinkEvents {
  /** The command connection is up (first time or again). */
  up(): void;
  /** It was lost or timed out; every command in flight failed and must be sent again. */
  down(reason: string): void;
}

/** One connection made anew whenever it is lost; `open` resolves with a ready client. */
class Connection {
  private client: Client | null = null;
  private connecting: Promise<Client> | null = null;
  private closed = false;
  private readonly url: string;
  private readonly name: string;
  timeoutMs: number;
  /** Called once per client when it is lost. */
  onLost: (reason: string) => void = () => {};
  /** Called when an attempt to connect fails (a refused connection, a wrong password). */
  onFailed: (reason: string) => void = () => {};
  private lastFailure: string | null = null;

  constructor(url: string, name: string, timeoutMs: number) {
    this.url = url;
    this.name = name;
    this.timeoutMs = timeoutMs;
  }

  get ready(): Client | null {
    return this.client !== null && this.client.isReady ? this.client : null;
  }

  /** A ready client, after as many attempts as it takes (backing off up to 2 s). */
  open(): Promise<Client> {
    if (this.client !== null) return Promise.resolve(this.client);
    this.connecting ??= this.attempt(0).finally(() => (this.connecting = null));
    return this.connecting;
  }

  /** Drops the client (its commands fail); the next open() makes a new one. */
  lose(reason: string): void {
    const client = this.client;
    if (client === null) return;
    this.client = null;
    client.destroy();
    this.onLost(reason);
  }

  /** node-redis, told not to reconnect, ends a lost connection without an event: look. */
  checkAlive(): void {
    if (this.client !== null && !this.client.isReady) this.lose(this.lastFailure ?? "connection lost");
  }

  close(): void {
    this.closed = true;
    const client = this.client;
    this.client = null;
    client?.destroy();
  }

  private async attempt(retries: number): Promise<Client> {
    for (;;) {
      if (this.closed) throw new Error("closed");
      // Loaded here, not at the top: a monitor with the memory store never loads it.
      const { createClient } = await import("@redis/client");
      const client = createClient({
        url: this.url,
        name: this.name,
        disableOfflineQueue: true,
        // Redis Enterprise's connection handoff: this link makes its connections anew itself,
        // and the feature's handshake reads the URL with WHATWG URL, which refuses
        // unix://user:password@/path.
        maintNotifications: "disabled",
        socket: { reconnectStrategy: false, connectTimeout: this.timeoutMs },
      }) as unknown as Client;
      client.on("error", (err: Error) => {
        this.lastFailure = reasonOf(err);
        if (this.client === client && !client.isReady) this.lose(this.lastFailure);
      });
      try {
        await withTimeout(client.connect(), this.timeoutMs, "no answer");
        if (this.closed) {
          client.destroy();
          throw new Error("closed");
        }
        this.client = client;
        this.lastFailure = null;
        return client;
      } catch (err) {
        client.destroy();
        if (this.closed) throw err;
        this.onFailed(reasonOf(err));
        await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** retries++)));
      }
    }
  }
}

export class RedisLink {
  private readonly commands: Connection;
  private readonly feed: Connection;
  private readonly shas = new Map<Script, string>();
  private readonly events: LinkEvents;
  private readonly prefix: string;
  /** When each command in flight was sent (watchdog). */
  private readonly inFlight = new Set<{ since: number }>();
  private watchdog: ReturnType<typeof setInterval> | null = null;
  /** The last feed entry read; null until the feed's end is known. */
  private lastFeedId: string | null = null;
  /** False when the next read must first check that lastFeedId is still in the feed. */
  private feedChecked = true;
  private wakeFeed: (() => void) | null = null;
  private closed = false;
  up = false;
  downSince = performance.now();
  lastError = "not connected yet";

  constructor(url: string, prefix: string, timeoutMs: number, events: LinkEvents) {
    this.prefix = prefix;
    this.events = events;
    this.commands = new Connection(url, "recodex-monitor", timeoutMs);
    this.feed = new Connection(url, "recodex-monitor-feed", timeoutMs);
    this.commands.onLost = (reason) => this.lost(reason);
    // Why it cannot connect is what /readyz and the log say while it is down.
    this.commands.onFailed = (reason) => (this.lastError = reason);
    this.feed.onLost = () => {};
  }

  set timeoutMs(ms: number) {
    this.commands.timeoutMs = ms;
    this.feed.timeoutMs = ms;
  }

  get timeoutMs(): number {
    return this.commands.timeoutMs;
  }

  /** Connects in the background; `up` fires when ready. Resolves after the first attempt or the timeout. */
  async start(): Promise<void> {
    this.watchdog = setInterval(() => this.check(), Math.max(50, Math.min(1000, this.timeoutMs / 4)));
    this.watchdog.unref();
    const first = this.connect();
    await Promise.race([first, new Promise((r) => setTimeout(r, this.timeoutMs).unref())]);
  }

  close(): void {
    this.closed = true;
    this.wakeFeed?.();
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.commands.close();
    this.feed.close();
  }

  /** Runs a script on the command connection; rejects if the connection is not up or is lost. */
  async run(script: Script, args: readonly string[]): Promise<string> {
    const client = this.commands.ready;
    if (client === null || !this.up) throw new Error(`Redis link down: ${this.lastError}`);
    const token = { since: performance.now() };
    this.inFlight.add(token);
    try {
      try {
        return (await client.sendCommand(["EVALSHA", this.shas.get(script)!, "0", this.prefix, ...args])) as string;
      } catch (err) {
        // Redis forgot the script (restarted without it, SCRIPT FLUSH): send it whole.
        if (!/NOSCRIPT/.test(String((err as Error).message))) throw err;
        return (await client.sendCommand(["EVAL", SOURCES[script], "0", this.prefix, ...args])) as string;
      }
    } finally {
      this.inFlight.delete(token);
    }
  }

  /** Any raw command on the command connection (a few reads the store needs). */
  async command(args: readonly string[]): Promise<unknown> {
    const client = this.commands.ready;
    if (client === null || !this.up) throw new Error(`Redis link down: ${this.lastError}`);
    const token = { since: performance.now() };
    this.inFlight.add(token);
    try {
      return await client.sendCommand([...args]);
    } finally {
      this.inFlight.delete(token);
    }
  }

  /**
   * Reads the feed from its end as it is now, in order, for as long as the link is open:
   * `entry` gets each entry's fields. After a lost connection (or when recheckFeed() asks)
   * the read first makes sure that its position is still in the feed; if it was trimmed
   * away or the feed flushed, `lost` is called: entries may have been missed.
   */
  async follow(entry: (fields: string[]) => void, lost: () => void): Promise<void> {
    while (!this.closed) {
      if (!this.up) {
        await new Promise<void>((r) => {
          this.wakeFeed = r;
          setTimeout(r, 1000).unref();
        });
        continue;
      }
      try {
        if (this.lastFeedId === null) {
          const last = (await this.command(["XREVRANGE", `${this.prefix}feed`, "+", "-", "COUNT", "1"])) as [string, string[]][];
          this.lastFeedId = last.length > 0 ? last[0][0] : "0-0";
          this.feedChecked = true;
        }
        if (!this.feedChecked) {
          const id = this.lastFeedId;
          const found = id === "0-0" ? [] : ((await this.command(["XRANGE", `${this.prefix}feed`, id, id])) as unknown[]);
          this.feedChecked = true;
          if (id !== "0-0" && found.length === 0) lost();
        }
        for (const [id, fields] of await this.readFeed(this.lastFeedId, FEED_BLOCK_MS, FEED_COUNT)) {
          this.lastFeedId = id;
          entry(fields);
        }
      } catch {
        this.feedChecked = false;
        if (!this.closed) await new Promise((r) => setTimeout(r, 100).unref());
      }
    }
  }

  /** The next feed read first checks its position (the store asks now and then: the feed is capped). */
  recheckFeed(): void {
    if (this.lastFeedId !== null) this.feedChecked = false;
  }

  /**
   * Blocks up to `blockMs` for feed entries after `lastId` on the feed connection.
   * Returns [id, fields][] (empty on timeout); throws when the connection is lost.
   */
  private async readFeed(lastId: string, blockMs: number, count: number): Promise<[string, string[]][]> {
    const client = await this.feed.open();
    const deadline = setTimeout(() => this.feed.lose("feed read unanswered"), blockMs + this.timeoutMs);
    try {
      const key = `${this.prefix}feed`;
      // RESP3 (node-redis' default) answers a map of streams, RESP2 a list of [name, entries].
      const reply = (await client.sendCommand(["XREAD", "COUNT", String(count), "BLOCK", String(blockMs), "STREAMS", key, lastId])) as
        | Record<string, [string, string[]][]>
        | [string, [string, string[]][]][]
        | null;
      if (reply === null) return [];
      return Array.isArray(reply) ? (reply[0]?.[1] ?? []) : (reply[key] ?? []);
    } catch (err) {
      this.feed.lose(reasonOf(err));
      throw err;
    } finally {
      clearTimeout(deadline);
    }
  }

  private async connect(): Promise<void> {
    try {
      const client = await this.commands.open();
      for (const [name, source] of Object.entries(SOURCES) as [Script, string][]) {
        this.shas.set(name, (await withTimeout(client.sendCommand(["SCRIPT", "LOAD", source]), this.timeoutMs, "SCRIPT LOAD unanswered")) as string);
      }
      this.up = true;
      this.feedChecked = false;
      this.wakeFeed?.();
      this.events.up();
    } catch (err) {
      if ((err as Error).message === "closed") return;
      this.commands.lose(reasonOf(err));
    }
  }

  private lost(reason: string): void {
    this.inFlight.clear();
    this.lastError = reason;
    const wasUp = this.up;
    this.up = false;
    if (wasUp) {
      this.downSince = performance.now();
      this.events.down(reason);
    }
    setTimeout(() => void this.connect(), 0).unref();
  }

  /** A command unanswered past the timeout: the connection is made anew, its commands sent again by the store. */
  private check(): void {
    this.commands.checkAlive();
    this.feed.checkAlive();
    const now = performance.now();
    for (const token of this.inFlight) {
      if (now - token.since > this.timeoutMs) {
        this.commands.lose(`a command went unanswered for more than ${this.timeoutMs / 1000} s`);
        return;
      }
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(what)), ms);
    }),
  ]);
}
