// The configuration. Every key is declared once, below: its default, its check, whether a
// SIGHUP may change it while running, and its line in README's table. The defaults, the
// Config type, validation, the reload and the documentation all follow from that one
// declaration. The original monitor's keys (websocket_uri, zeromq_uri, logger.*) keep their
// meaning; everything new lives in its own section.
import { readFileSync } from "node:fs";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { FORWARDED_HEADERS, parseAddressPattern, type ForwardedHeader } from "./client-address.ts";
import { MonitorError, monitorError, reasonOf } from "./errors.ts";

export type Address = readonly [host: string, port: number];
export type LogLevelName = "debug" | "info" | "warning" | "error" | "critical";
export const LOG_LEVELS: readonly LogLevelName[] = ["debug", "info", "warning", "error", "critical"];

type Checked<T> = { ok: true; value: T } | { ok: false; expected: string };
type Check<T> = (value: unknown) => Checked<T>;

/** How a change to a key reaches a running monitor on SIGHUP. */
export type Reload = "live" | "restart";

/** One declared key. */
export class Key<T> {
  readonly default: T;
  readonly check: Check<T>;
  readonly reload: Reload;
  readonly doc: string;
  /** The default as README shows it, when the value alone would mislead. */
  readonly shownDefault: string | undefined;

  constructor(def: T, check: Check<T>, reload: Reload, doc: string, shownDefault?: string) {
    this.default = def;
    this.check = check;
    this.reload = reload;
    this.doc = doc;
    this.shownDefault = shownDefault;
  }
}

const integer = (min: number, max = Number.MAX_SAFE_INTEGER): Check<number> => (v) =>
  typeof v === "number" && Number.isInteger(v) && v >= min && v <= max
    ? { ok: true, value: v }
    : { ok: false, expected: `an integer from ${min} to ${max}` };

const seconds = (min: number, max = 31 * 24 * 3600): Check<number> => (v) =>
  typeof v === "number" && Number.isFinite(v) && v >= min && v <= max
    ? { ok: true, value: v }
    : { ok: false, expected: `a number of seconds from ${min} to ${max}` };

const boolean: Check<boolean> = (v) =>
  typeof v === "boolean" ? { ok: true, value: v } : { ok: false, expected: "true or false" };

const text: Check<string> = (v) =>
  typeof v === "string" && v.length > 0 ? { ok: true, value: v } : { ok: false, expected: "a non-empty string" };

const nullable = <T>(inner: Check<T>): Check<T | null> => (v) => (v === null ? { ok: true, value: null } : inner(v));

const oneOf = <T extends string>(choices: readonly T[]): Check<T> => (v) =>
  typeof v === "string" && (choices as readonly string[]).includes(v)
    ? { ok: true, value: v as T }
    : { ok: false, expected: `one of ${choices.join(", ")}` };

const stringList: Check<readonly string[]> = (v) =>
  Array.isArray(v) && v.every((s) => typeof s === "string" && s.length > 0)
    ? { ok: true, value: [...(v as string[])] }
    : { ok: false, expected: "a list of non-empty strings" };

const addressPatterns: Check<readonly string[]> = (v) =>
  Array.isArray(v) && v.every((s) => typeof s === "string" && parseAddressPattern(s) !== null)
    ? { ok: true, value: [...(v as string[])] }
    : { ok: false, expected: 'a list of IPv4 or IPv6 addresses or CIDRs (e.g. ["127.0.0.1", "10.0.0.0/8", "::1"])' };

const address: Check<Address> = (v) => {
  const expected = "[host, port] with a port from 0 to 65535 (empty host: all interfaces)";
  if (!Array.isArray(v) || v.length !== 2) return { ok: false, expected };
  const [host, rawPort] = v;
  const port = typeof rawPort === "string" && /^\d+$/.test(rawPort) ? Number(rawPort) : rawPort;
  if (typeof host !== "string" || typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535) {
    return { ok: false, expected };
  }
  return { ok: true, value: [host, port] };
};

// A local Redis is often reached over its unix socket: node-redis reads
// unix://[user[:password]@]/path/to/socket[?db=N] (the WHATWG URL parser cannot).
const UNIX_REDIS_URL = /^unix:\/\/(?:[^:@/]*(?::[^@/]*)?@)?\/[^?#]+(?:\?db=\d+)?$/;

const redisUrl: Check<string> = (v) => {
  const expected = "a redis://, rediss:// or unix:// URL (redis://[user:password@]host:port/db, unix:///path/to/socket?db=N)";
  if (typeof v !== "string") return { ok: false, expected };
  if (v.startsWith("unix:")) return UNIX_REDIS_URL.test(v) ? { ok: true, value: v } : { ok: false, expected };
  try {
    const url = new URL(v);
    const db = url.pathname.replace(/^\//, "");
    if ((url.protocol !== "redis:" && url.protocol !== "rediss:") || url.hostname === "" || !/^\d*$/.test(db)) return { ok: false, expected };
  } catch {
    return { ok: false, expected };
  }
  return { ok: true, value: v };
};

const MiB = 1024 * 1024;
const LIVE = "live";
const RESTART = "restart";

export const DECLARATION = Object.freeze({
  websocket_uri: new Key<Address>(["127.0.0.1", 4567], address, RESTART, 'where browsers connect; `""` as host = all interfaces'),
  zeromq_uri: new Key<Address>(["127.0.0.1", 7894], address, RESTART, "where the broker connects"),
  logger: {
    // Without any config file the log goes to stderr instead (see loadConfig).
    file: new Key("/tmp/recodex-monitor.log", text, RESTART, 'log file; `"-"` = stderr (journald)',
      "`/tmp/recodex-monitor.log` with a config file, stderr without one"),
    level: new Key<LogLevelName>("info", oneOf(LOG_LEVELS), LIVE, "`debug`, `info`, `warning`, `error`, `critical`"),
    "max-size": new Key(MiB, integer(1024), RESTART, "bytes before the file rotates"),
    rotations: new Key(3, integer(0, 1000), RESTART, "rotated files kept (`monitor.log.1` is the newest); `0` never rotates"),
  },
  retention: {
    finished_ttl: new Key(300, seconds(0.01), LIVE, "a channel is dropped this long after `FINISHED`"),
    idle_ttl: new Key(3600, seconds(0.01), LIVE,
      "a channel without a new message this long is dropped; its subscribers are closed with 4000 (frees jobs that end with a broker `FAILED`/`ABORTED`)"),
    max_channels: new Key(100_000, integer(1), LIVE,
      "at the cap, the channel that finished first (else the least recently active) is evicted; subscribers get 4001"),
    max_messages_per_channel: new Key(10_000, integer(1), LIVE,
      "past it the oldest history is no longer replayed (live subscribers still get every message; `FINISHED` is always kept)"),
    max_bytes_per_channel: new Key(MiB, integer(1024), LIVE, "the same, in bytes"),
    max_total_bytes: new Key(256 * MiB, integer(1024), LIVE, "all kept history; past it, channels are evicted as for `max_channels`"),
  },
  limits: {
    max_channel_id_length: new Key(256, integer(1, 65536), LIVE, "longer channel ids (ZeroMQ or WebSocket) are refused"),
    max_client_message: new Key(4096, integer(64, MiB), LIVE, "largest WebSocket message a client may send; larger: close 1009"),
    subscribe_timeout: new Key(10, seconds(0.01, 3600), LIVE, "a client that sends no channel id this long is closed with 4002"),
    max_buffered_bytes: new Key(4 * MiB, integer(1024), LIVE,
      "per-client outbound bound; a client that falls behind past it is closed with 4003 (must be >= `max_bytes_per_channel`)"),
    max_total_buffered_bytes: new Key(64 * MiB, integer(1024), LIVE,
      "bound on the bytes waiting in all clients' buffers together; past it the clients furthest behind are closed with 4003 (must be >= `max_buffered_bytes`)"),
    backlog_timeout: new Key(30, seconds(0.01, 3600), LIVE,
      "a client whose outbound backlog has not shrunk for this long is closed with 4003, whatever pongs it sends"),
    handshake_timeout: new Key(10, seconds(0.01, 3600), LIVE,
      "a connection must complete its TLS handshake and send its upgrade request's headers within this time after it is accepted; else it is closed"),
    drain_timeout: new Key(5, seconds(0, 60), LIVE, "how long shutdown waits for clients to complete the close handshake"),
  },
  keepalive: {
    interval: new Key(30, seconds(0.01, 59), LIVE,
      "ping interval; a client that has not answered the previous ping is dropped (below the usual 60 s proxy idle timeout)"),
  },
  websocket: {
    permessage_deflate: new Key(false, boolean, RESTART, "compression (costs CPU per message and client)"),
    resumable: new Key(true, boolean, RESTART, "accept the opt-in resumable protocol (below)"),
    // Re-read on SIGHUP; switching TLS on or off needs a restart (Monitor.reload).
    tls_cert: new Key<string | null>(null, nullable(text), LIVE, "PEM certificate: serve `wss://` directly; re-read on SIGHUP", "unset"),
    tls_key: new Key<string | null>(null, nullable(text), LIVE, "its PEM key", "unset"),
  },
  broker: {
    allow_exit_command: new Key(true, boolean, LIVE, "the original's `0`/`exit` ZeroMQ message stops the monitor; `false` ignores it"),
  },
  http: {
    enabled: new Key(false, boolean, RESTART, "serve `/livez`, `/readyz`, `/metrics`, `/status`"),
    uri: new Key<Address | null>(null, nullable(address), RESTART, "`[host, port]` for those endpoints (keep it on loopback)", "unset"),
    on_websocket_port: new Key(false, boolean, RESTART,
      "serve the endpoints on the WebSocket port instead of `http.uri` (a reverse proxy in front would make them public)"),
    list_channels: new Key(false, boolean, LIVE,
      "`GET /status?channels=N` (`recodex-monitor status --channels`) lists channel ids; they are capabilities (anyone holding one can watch that job)"),
  },
  store: {
    kind: new Key<"memory" | "redis">("memory", oneOf(["memory", "redis"] as const), RESTART,
      "`memory`: channels live in this process; `redis`: in Redis, shared by every monitor that points at it (below)"),
    state_file: new Key<string | null>(null, nullable(text), RESTART,
      "memory store: a graceful stop writes every kept channel here, the next start restores it (packaged: `/var/lib/recodex-monitor/channels.state`)",
      "unset"),
    max_waiting_channels: new Key(10_000, integer(1), LIVE,
      "channels that only browsers have asked for (no broker message yet); they count against no `retention.*` cap and vanish with their subscribers; past it, a subscription to one more is closed with 4001"),
    redis: {
      url: new Key("redis://127.0.0.1:6379/0", redisUrl, RESTART, "`redis://[user:password@]host:port/db`, `rediss://` for TLS, `unix:///path/to/socket?db=N` for a local socket"),
      key_prefix: new Key("recodex-monitor:", text, RESTART, "every key this monitor writes starts with it; monitors that share channels share the prefix"),
      max_pending: new Key(100_000, integer(1), LIVE,
        "messages held while Redis is unreachable or slow, written in order when it is back; past it they are dropped, counted and logged, and resumable clients told of the gap"),
      timeout: new Key(5, seconds(0.1, 600), LIVE, "a Redis command unanswered this long marks the link down (`/readyz` 503) and the connection is made anew"),
      feed_length: new Key(100_000, integer(1000), RESTART,
        "messages kept in the stream every monitor reads live messages from; a monitor cut off from Redis for longer catches up channel by channel"),
    },
  },
  access: {
    allowed_origins: new Key<readonly string[]>([], stringList, LIVE,
      "browser `Origin`s allowed to connect (exact match, e.g. `https://recodex.example.org`); clients that send no Origin (non-browsers) are allowed; others get HTTP 403",
      "`[]` (any)"),
    max_connections: new Key(0, integer(0), LIVE,
      "open connections on the WebSocket port, counted from accept (also those still in their handshake); more: HTTP 503. `0`: the open-files limit minus a reserve (Configuration, below), which also caps a higher value",
      "`0` (from the open-files limit)"),
    max_connections_per_ip: new Key(0, integer(0), LIVE,
      "more from one client address (counted from accept, or from the upgrade behind a trusted proxy): HTTP 429", "`0` (no cap)"),
    upgrades_per_second_per_ip: new Key(0, seconds(0, 1e6), LIVE, "new connections per second per address (token bucket); more: HTTP 429",
      "`0` (no limit)"),
    upgrade_burst: new Key(20, integer(1), LIVE, "the bucket's size"),
    trusted_proxies: new Key<readonly string[]>([], addressPatterns, LIVE,
      "reverse proxies (addresses or CIDRs, IPv4 or IPv6): for a connection from one of them the client address is the rightmost address in `forwarded_header` that is not itself a trusted proxy; for any other peer the header is ignored",
      "`[]` (none)"),
    forwarded_header: new Key<ForwardedHeader>("X-Forwarded-For", oneOf(FORWARDED_HEADERS), LIVE,
      "the header the trusted proxies append the client address to: `X-Forwarded-For` or `Forwarded` (RFC 7239)"),
  },
});

type ValuesOf<D> = { readonly [K in keyof D]: D[K] extends Key<infer T> ? T : ValuesOf<D[K]> };

export type Config = ValuesOf<typeof DECLARATION>;

type Section = { readonly [key: string]: Key<unknown> | Section };

/** Every declared key by its dotted path ("retention.idle_ttl"), in declaration order. */
export const KEYS: ReadonlyMap<string, Key<unknown>> = (() => {
  const keys = new Map<string, Key<unknown>>();
  const walk = (section: Section, prefix: string) => {
    for (const [name, item] of Object.entries(section)) {
      if (item instanceof Key) keys.set(prefix + name, item);
      else walk(item, `${prefix}${name}.`);
    }
  };
  walk(DECLARATION, "");
  return keys;
})();

function build(valueOf: (path: string, key: Key<unknown>) => unknown): Config {
  const walk = (section: Section, prefix: string): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const [name, item] of Object.entries(section)) {
      out[name] = item instanceof Key ? valueOf(prefix + name, item) : walk(item, `${prefix}${name}.`);
    }
    return out;
  };
  return deepFreeze(walk(DECLARATION, "")) as unknown as Config;
}

/** The value at a dotted path of a config. */
export function valueAt(config: Config, path: string): unknown {
  let v: unknown = config;
  for (const part of path.split(".")) v = (v as Record<string, unknown>)[part];
  return v;
}

/** A config whose keys come from `pick(path)`: "a" takes a's value, "b" b's. */
export function combine(a: Config, b: Config, pick: (path: string, key: Key<unknown>) => "a" | "b"): Config {
  return build((path, key) => valueAt(pick(path, key) === "a" ? a : b, path));
}

export const DEFAULTS: Config = build((_path, key) => key.default);

export interface LoadedConfig {
  config: Config;
  warnings: string[];
  source: string | null;
}

function invalid(key: string, value: unknown, expected: string): MonitorError {
  return monitorError("RMON_ERR_CONFIG_INVALID", { key, got: describe(value), expected });
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  const json = JSON.stringify(value);
  return json === undefined ? String(value) : json.length > 80 ? json.slice(0, 77) + "..." : json;
}

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Checks a parsed YAML document against the declaration and fills in the defaults. */
export function validateConfig(doc: unknown, source: string | null): LoadedConfig {
  const warnings: string[] = [];
  if (doc === null || doc === undefined) doc = {};
  if (!isMapping(doc)) throw invalid("(top level)", doc, "a mapping of keys");

  // The document's sections, checked for shape and unknown keys before any value.
  const given = new Map<string, unknown>();
  const walk = (section: Section, node: Record<string, unknown>, prefix: string) => {
    for (const name of Object.keys(node)) {
      if (!(name in section)) warnings.push(`unknown config key "${prefix}${name}" ignored`);
    }
    for (const [name, item] of Object.entries(section)) {
      const path = prefix + name;
      const value = node[name];
      if (item instanceof Key) {
        if (value !== undefined) given.set(path, value);
      } else if (value !== undefined && value !== null) {
        if (!isMapping(value)) throw invalid(path, value, "a section (mapping of keys)");
        walk(item, value, path + ".");
      }
    }
  };
  walk(DECLARATION, doc, "");

  const config = build((path, key) => {
    if (!given.has(path)) return key.default;
    const value = given.get(path);
    const result = key.check(value);
    if (!result.ok) throw invalid(path, value, result.expected);
    return result.value;
  });
  checkConsistency(config);
  return { config, warnings, source };
}

function checkConsistency(c: Config): void {
  if (c.limits.max_buffered_bytes < c.retention.max_bytes_per_channel) {
    throw invalid(
      "limits.max_buffered_bytes",
      c.limits.max_buffered_bytes,
      `at least retention.max_bytes_per_channel (${c.retention.max_bytes_per_channel}), so that a full history replay fits`,
    );
  }
  if (c.retention.max_total_bytes < c.retention.max_bytes_per_channel) {
    throw invalid(
      "retention.max_total_bytes",
      c.retention.max_total_bytes,
      `at least retention.max_bytes_per_channel (${c.retention.max_bytes_per_channel})`,
    );
  }
  if (c.limits.max_total_buffered_bytes < c.limits.max_buffered_bytes) {
    throw invalid(
      "limits.max_total_buffered_bytes",
      c.limits.max_total_buffered_bytes,
      `at least limits.max_buffered_bytes (${c.limits.max_buffered_bytes})`,
    );
  }
  if ((c.websocket.tls_cert === null) !== (c.websocket.tls_key === null)) {
    const key = c.websocket.tls_cert === null ? "websocket.tls_cert" : "websocket.tls_key";
    throw invalid(key, null, "a path: TLS needs both websocket.tls_cert and websocket.tls_key");
  }
  if (c.store.kind === "redis" && c.store.state_file !== null) {
    throw invalid("store.state_file", c.store.state_file, "unset with store.kind redis (Redis keeps the channels)");
  }
  if (c.http.uri !== null && !c.http.enabled) {
    throw invalid("http.enabled", false, "true when http.uri is set");
  }
  if (c.http.on_websocket_port && !c.http.enabled) {
    throw invalid("http.enabled", false, "true when http.on_websocket_port is set");
  }
  if (c.http.enabled && c.http.uri === null && !c.http.on_websocket_port) {
    throw invalid("http.uri", null,
      '[host, port] for the endpoints (e.g. ["127.0.0.1", 4568]), or http.on_websocket_port: true to serve them on the WebSocket port');
  }
  if (c.http.uri !== null && c.http.on_websocket_port) {
    throw invalid("http.on_websocket_port", true, "false when http.uri is set (the endpoints are served in one place)");
  }
}

/** Reads and checks the config file; without a path, the defaults with logging to stderr. */
export function loadConfig(path: string | undefined): LoadedConfig {
  if (path === undefined) {
    return validateConfig({ logger: { file: "-" } }, null);
  }
  return check(path, readDocument(path));
}

/**
 * loadConfig for a SIGHUP. An empty file (or one of only blanks and comments) is refused: at
 * a reload it is far more likely a file caught while being written, or truncated by mistake,
 * than a wish to drop every setting back to its default.
 */
export function reloadConfig(path: string | undefined): LoadedConfig {
  if (path === undefined) return loadConfig(path);
  const doc = readDocument(path);
  if (doc === null || doc === undefined) throw monitorError("RMON_ERR_CONFIG_EMPTY", { path });
  return check(path, doc);
}

function readDocument(path: string): unknown {
  let textContent: string;
  try {
    textContent = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw monitorError("RMON_ERR_CONFIG_NOT_FOUND", { path });
    throw monitorError("RMON_ERR_CONFIG_UNREADABLE", { path, reason: code === "EISDIR" ? "it is a directory" : reasonOf(err) });
  }
  try {
    return parseYaml(textContent, { uniqueKeys: true });
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` (line ${err.linePos[0].line})` : "";
    const reason = ((err as Error).message.split("\n")[0] ?? "").trim();
    throw monitorError("RMON_ERR_CONFIG_SYNTAX", { path, where, reason });
  }
}

function check(path: string, doc: unknown): LoadedConfig {
  try {
    return validateConfig(doc, path);
  } catch (err) {
    throw err instanceof MonitorError ? err.within(path) : err;
  }
}

/** README's configuration table: one row per declared key. */
export function documentationTable(): string {
  const rows = ["| key | default | SIGHUP | meaning |", "|---|---|---|---|"];
  for (const [path, key] of KEYS) {
    const value = typeof key.default === "string" ? key.default : JSON.stringify(key.default).replaceAll(",", ", ");
    const shown = key.shownDefault ?? "`" + value + "`";
    rows.push(`| \`${path}\` | ${shown} | ${key.reload === "live" ? "applied" : "restart"} | ${key.doc} |`);
  }
  return rows.join("\n");
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
