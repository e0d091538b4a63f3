// The configuration. Every key is declared once, below: its default, its check, whether a
// SIGHUP may change it while running, and its line in README's table. The defaults, the
// Config type, validation, the reload and the documentation all follow from that one
// declaration. The original monitor's keys (websocket_uri, zeromq_uri, logger.*) keep their
// meaning; everything new lives in its own section.
import { readFileSync } from "node:fs";
import { parse as parseYaml, YAMLParseError } from "yaml";
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
    uri: new Key<Address | null>(null, nullable(address), RESTART, "`[host, port]` for those endpoints; unset = on the WebSocket port", "unset"),
    list_channels: new Key(false, boolean, LIVE,
      "`GET /status?channels=N` (`recodex-monitor status --channels`) lists channel ids; they are capabilities (anyone holding one can watch that job)"),
  },
  access: {
    allowed_origins: new Key<readonly string[]>([], stringList, LIVE,
      "browser `Origin`s allowed to connect (exact match, e.g. `https://recodex.example.org`); clients that send no Origin (non-browsers) are allowed; others get HTTP 403",
      "`[]` (any)"),
    max_connections: new Key(0, integer(0), LIVE, "more: HTTP 503", "`0` (no cap)"),
    max_connections_per_ip: new Key(0, integer(0), LIVE,
      "more from one address: HTTP 429 (behind a reverse proxy every client has the proxy's address)", "`0` (no cap)"),
    upgrades_per_second_per_ip: new Key(0, seconds(0, 1e6), LIVE, "new connections per second per address (token bucket); more: HTTP 429",
      "`0` (no limit)"),
    upgrade_burst: new Key(20, integer(1), LIVE, "the bucket's size"),
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
  if ((c.websocket.tls_cert === null) !== (c.websocket.tls_key === null)) {
    const key = c.websocket.tls_cert === null ? "websocket.tls_cert" : "websocket.tls_key";
    throw invalid(key, null, "a path: TLS needs both websocket.tls_cert and websocket.tls_key");
  }
  if (c.http.uri !== null && !c.http.enabled) {
    throw invalid("http.enabled", false, "true when http.uri is set");
  }
}

/** Reads and checks the config file; without a path, the defaults with logging to stderr. */
export function loadConfig(path: string | undefined): LoadedConfig {
  if (path === undefined) {
    return validateConfig({ logger: { file: "-" } }, null);
  }
  let textContent: string;
  try {
    textContent = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw monitorError("RMON_ERR_CONFIG_NOT_FOUND", { path });
    throw monitorError("RMON_ERR_CONFIG_UNREADABLE", { path, reason: code === "EISDIR" ? "it is a directory" : reasonOf(err) });
  }
  let doc: unknown;
  try {
    doc = parseYaml(textContent, { uniqueKeys: true });
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` (line ${err.linePos[0].line})` : "";
    const reason = ((err as Error).message.split("\n")[0] ?? "").trim();
    throw monitorError("RMON_ERR_CONFIG_SYNTAX", { path, where, reason });
  }
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
