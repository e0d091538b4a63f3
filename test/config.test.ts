// The configuration: the original's keys and defaults, the new sections, and error
// messages that name the key, the value and what was expected.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { DEFAULTS, loadConfig, validateConfig } from "../src/config.ts";
import { MonitorError } from "../src/errors.ts";
import { tempDir, writeConfig } from "./helpers/monitor-process.ts";

const MiB = 1024 * 1024;

/** Asserts that validateConfig rejects `doc` with a message naming key, value and expectation. */
function rejects(doc: unknown, key: string, value: string, expected: RegExp): void {
  assert.throws(
    () => validateConfig(doc, null),
    (err: unknown) => {
      assert.ok(err instanceof MonitorError, String(err));
      assert.equal(err.code, "RMON_ERR_CONFIG_INVALID");
      assert.equal(err.exitCode, 3);
      assert.ok(err.message.includes(`"${key}"`), `message does not name ${key}: ${err.message}`);
      assert.ok(err.message.includes(value), `message does not show the value ${value}: ${err.message}`);
      assert.match(err.message, expected);
      return true;
    },
  );
}

test("the original's defaults apply to an empty document", () => {
  const { config, warnings } = validateConfig({}, null);
  assert.deepEqual(config.websocket_uri, ["127.0.0.1", 4567]);
  assert.deepEqual(config.zeromq_uri, ["127.0.0.1", 7894]);
  assert.deepEqual(config.logger, { file: "/tmp/recodex-monitor.log", level: "info", "max-size": 1048576, rotations: 3 });
  assert.deepEqual(warnings, []);
});

test("every new setting has its documented default", () => {
  const { config } = validateConfig(null, null);
  assert.deepEqual(config.retention, {
    finished_ttl: 300,
    idle_ttl: 3600,
    max_channels: 100_000,
    max_messages_per_channel: 10_000,
    max_bytes_per_channel: MiB,
    max_total_bytes: 256 * MiB,
  });
  assert.deepEqual(config.limits, {
    max_channel_id_length: 256,
    max_client_message: 4096,
    subscribe_timeout: 10,
    max_buffered_bytes: 4 * MiB,
    max_total_buffered_bytes: 64 * MiB,
    backlog_timeout: 30,
    handshake_timeout: 10,
    drain_timeout: 5,
  });
  assert.deepEqual(config.keepalive, { interval: 30 });
  assert.deepEqual(config.websocket, { permessage_deflate: false, resumable: true, tls_cert: null, tls_key: null });
  assert.deepEqual(config.broker, { allow_exit_command: true });
  assert.deepEqual(config.http, { enabled: false, uri: null, on_websocket_port: false, list_channels: false });
  assert.deepEqual(config.access, {
    allowed_origins: [],
    max_connections: 0,
    max_connections_per_ip: 0,
    upgrades_per_second_per_ip: 0,
    upgrade_burst: 20,
    trusted_proxies: [],
    forwarded_header: "X-Forwarded-For",
  });
  assert.deepEqual(config, DEFAULTS);
});

test("the defaults and a loaded config are frozen", () => {
  assert.ok(Object.isFrozen(DEFAULTS));
  assert.ok(Object.isFrozen(DEFAULTS.retention));
  const { config } = validateConfig({ logger: { level: "debug" } }, null);
  assert.ok(Object.isFrozen(config.logger));
  assert.throws(() => {
    (config.logger as { level: string }).level = "info";
  });
});

test("a config with only the original's keys is accepted unchanged", () => {
  const { config, warnings } = validateConfig(
    {
      websocket_uri: ["127.0.0.1", 4567],
      zeromq_uri: ["127.0.0.1", 7894],
      logger: { file: "/var/log/recodex/monitor.log", level: "debug", "max-size": 1048576, rotations: 3 },
    },
    "x",
  );
  assert.deepEqual(warnings, []);
  assert.equal(config.logger.file, "/var/log/recodex/monitor.log");
  assert.equal(config.logger.level, "debug");
  assert.equal(config.retention.finished_ttl, 300);
});

test("every log level name of the original is accepted", () => {
  for (const level of ["debug", "info", "warning", "error", "critical"]) {
    assert.equal(validateConfig({ logger: { level } }, null).config.logger.level, level);
  }
});

test("a port given as a numeric string is accepted as a number", () => {
  const { config } = validateConfig({ websocket_uri: ["127.0.0.1", "4567"], zeromq_uri: ["", "7894"] }, null);
  assert.deepEqual(config.websocket_uri, ["127.0.0.1", 4567]);
  assert.deepEqual(config.zeromq_uri, ["", 7894]);
});

test("an empty host is accepted (all interfaces)", () => {
  assert.deepEqual(validateConfig({ websocket_uri: ["", 4567] }, null).config.websocket_uri, ["", 4567]);
});

test("unknown keys produce a warning naming them, at every level", () => {
  const { warnings } = validateConfig({ colour: "blue", logger: { levle: "debug" }, retention: { ttl: 1 } }, null);
  assert.equal(warnings.length, 3);
  assert.ok(warnings.some((w) => w.includes('"colour"')), warnings.join("; "));
  assert.ok(warnings.some((w) => w.includes('"logger.levle"')), warnings.join("; "));
  assert.ok(warnings.some((w) => w.includes('"retention.ttl"')), warnings.join("; "));
});

test("an address that is not [host, port] is rejected with the key, the value and the expectation", () => {
  rejects({ websocket_uri: "127.0.0.1:4567" }, "websocket_uri", '"127.0.0.1:4567"', /expected \[host, port\]/);
  rejects({ zeromq_uri: ["127.0.0.1", 70000] }, "zeromq_uri", "70000", /port from 0 to 65535/);
  rejects({ zeromq_uri: ["127.0.0.1", "80a"] }, "zeromq_uri", '"80a"', /\[host, port\]/);
  rejects({ websocket_uri: ["127.0.0.1"] }, "websocket_uri", '["127.0.0.1"]', /\[host, port\]/);
  rejects({ websocket_uri: [1, 2] }, "websocket_uri", "[1,2]", /\[host, port\]/);
});

test("a log level outside the original's names is rejected, listing them", () => {
  rejects({ logger: { level: "warn" } }, "logger.level", '"warn"', /one of debug, info, warning, error, critical/);
});

test("logger.max-size below 1024 and negative rotations are rejected", () => {
  rejects({ logger: { "max-size": 100 } }, "logger.max-size", "100", /an integer from 1024/);
  rejects({ logger: { rotations: -1 } }, "logger.rotations", "-1", /an integer from 0 to 1000/);
  rejects({ logger: { file: "" } }, "logger.file", '""', /a non-empty string/);
});

test("numeric settings reject the wrong type and out-of-range values", () => {
  rejects({ retention: { finished_ttl: "5m" } }, "retention.finished_ttl", '"5m"', /a number of seconds/);
  rejects({ retention: { idle_ttl: 0 } }, "retention.idle_ttl", "0", /seconds from 0.01/);
  rejects({ retention: { max_channels: 0 } }, "retention.max_channels", "0", /an integer from 1/);
  rejects({ retention: { max_messages_per_channel: 1.5 } }, "retention.max_messages_per_channel", "1.5", /an integer/);
  rejects({ limits: { max_channel_id_length: 100000 } }, "limits.max_channel_id_length", "100000", /to 65536/);
  rejects({ limits: { max_client_message: 10 } }, "limits.max_client_message", "10", /from 64/);
  rejects({ keepalive: { interval: 60 } }, "keepalive.interval", "60", /to 59/);
  rejects({ broker: { allow_exit_command: "no" } }, "broker.allow_exit_command", '"no"', /true or false/);
  rejects({ access: { allowed_origins: ["", "x"] } }, "access.allowed_origins", '["","x"]', /a list of non-empty strings/);
});

test("a section given as a scalar is rejected", () => {
  rejects({ logger: "stderr" }, "logger", '"stderr"', /a section/);
});

test("a top level that is not a mapping is rejected", () => {
  assert.throws(() => validateConfig(["a"], null), /mapping/);
});

test("max_buffered_bytes must hold a full per-channel history", () => {
  rejects(
    { limits: { max_buffered_bytes: 65536 } },
    "limits.max_buffered_bytes",
    "65536",
    /at least retention.max_bytes_per_channel \(1048576\)/,
  );
  const ok = validateConfig({ limits: { max_buffered_bytes: 65536 }, retention: { max_bytes_per_channel: 65536 } }, null);
  assert.equal(ok.config.limits.max_buffered_bytes, 65536);
});

test("max_total_bytes must be at least max_bytes_per_channel", () => {
  rejects({ retention: { max_total_bytes: 2048 } }, "retention.max_total_bytes", "2048", /at least retention.max_bytes_per_channel/);
});

test("TLS needs both the certificate and the key", () => {
  rejects({ websocket: { tls_cert: "/x.pem" } }, "websocket.tls_key", "null", /both/);
});

test("http.uri without http.enabled is rejected", () => {
  rejects({ http: { uri: ["127.0.0.1", 9100] } }, "http.enabled", "false", /true when http.uri is set/);
});

test("the endpoints are served in exactly one place: http.uri, or the WebSocket port when asked for", () => {
  rejects({ http: { enabled: true } }, "http.uri", "null", /http\.on_websocket_port: true/);
  rejects({ http: { on_websocket_port: true } }, "http.enabled", "false", /true when http\.on_websocket_port is set/);
  rejects({ http: { enabled: true, on_websocket_port: true, uri: ["127.0.0.1", 9100] } }, "http.on_websocket_port", "true", /false when http\.uri is set/);
  assert.equal(validateConfig({ http: { enabled: true, on_websocket_port: true } }, null).config.http.on_websocket_port, true);
});

test("max_total_buffered_bytes must hold at least one client's max_buffered_bytes", () => {
  rejects({ limits: { max_total_buffered_bytes: 1024 * 1024 } }, "limits.max_total_buffered_bytes", "1048576", /at least limits\.max_buffered_bytes/);
});

test("loadConfig without a path gives the defaults with logging to stderr", () => {
  const { config, source } = loadConfig(undefined);
  assert.equal(config.logger.file, "-");
  assert.equal(source, null);
  assert.deepEqual(config.websocket_uri, ["127.0.0.1", 4567]);
});

test("loadConfig reads a YAML file of the original's form", () => {
  const path = writeConfig(
    'websocket_uri: ["127.0.0.1", 4568]\nzeromq_uri: ["127.0.0.1", 7895]\nlogger:\n  file: /tmp/x.log\n  level: warning\n  max-size: 2048\n  rotations: 1\n',
  );
  const { config, source, warnings } = loadConfig(path);
  assert.equal(source, path);
  assert.deepEqual(warnings, []);
  assert.deepEqual(config.websocket_uri, ["127.0.0.1", 4568]);
  assert.deepEqual(config.logger, { file: "/tmp/x.log", level: "warning", "max-size": 2048, rotations: 1 });
});

test("an empty config file gives the original's defaults, logging to its default file", () => {
  const { config } = loadConfig(writeConfig(""));
  assert.equal(config.logger.file, "/tmp/recodex-monitor.log");
  assert.deepEqual(config.zeromq_uri, ["127.0.0.1", 7894]);
});

function loadError(path: string): MonitorError {
  try {
    loadConfig(path);
  } catch (err) {
    assert.ok(err instanceof MonitorError, String(err));
    return err;
  }
  assert.fail("loadConfig accepted " + path);
}

test("a missing file, a directory, bad YAML and a bad value each fail with their own code and the path", () => {
  const dir = tempDir();
  const missing = loadError(join(dir, "nope.yml"));
  assert.equal(missing.code, "RMON_ERR_CONFIG_NOT_FOUND");
  assert.ok(missing.message.includes("nope.yml"));

  const sub = join(dir, "sub.yml");
  mkdirSync(sub);
  assert.equal(loadError(sub).code, "RMON_ERR_CONFIG_UNREADABLE");

  const syntax = loadError(writeConfig("logger:\n  level: [debug\n"));
  assert.equal(syntax.code, "RMON_ERR_CONFIG_SYNTAX");
  assert.match(syntax.message, /not valid YAML/);

  const dup = loadError(writeConfig("logger:\n  level: debug\n  level: info\n"));
  assert.equal(dup.code, "RMON_ERR_CONFIG_SYNTAX");

  const path = writeConfig("logger:\n  level: loud\n");
  const bad = loadError(path);
  assert.equal(bad.code, "RMON_ERR_CONFIG_INVALID");
  assert.ok(bad.message.startsWith(path), bad.message);
  assert.match(bad.message, /"logger.level": got "loud", expected one of/);
  for (const e of [missing, syntax, bad]) assert.equal(e.exitCode, 3);
});
