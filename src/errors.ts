// Every error a user can meet, declared once: a stable code, the process exit status it
// leads to (for start-up errors), a one-line explanation (README's table) and the template
// of its message. Code elsewhere raises an error by code and fills in the template's
// fields; it never words a message of its own.

export const EXIT = Object.freeze({
  OK: 0,
  INTERNAL: 1,
  USAGE: 2,
  CONFIG: 3,
  BIND: 4,
  LOG_FILE: 5,
  CHECK_FAILED: 6,
  STREAM_ENDED: 7,
  UNREACHABLE: 8,
  SWITCHED_OFF: 9,
  NO_CHANNEL: 10,
});

interface Entry<P> {
  readonly exit: number;
  readonly text: string;
  readonly message: (p: P) => string;
}

const entry = <P>(exit: number, text: string, message: (p: P) => string): Entry<P> => Object.freeze({ exit, text, message });

export const ERRORS = Object.freeze({
  RMON_ERR_USAGE: entry(EXIT.USAGE, "invalid command line", (p: { problem: string }) => p.problem),
  RMON_ERR_CONFIG_NOT_FOUND: entry(EXIT.CONFIG, "the config file does not exist", (p: { path: string }) =>
    `config file ${p.path} does not exist`),
  RMON_ERR_CONFIG_UNREADABLE: entry(EXIT.CONFIG, "the config file cannot be read", (p: { path: string; reason: string }) =>
    `config file ${p.path} cannot be read: ${p.reason}`),
  RMON_ERR_CONFIG_SYNTAX: entry(EXIT.CONFIG, "the config file is not valid YAML", (p: { path: string; where: string; reason: string }) =>
    `config file ${p.path} is not valid YAML${p.where}: ${p.reason}`),
  RMON_ERR_CONFIG_EMPTY: entry(EXIT.CONFIG, "on SIGHUP, the config file is empty: the running configuration is kept",
    (p: { path: string }) => `config file ${p.path} is empty (or only blanks and comments); to reset every key to its default, write "{}"`),
  RMON_ERR_CONFIG_INVALID: entry(EXIT.CONFIG, "a config value is invalid", (p: { key: string; got: string; expected: string }) =>
    `config key "${p.key}": got ${p.got}, expected ${p.expected}`),
  RMON_ERR_TLS: entry(EXIT.CONFIG, "the TLS certificate or key cannot be loaded", (p: { what: string; reason: string }) =>
    `TLS ${p.what} not usable (websocket.tls_cert, websocket.tls_key): ${p.reason}`),
  RMON_ERR_BIND: entry(EXIT.BIND, "a listening address cannot be bound (in use, or not local)",
    (p: { what: string; address: string; key: string; reason: string }) =>
      `cannot listen for ${p.what} on ${p.address} (${p.key}): ${p.reason}`),
  RMON_ERR_LOG_FILE: entry(EXIT.LOG_FILE, "the log file cannot be opened for writing", (p: { path: string; reason: string }) =>
    `log file ${p.path} cannot be opened for writing: ${p.reason} (set logger.file to a writable path, or "-" for stderr)`),
  RMON_ERR_CHECK_FAILED: entry(EXIT.CHECK_FAILED, "the self-test round trip did not complete", (p: { step: string }) =>
    `self-test failed at: ${p.step}`),
  RMON_ERR_STREAM_ENDED: entry(EXIT.STREAM_ENDED, "`watch`: the stream ended before FINISHED", (p: { channel: string; how: string }) =>
    `channel ${p.channel} ended without FINISHED: ${p.how}`),
  RMON_ERR_UNREACHABLE: entry(EXIT.UNREACHABLE, "`watch`, `send`, `status`: the running monitor cannot be reached",
    (p: { what: string; url: string; reason: string; hint: string }) => `cannot reach the monitor's ${p.what} at ${p.url}: ${p.reason} (${p.hint})`),
  RMON_ERR_SWITCHED_OFF: entry(EXIT.SWITCHED_OFF, "`status`, `watch --resume`: what was asked is switched off in the monitor's configuration",
    (p: { what: string; key: string; apply: string }) => `${p.what} is off: set ${p.key}: true in the monitor's config file and ${p.apply}`),
  RMON_ERR_NO_CHANNEL: entry(EXIT.NO_CHANNEL, "`status --channel`: the monitor keeps no such channel", (p: { channel: string }) =>
    `the monitor keeps no channel ${p.channel} (no message for it yet, or already dropped)`),
});

export type ErrorCode = keyof typeof ERRORS;
export type ErrorParams<C extends ErrorCode> = Parameters<(typeof ERRORS)[C]["message"]>[0];

export class MonitorError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: number;

  /** `message` is the template's output; use monitorError() to build one from its fields. */
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MonitorError";
    this.code = code;
    this.exitCode = ERRORS[code].exit;
  }

  /** The same error with a prefix naming where it happened (e.g. the config file). */
  within(where: string): MonitorError {
    return new MonitorError(this.code, `${where}: ${this.message}`, { cause: this });
  }
}

export function monitorError<C extends ErrorCode>(code: C, params: ErrorParams<C>, cause?: unknown): MonitorError {
  const template = ERRORS[code].message as (p: ErrorParams<C>) => string;
  return new MonitorError(code, template(params), cause === undefined ? undefined : { cause });
}

/** What an operating-system error says, in a form short enough for one log line. */
export function reasonOf(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const message = typeof e?.message === "string" ? e.message : String(err);
  return typeof e?.code === "string" && !message.includes(e.code) ? `${e.code} ${message}` : message;
}

// WebSocket close codes sent by the monitor. 1000-1011 are RFC 6455 codes; 4000-4999 are
// ours, so a browser (or an admin reading a HAR file) can tell why it was closed.
export const CLOSE = Object.freeze({
  FINISHED: { code: 1000, reason: "job finished" },
  SHUTDOWN: { code: 1001, reason: "monitor shutting down" },
  BINARY: { code: 1003, reason: "the channel id must be sent as a text message" },
  BAD_CHANNEL: { code: 1008, reason: "invalid channel id" },
  EXPIRED: { code: 4000, reason: "channel expired without activity" },
  EVICTED: { code: 4001, reason: "channel evicted: monitor at capacity" },
  SUBSCRIBE_TIMEOUT: { code: 4002, reason: "no channel id received in time" },
  SLOW_CLIENT: { code: 4003, reason: "client too slow: outbound buffer limit exceeded" },
});
