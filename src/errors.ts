// Every error a user can meet, declared once: a stable code, the process exit status it
// leads to (for start-up errors) and a one-line explanation. README.md lists them.

export const EXIT = Object.freeze({
  OK: 0,
  INTERNAL: 1,
  USAGE: 2,
  CONFIG: 3,
  BIND: 4,
  LOG_FILE: 5,
  CHECK_FAILED: 6,
});

export const ERRORS = Object.freeze({
  RMON_ERR_USAGE: { exit: EXIT.USAGE, text: "invalid command line" },
  RMON_ERR_CONFIG_NOT_FOUND: { exit: EXIT.CONFIG, text: "the config file does not exist" },
  RMON_ERR_CONFIG_UNREADABLE: { exit: EXIT.CONFIG, text: "the config file cannot be read" },
  RMON_ERR_CONFIG_SYNTAX: { exit: EXIT.CONFIG, text: "the config file is not valid YAML" },
  RMON_ERR_CONFIG_INVALID: { exit: EXIT.CONFIG, text: "a config value is invalid" },
  RMON_ERR_TLS: { exit: EXIT.CONFIG, text: "the TLS certificate or key cannot be loaded" },
  RMON_ERR_BIND: { exit: EXIT.BIND, text: "a listening address cannot be bound (in use, or not local)" },
  RMON_ERR_LOG_FILE: { exit: EXIT.LOG_FILE, text: "the log file cannot be opened for writing" },
  RMON_ERR_CHECK_FAILED: { exit: EXIT.CHECK_FAILED, text: "the self-test round trip did not complete" },
});

export type ErrorCode = keyof typeof ERRORS;

export class MonitorError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: number;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MonitorError";
    this.code = code;
    this.exitCode = ERRORS[code].exit;
  }
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
