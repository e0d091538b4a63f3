// Wires the broker link, the channel store and the browser gateway together, and owns
// start-up and shutdown. Data flows one way: broker link -> store -> gateway.
import { readFileSync } from "node:fs";
import { BrokerLink } from "./broker-link.ts";
import { BrowserGateway, type TlsFiles } from "./browser-gateway.ts";
import { ChannelStore } from "./channel-store.ts";
import type { Config } from "./config.ts";
import { CLOSE, MonitorError } from "./errors.ts";
import type { HttpEndpoints } from "./http-endpoints.ts";
import { WarnLimiter, type Log } from "./logger.ts";

export type MonitorState = "starting" | "ready" | "draining" | "stopped";

export class Monitor {
  config: Config;
  readonly log: Log;
  readonly store: ChannelStore;
  readonly broker: BrokerLink;
  readonly gateway: BrowserGateway;
  http: HttpEndpoints | null = null;
  state: MonitorState = "starting";
  readonly counters = { malformed: 0 };
  private sweepTimer: ReturnType<typeof setInterval> | null = null;
  private stopping: Promise<void> | null = null;
  private readonly warnLimiter: WarnLimiter;
  /** Resolves with the reason once the monitor has stopped. */
  readonly stopped: Promise<string>;
  private resolveStopped!: (reason: string) => void;

  constructor(config: Config, log: Log) {
    this.config = config;
    this.log = log;
    this.stopped = new Promise((resolve) => (this.resolveStopped = resolve));
    this.warnLimiter = new WarnLimiter(log);
    this.store = new ChannelStore(config.retention, {
      dropped: (ch, cause) => {
        if (cause === "shutdown") return;
        const what = cause === "finished" ? "finished_ttl passed" : cause === "idle" ? `no message for ${this.config.retention.idle_ttl} s` : "evicted at a retention cap";
        const line = `channel ${ch.id} dropped (${what}; ${ch.nextOffset - ch.baseOffset} messages${ch.finishedAt === 0 ? ", never FINISHED" : ""})`;
        if (cause === "evicted") this.warnLimiter.warn("evicted", line);
        else log.info(line);
      },
      truncated: (ch) =>
        this.warnLimiter.warn("truncated",
          `channel ${ch.id} reached a history cap (retention.max_messages_per_channel or max_bytes_per_channel): its oldest messages are no longer replayed to new subscribers`,
        ),
      late: (ch, command) => {
        if (log.debugEnabled) log.debug(`channel ${ch.id}: ${command} after FINISHED not delivered`);
      },
    });
    this.broker = new BrokerLink(
      {
        message: (m) => {
          this.store.publish(m.channel, m.command, m.json);
        },
        invalid: (reason, channel) => {
          this.counters.malformed++;
          this.warnLimiter.warn("malformed", `ZeroMQ message skipped: ${reason}${channel !== undefined ? ` (channel ${channel.slice(0, 80)})` : ""}`);
        },
        exit: () => {
          if (this.config.broker.allow_exit_command) {
            void this.stop("exit command received over ZeroMQ");
          } else {
            this.warnLimiter.warn("exit", "exit command received over ZeroMQ ignored (broker.allow_exit_command is false)");
          }
        },
        peer: (event, address) => log.info(`ZeroMQ peer ${event} (${address})`),
      },
      config.limits.max_channel_id_length,
      config.retention.max_bytes_per_channel,
    );
    this.gateway = new BrowserGateway(this.store, config, log, loadTls(config));
  }

  /** Binds both ports (or neither) and starts relaying. */
  async start(): Promise<void> {
    const { config, log } = this;
    if (config.http.enabled) {
      // prom-client is loaded only when the endpoints are on: it is most of the start-up time.
      const { HttpEndpoints } = await import("./http-endpoints.ts");
      this.http = new HttpEndpoints(this);
      if (config.http.uri === null) this.gateway.httpHandler = this.http.handler;
    }
    await this.broker.bind(config.zeromq_uri);
    try {
      await this.gateway.listen(config.websocket_uri);
      if (this.http !== null && config.http.uri !== null) await this.http.listen(config.http.uri);
    } catch (err) {
      this.broker.close();
      await this.gateway.close(CLOSE.SHUTDOWN, 0).catch(() => {});
      throw err;
    }
    this.broker.run().catch((err: Error) => {
      log.critical(`ZeroMQ receive loop failed: ${err.message}`);
      void this.stop("ZeroMQ receive loop failed");
    });
    this.startSweep();
    this.state = "ready";
    const scheme = this.gateway.tls ? "wss" : "ws";
    log.info(
      `recodex-monitor ready: ${scheme}://${config.websocket_uri[0] || "*"}:${this.gateway.port}, ZeroMQ ${this.broker.endpoint}${this.http ? `, HTTP endpoints on ${config.http.uri === null ? "the WebSocket port" : `port ${this.http.port}`}` : ""}`,
    );
  }

  /** Stops accepting, closes every client with 1001, and resolves when all is let go. */
  stop(reason: string): Promise<void> {
    if (this.stopping !== null) return this.stopping;
    this.stopping = (async () => {
      this.state = "draining";
      this.log.info(`stopping: ${reason}`);
      if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
      this.sweepTimer = null;
      this.broker.close();
      this.store.clear(CLOSE.SHUTDOWN);
      await this.gateway.close(CLOSE.SHUTDOWN, this.config.limits.drain_timeout * 1000);
      await this.http?.close();
      this.state = "stopped";
      this.log.info("stopped");
      this.resolveStopped(reason);
    })();
    return this.stopping;
  }

  /**
   * Applies what can change safely while running and logs what changed. All or nothing:
   * anything that can fail (reading the TLS files) happens before the first change.
   */
  reload(next: Config): void {
    const changes: string[] = [];
    const prev = this.config;
    const note = (key: string, a: unknown, b: unknown) => {
      if (JSON.stringify(a) !== JSON.stringify(b)) changes.push(`${key}: ${JSON.stringify(a)} -> ${JSON.stringify(b)}`);
    };
    note("logger.level", prev.logger.level, next.logger.level);
    for (const section of ["retention", "limits", "keepalive", "access", "broker"] as const) {
      for (const key of Object.keys(next[section]) as (keyof (typeof next)[typeof section])[]) {
        note(`${section}.${String(key)}`, prev[section][key], next[section][key]);
      }
    }
    const fixed: string[] = [];
    const needsRestart = (key: string, a: unknown, b: unknown) => {
      if (JSON.stringify(a) !== JSON.stringify(b)) fixed.push(key);
    };
    needsRestart("websocket_uri", prev.websocket_uri, next.websocket_uri);
    needsRestart("zeromq_uri", prev.zeromq_uri, next.zeromq_uri);
    needsRestart("logger.file", prev.logger.file, next.logger.file);
    needsRestart("logger.max-size", prev.logger["max-size"], next.logger["max-size"]);
    needsRestart("logger.rotations", prev.logger.rotations, next.logger.rotations);
    needsRestart("websocket.permessage_deflate", prev.websocket.permessage_deflate, next.websocket.permessage_deflate);
    needsRestart("websocket.resumable", prev.websocket.resumable, next.websocket.resumable);
    needsRestart("http", prev.http, next.http);
    // TLS can be re-keyed but not switched on or off: a running wss server stays one.
    const tlsPaths = this.gateway.tls === (next.websocket.tls_cert !== null) ? next.websocket : prev.websocket;
    if (tlsPaths !== next.websocket) fixed.push("websocket.tls_cert");

    const merged: Config = {
      ...next,
      websocket_uri: prev.websocket_uri,
      zeromq_uri: prev.zeromq_uri,
      logger: { ...next.logger, file: prev.logger.file, "max-size": prev.logger["max-size"], rotations: prev.logger.rotations },
      websocket: {
        ...next.websocket,
        permessage_deflate: prev.websocket.permessage_deflate,
        resumable: prev.websocket.resumable,
        tls_cert: tlsPaths.tls_cert,
        tls_key: tlsPaths.tls_key,
      },
      http: prev.http,
    };
    if (this.gateway.tls) {
      this.gateway.reloadTls(loadTls(merged) as TlsFiles);
      changes.push("TLS certificate and key re-read");
    }
    this.config = merged;
    this.store.setLimits(merged.retention);
    this.broker.setLimits(merged.limits.max_channel_id_length, merged.retention.max_bytes_per_channel);
    this.gateway.setSettings(merged);
    if (this.sweepTimer !== null) this.startSweep();
    for (const key of fixed) changes.push(`${key} changed but needs a restart: kept the running value`);
    // The line is written at the more verbose of the two levels, so that turning the level
    // up does not hide the news that it was turned up.
    const levels = ["debug", "info", "warning", "error", "critical"];
    const verbose = levels.indexOf(prev.logger.level) < levels.indexOf(merged.logger.level) ? prev.logger.level : merged.logger.level;
    this.log.setLevel(verbose === "debug" ? "debug" : "info");
    this.log.info(changes.length > 0 ? `configuration reloaded: ${changes.join("; ")}` : "configuration reloaded: nothing changed");
    this.log.setLevel(merged.logger.level);
  }

  private startSweep(): void {
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    this.sweepTimer = setInterval(() => {
      this.store.sweep();
      this.warnLimiter.flush();
    }, this.store.sweepInterval());
    this.sweepTimer.unref();
  }
}

export function loadTls(config: Config): TlsFiles | null {
  const { tls_cert: cert, tls_key: key } = config.websocket;
  if (cert === null || key === null) return null;
  const read = (path: string, what: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new MonitorError("RMON_ERR_TLS", `TLS ${what} ${path} cannot be read: ${(err as Error).message}`);
    }
  };
  return { cert: read(cert, "certificate (websocket.tls_cert)"), key: read(key, "key (websocket.tls_key)") };
}
