// Wires the broker link, the channel store and the browser gateway together, and owns
// start-up and shutdown. Data flows one way: broker link -> store -> gateway.
import { readFileSync } from "node:fs";
import { BrokerLink } from "./broker-link.ts";
import { BrowserGateway, type TlsFiles } from "./browser-gateway.ts";
import { ChannelStore as MemoryStore } from "./channel-store.ts";
import { combine, LOG_LEVELS, valueAt, type Config } from "./config.ts";
import { CLOSE, monitorError, reasonOf } from "./errors.ts";
import type { HttpEndpoints } from "./http-endpoints.ts";
import { JobMetrics } from "./job-metrics.ts";
import { WarnLimiter, type Log } from "./logger.ts";
import { StateFile } from "./state-file.ts";
import { clockFloor, type ChannelStore, type StoreHooks } from "./store-backend.ts";
import { RedisStore } from "./store-redis.ts";

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
  readonly jobs = new JobMetrics();
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
    this.store = createStore(config, {
      dropped: (ch, cause) => {
        this.jobs.dropped(ch.id, cause);
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
      waitingRefused: (id) =>
        this.warnLimiter.warn("waiting",
          `subscription to channel ${id.slice(0, 80)} closed with 4001: store.max_waiting_channels (${this.config.store.max_waiting_channels}) channels are already asked for by browsers and have no broker message`,
        ),
      notice: (level, line) => (level === "info" ? log.info(line) : level === "warning" ? this.warnLimiter.warn("store", line) : log.error(line)),
    });
    this.broker = new BrokerLink(
      {
        message: (m) => {
          this.store.publish(m.channel, m.command, m.json);
          this.jobs.message(m.channel, m.command, m.taskState);
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
        acceptFailed: (reason) => this.warnLimiter.warn("zeromq-accept", `ZeroMQ could not accept a broker connection: ${reason}`),
      },
      config.limits.max_channel_id_length,
      config.retention.max_bytes_per_channel,
    );
    this.gateway = new BrowserGateway(this.store, config, log, loadTls(config));
  }

  /** Restores or connects the store, binds both ports (or neither) and starts relaying. */
  async start(): Promise<void> {
    const { config, log } = this;
    if (config.http.enabled) {
      // prom-client is loaded only when the endpoints are on: it is most of the start-up time.
      const { HttpEndpoints } = await import("./http-endpoints.ts");
      this.http = new HttpEndpoints(this);
      if (config.http.uri === null) this.gateway.httpHandler = this.http.handler;
    }
    // Nobody is accepted before the store has its channels back: a browser must not get an
    // empty history that a moment later would have been whole.
    await this.store.open();
    try {
      await this.broker.bind(config.zeromq_uri);
      await this.gateway.listen(config.websocket_uri);
      if (this.http !== null && config.http.uri !== null) await this.http.listen(config.http.uri);
    } catch (err) {
      this.broker.close();
      await this.gateway.close(CLOSE.SHUTDOWN, 0).catch(() => {});
      // What was restored goes back where it came from, for the next attempt.
      await this.store.close(CLOSE.SHUTDOWN, config.limits.drain_timeout * 1000);
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

  /**
   * Takes in what ZeroMQ has already received, lets the store keep it (state file, Redis),
   * closes every client with 1001, and resolves when all is let go.
   */
  stop(reason: string): Promise<void> {
    if (this.stopping !== null) return this.stopping;
    this.stopping = (async () => {
      this.state = "draining";
      this.log.info(`stopping: ${reason}`);
      if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
      this.sweepTimer = null;
      const drainMs = this.config.limits.drain_timeout * 1000;
      await this.broker.drain(Math.min(1000, drainMs));
      await Promise.all([this.store.close(CLOSE.SHUTDOWN, drainMs), this.gateway.close(CLOSE.SHUTDOWN, drainMs)]);
      await this.http?.close();
      this.state = "stopped";
      this.log.info("stopped");
      this.resolveStopped(reason);
    })();
    return this.stopping;
  }

  /**
   * Applies the keys declared "live" (config.ts) and keeps the running value of the others,
   * naming each change in one log line. All or nothing: anything that can fail (reading the
   * TLS files) happens before the first change.
   */
  reload(next: Config): void {
    const prev = this.config;
    const changes: string[] = [];
    const kept: string[] = [];
    // TLS can be re-keyed but not switched on or off: a running wss server stays one.
    const tlsSwitched = this.gateway.tls !== (next.websocket.tls_cert !== null);
    const merged = combine(prev, next, (path, key) => {
      const [a, b] = [JSON.stringify(valueAt(prev, path)), JSON.stringify(valueAt(next, path))];
      if (a === b) return "b";
      if (key.reload === "restart" || (tlsSwitched && path.startsWith("websocket.tls_"))) {
        kept.push(`${path} changed but needs a restart: kept the running value`);
        return "a";
      }
      changes.push(`${path}: ${a} -> ${b}`);
      return "b";
    });
    if (this.gateway.tls) {
      this.gateway.reloadTls(loadTls(merged) as TlsFiles);
      changes.push("TLS certificate and key re-read");
    }
    this.config = merged;
    this.store.setLimits(merged.retention, merged.store);
    this.broker.setLimits(merged.limits.max_channel_id_length, merged.retention.max_bytes_per_channel);
    this.gateway.setSettings(merged);
    if (this.sweepTimer !== null) this.startSweep();
    changes.push(...kept);
    // The line is written at the more verbose of the two levels, so that turning the level
    // up does not hide the news that it was turned up.
    const verbose = LOG_LEVELS.indexOf(prev.logger.level) < LOG_LEVELS.indexOf(merged.logger.level) ? prev.logger.level : merged.logger.level;
    this.log.setLevel(verbose === "debug" ? "debug" : "info");
    this.log.info(changes.length > 0 ? `configuration reloaded: ${changes.join("; ")}` : "configuration reloaded: nothing changed");
    this.log.setLevel(merged.logger.level);
  }

  private startSweep(): void {
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
    this.sweepTimer = setInterval(() => {
      this.store.sweep();
      this.gateway.sweep(this.broker.peers);
      this.warnLimiter.flush();
    }, this.store.sweepInterval());
    this.sweepTimer.unref();
  }
}

/** The backend store.kind names; the rest of the monitor sees only the interface. */
function createStore(config: Config, hooks: StoreHooks): ChannelStore {
  if (config.store.kind === "redis") return new RedisStore(config.retention, config.store, hooks);
  const path = config.store.state_file;
  const maxWaiting = config.store.max_waiting_channels;
  if (path === null) return new MemoryStore(config.retention, hooks, undefined, { maxWaiting });
  // With a state file, offsets must never repeat across lives of the process: when nothing
  // is restored (a crash lost the state), new channels start above the wall clock's floor.
  const persistence = new StateFile(path, (level, line) => hooks.notice?.(level, line));
  return new MemoryStore(config.retention, hooks, undefined, { offsetFloor: clockFloor(Date.now()), persistence, maxWaiting });
}

export function loadTls(config: Config): TlsFiles | null {
  const { tls_cert: cert, tls_key: key } = config.websocket;
  if (cert === null || key === null) return null;
  const read = (path: string, what: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw monitorError("RMON_ERR_TLS", { what: `${what} ${path}`, reason: `cannot be read: ${reasonOf(err)}` });
    }
  };
  return { cert: read(cert, "certificate"), key: read(key, "key") };
}
