// The configuration: one frozen object of defaults, the schema that checks a YAML file
// against it, and the loader. The original monitor's keys (websocket_uri, zeromq_uri,
// logger.*) keep their meaning; everything new lives in its own section.
import { readFileSync } from "node:fs";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { MonitorError } from "./errors.ts";

export type Address = readonly [host: string, port: number];
export type LogLevelName = "debug" | "info" | "warning" | "error" | "critical";
export const LOG_LEVELS: readonly LogLevelName[] = ["debug", "info", "warning", "error", "critical"];

export interface Config {
  websocket_uri: Address;
  zeromq_uri: Address;
  logger: { file: string; level: LogLevelName; "max-size": number; rotations: number };
  retention: {
    finished_ttl: number;
    idle_ttl: number;
    max_channels: number;
    max_messages_per_channel: number;
    max_bytes_per_channel: number;
    max_total_bytes: number;
  };
  limits: {
    max_channel_id_length: number;
    max_client_message: number;
    subscribe_timeout: number;
    max_buffered_bytes: number;
    drain_timeout: number;
  };
  keepalive: { interval: number };
  websocket: {
    permessage_deflate: boolean;
    resumable: boolean;
    tls_cert: string | null;
    tls_key: string | null;
  };
  broker: { allow_exit_command: boolean };
  http: { enabled: boolean; uri: Address | null };
  access: {
    allowed_origins: string[];
    max_connections: number;
    max_connections_per_ip: number;
    upgrades_per_second_per_ip: number;
    upgrade_burst: number;
  };
}

const MiB = 1024 * 1024;

// When the monitor runs with a config file that has no logger.file, the original's default
// applies; without any config file the log goes to stderr (see loadConfig).
export const DEFAULTS: Readonly<Config> = deepFreeze({
  websocket_uri: ["127.0.0.1", 4567],
  zeromq_uri: ["127.0.0.1", 7894],
  logger: { file: "/tmp/recodex-monitor.log", level: "info", "max-size": MiB, rotations: 3 },
  retention: {
    finished_ttl: 300,
    idle_ttl: 3600,
    max_channels: 100_000,
    max_messages_per_channel: 10_000,
    max_bytes_per_channel: MiB,
    max_total_bytes: 256 * MiB,
  },
  limits: {
    max_channel_id_length: 256,
    max_client_message: 4096,
    subscribe_timeout: 10,
    max_buffered_bytes: 4 * MiB,
    drain_timeout: 5,
  },
  keepalive: { interval: 30 },
  websocket: { permessage_deflate: false, resumable: true, tls_cert: null, tls_key: null },
  broker: { allow_exit_command: true },
  http: { enabled: false, uri: null },
  access: {
    allowed_origins: [],
    max_connections: 0,
    max_connections_per_ip: 0,
    upgrades_per_second_per_ip: 0,
    upgrade_burst: 20,
  },
} satisfies Config);

type Check = (value: unknown) => { ok: true; value: unknown } | { ok: false; expected: string };

const integer = (min: number, max = Number.MAX_SAFE_INTEGER): Check => (v) =>
  typeof v === "number" && Number.isInteger(v) && v >= min && v <= max
    ? { ok: true, value: v }
    : { ok: false, expected: `an integer from ${min} to ${max}` };

const seconds = (min: number, max = 31 * 24 * 3600): Check => (v) =>
  typeof v === "number" && Number.isFinite(v) && v >= min && v <= max
    ? { ok: true, value: v }
    : { ok: false, expected: `a number of seconds from ${min} to ${max}` };

const boolean: Check = (v) =>
  typeof v === "boolean" ? { ok: true, value: v } : { ok: false, expected: "true or false" };

const text = (allowEmpty: boolean): Check => (v) =>
  typeof v === "string" && (allowEmpty || v.length > 0)
    ? { ok: true, value: v }
    : { ok: false, expected: allowEmpty ? "a string" : "a non-empty string" };

const nullable = (inner: Check): Check => (v) => (v === null ? { ok: true, value: null } : inner(v));

const oneOf = (choices: readonly string[]): Check => (v) =>
  typeof v === "string" && choices.includes(v)
    ? { ok: true, value: v }
    : { ok: false, expected: `one of ${choices.join(", ")}` };

const stringList: Check = (v) =>
  Array.isArray(v) && v.every((s) => typeof s === "string" && s.length > 0)
    ? { ok: true, value: [...v] }
    : { ok: false, expected: "a list of non-empty strings" };

const address: Check = (v) => {
  const expected = "[host, port] with a port from 0 to 65535 (empty host: all interfaces)";
  if (!Array.isArray(v) || v.length !== 2) return { ok: false, expected };
  const [host, rawPort] = v;
  const port = typeof rawPort === "string" && /^\d+$/.test(rawPort) ? Number(rawPort) : rawPort;
  if (typeof host !== "string" || typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535) {
    return { ok: false, expected };
  }
  return { ok: true, value: [host, port] };
};

const SCHEMA: Readonly<Record<string, Check>> = Object.freeze({
  websocket_uri: address,
  zeromq_uri: address,
  "logger.file": text(false),
  "logger.level": oneOf(LOG_LEVELS),
  "logger.max-size": integer(1024),
  "logger.rotations": integer(0, 1000),
  "retention.finished_ttl": seconds(0.01),
  "retention.idle_ttl": seconds(0.01),
  "retention.max_channels": integer(1),
  "retention.max_messages_per_channel": integer(1),
  "retention.max_bytes_per_channel": integer(1024),
  "retention.max_total_bytes": integer(1024),
  "limits.max_channel_id_length": integer(1, 65536),
  "limits.max_client_message": integer(64, 1024 * 1024),
  "limits.subscribe_timeout": seconds(0.01, 3600),
  "limits.max_buffered_bytes": integer(1024),
  "limits.drain_timeout": seconds(0, 60),
  "keepalive.interval": seconds(0.01, 59),
  "websocket.permessage_deflate": boolean,
  "websocket.resumable": boolean,
  "websocket.tls_cert": nullable(text(false)),
  "websocket.tls_key": nullable(text(false)),
  "broker.allow_exit_command": boolean,
  "http.enabled": boolean,
  "http.uri": nullable(address),
  "access.allowed_origins": stringList,
  "access.max_connections": integer(0),
  "access.max_connections_per_ip": integer(0),
  "access.upgrades_per_second_per_ip": seconds(0, 1e6),
  "access.upgrade_burst": integer(1),
});

export interface LoadedConfig {
  config: Config;
  warnings: string[];
  source: string | null;
}

function invalid(key: string, value: unknown, expected: string): MonitorError {
  return new MonitorError(
    "RMON_ERR_CONFIG_INVALID",
    `config key "${key}": got ${describe(value)}, expected ${expected}`,
  );
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  const json = JSON.stringify(value);
  return json === undefined ? String(value) : json.length > 80 ? json.slice(0, 77) + "..." : json;
}

function isSection(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Checks a parsed YAML document against the schema and fills in the defaults. */
export function validateConfig(doc: unknown, source: string | null): LoadedConfig {
  const warnings: string[] = [];
  if (doc === null || doc === undefined) doc = {};
  if (!isSection(doc)) throw invalid("(top level)", doc, "a mapping of keys");

  const walk = (defaults: Record<string, unknown>, given: Record<string, unknown>, prefix: string) => {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(given)) {
      if (!(key in defaults)) warnings.push(`unknown config key "${prefix}${key}" ignored`);
    }
    for (const [key, def] of Object.entries(defaults)) {
      const path = prefix + key;
      const value = given[key];
      if (isSection(def)) {
        if (value !== undefined && value !== null && !isSection(value)) {
          throw invalid(path, value, "a section (mapping of keys)");
        }
        out[key] = walk(def, (value ?? {}) as Record<string, unknown>, path + ".");
      } else if (value === undefined) {
        out[key] = Array.isArray(def) ? [...def] : def;
      } else {
        const check = SCHEMA[path];
        const result = check(value);
        if (!result.ok) throw invalid(path, value, result.expected);
        out[key] = result.value;
      }
    }
    return out;
  };

  const config = walk(DEFAULTS as unknown as Record<string, unknown>, doc, "") as unknown as Config;
  checkConsistency(config);
  return { config: deepFreeze(config), warnings, source };
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
    const loaded = validateConfig({}, null);
    return { ...loaded, config: deepFreeze({ ...loaded.config, logger: { ...loaded.config.logger, file: "-" } }) };
  }
  let textContent: string;
  try {
    textContent = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new MonitorError("RMON_ERR_CONFIG_NOT_FOUND", `config file ${path} does not exist`);
    }
    if (code === "EISDIR") {
      throw new MonitorError("RMON_ERR_CONFIG_UNREADABLE", `config file ${path} is a directory`);
    }
    throw new MonitorError(
      "RMON_ERR_CONFIG_UNREADABLE",
      `config file ${path} cannot be read: ${(err as Error).message}`,
    );
  }
  let doc: unknown;
  try {
    doc = parseYaml(textContent, { uniqueKeys: true });
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` (line ${err.linePos[0].line})` : "";
    const first = ((err as Error).message.split("\n")[0] ?? "").trim();
    throw new MonitorError("RMON_ERR_CONFIG_SYNTAX", `config file ${path} is not valid YAML${where}: ${first}`);
  }
  try {
    return validateConfig(doc, path);
  } catch (err) {
    if (err instanceof MonitorError) {
      throw new MonitorError(err.code, `${path}: ${err.message}`);
    }
    throw err;
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
