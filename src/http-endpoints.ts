// Health, metrics and status over HTTP: /livez, /readyz, /metrics (Prometheus text format via
// prom-client) and /status (JSON, for `recodex-monitor status`), served on a port of their
// own (http.uri) or, when the config says so, on the WebSocket port. Anything else is
// answered and its connection closed, its body unread. No metric names a channel or a client
// address.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import pkg from "../package.json" with { type: "json" };
import type { ChannelStatus } from "./store-backend.ts";
import type { Address } from "./config.ts";
import { answerAndClose, listenOn } from "./web-server.ts";
import type { Monitor } from "./monitor.ts";

export class HttpEndpoints {
  private readonly monitor: Monitor;
  readonly registry = new Registry();
  private server: Server | null = null;
  private evaluation!: Histogram;
  private downloadedToStarted!: Histogram;
  port = 0;

  constructor(monitor: Monitor) {
    this.monitor = monitor;
    this.defineMetrics();
  }

  readonly handler = (req: IncomingMessage, res: ServerResponse): void => {
    const [path, query = ""] = (req.url ?? "/").split("?", 2);
    if (req.method !== "GET" && req.method !== "HEAD") {
      answerAndClose(res, 405, TEXT, "method not allowed\n");
    } else if (hasBody(req)) {
      answerAndClose(res, 400, TEXT, "a GET has no body\n");
    } else if (path === "/livez") {
      reply(res, 200, "ok\n");
    } else if (path === "/readyz") {
      const state = this.monitor.state;
      const store = this.monitor.store;
      const health = store.health();
      // The memory store cannot fail; the Redis store's link is part of being ready.
      reply(res, state === "ready" && health.up ? 200 : 503, store.kind === "memory" ? `${state}\n` : `${state}\n${health.detail}\n`);
    } else if (path === "/metrics") {
      this.registry.metrics().then(
        (text) => reply(res, 200, text, this.registry.contentType),
        (err: Error) => reply(res, 500, `metrics failed: ${err.message}\n`),
      );
    } else if (path === "/status") {
      this.status(new URLSearchParams(query)).then(
        ({ code, body }) => reply(res, code, JSON.stringify(body) + "\n", "application/json"),
        (err: Error) => reply(res, 500, JSON.stringify({ error: `status failed: ${err.message}` }) + "\n", "application/json"),
      );
    } else {
      answerAndClose(res, 404, TEXT, "not found: try /livez, /readyz, /metrics or /status (WebSocket clients: connect with an Upgrade)\n");
    }
  };

  async listen(address: Address): Promise<void> {
    const server = createServer(this.handler);
    this.server = server;
    this.port = await listenOn(server, address, "HTTP", "http.uri");
  }

  async close(): Promise<void> {
    const server = this.server;
    if (server === null) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private defineMetrics(): void {
    const m = this.monitor;
    const registers = [this.registry];
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({ name, help, registers, collect() { this.set(read()); } });
    // Counters mirror plain numbers kept on the hot path; prom-client reads them on scrape.
    const counter = (name: string, help: string, read: () => number) => {
      let last = 0;
      return new Counter({
        name,
        help,
        registers,
        collect() {
          const now = read();
          if (now > last) this.inc(now - last);
          last = now;
        },
      });
    };
    // The same for a record of counts by label value; every value is exported from the
    // start (as 0), so that a query over it has data before the first event.
    const labelledCounter = (name: string, help: string, label: string, read: () => Readonly<Record<string, number>>) => {
      const last: Record<string, number> = {};
      return new Counter({
        name,
        help,
        labelNames: [label],
        registers,
        collect() {
          for (const [value, n] of Object.entries(read())) {
            this.inc({ [label]: value }, Math.max(0, n - (last[value] ?? 0)));
            last[value] = n;
          }
        },
      });
    };
    const s = m.store.counters;
    const g = m.gateway.counters;
    const j = m.jobs;
    gauge("recodex_monitor_connections", "Open WebSocket connections", () => m.gateway.connections);
    gauge("recodex_monitor_sockets", "Open connections on the WebSocket port, from accept (also those not yet upgraded)", () => m.gateway.sockets);
    gauge("recodex_monitor_max_connections", "The connection cap in force (access.max_connections or the open-files limit)", () => m.gateway.maxConnections);
    gauge("recodex_monitor_buffered_bytes", "Bytes written to WebSocket clients and not yet taken by them", () => m.gateway.bufferedBytes);
    gauge("recodex_monitor_subscribers", "Open WebSocket connections subscribed to a channel", () => m.gateway.subscribers);
    gauge("recodex_monitor_channels", "Channels kept", () => m.store.size);
    gauge("recodex_monitor_stored_messages", "Messages kept for replay", () => m.store.totalMessages);
    gauge("recodex_monitor_stored_bytes", "Bytes of messages kept for replay", () => m.store.totalBytes);
    gauge("recodex_monitor_history_buffer_bytes", "Bytes of the buffers the memory store keeps history in, used or free for reuse (0 with the Redis store)", () => m.store.historyBufferBytes);
    gauge("recodex_monitor_zeromq_peers", "Connected ZeroMQ peers (brokers)", () => m.broker.peers);
    gauge("recodex_monitor_ready", "1 when ready to serve, 0 while starting or draining", () => (m.state === "ready" ? 1 : 0));
    gauge("recodex_monitor_start_time_seconds", "When the monitor process started, in seconds since the Unix epoch", () => STARTED_AT);
    counter("recodex_monitor_messages_in_total", "Messages received from the broker and stored", () => s.published);
    counter("recodex_monitor_messages_out_total", "Messages written to WebSocket clients (live and replay)", () => g.sentFrames);
    counter("recodex_monitor_messages_out_bytes_total", "Bytes of messages written to WebSocket clients", () => g.sentBytes);
    counter("recodex_monitor_late_messages_total", "Messages after FINISHED, not delivered", () => s.late);
    counter("recodex_monitor_malformed_zeromq_messages_total", "ZeroMQ messages skipped as malformed", () => m.counters.malformed);
    counter("recodex_monitor_connections_total", "WebSocket connections accepted", () => g.accepted);
    counter("recodex_monitor_ignored_client_messages_total", "Client messages after the channel id, ignored", () => g.ignoredMessages);
    counter("recodex_monitor_subscriptions_total", "Channel subscriptions (first messages accepted)", () => g.subscriptions);
    counter("recodex_monitor_replays_total", "History replays started", () => s.replays);
    counter("recodex_monitor_replayed_messages_total", "Messages sent from history", () => s.replayedMessages);
    counter("recodex_monitor_resumes_total", "Subscriptions that resumed after an offset", () => g.resumes);
    counter("recodex_monitor_slow_client_disconnects_total", "Clients dropped for exceeding limits.max_buffered_bytes", () => g.slowClients);
    counter("recodex_monitor_buffer_limit_disconnects_total", "Clients dropped, furthest behind first, at limits.max_total_buffered_bytes", () => g.bufferLimitCuts);
    counter("recodex_monitor_stalled_client_disconnects_total", "Clients dropped for a backlog that did not shrink in limits.backlog_timeout", () => g.stalledClients);
    counter("recodex_monitor_handshake_timeouts_total", "Connections closed for not completing their request headers in limits.handshake_timeout", () => g.handshakeTimeouts);
    counter("recodex_monitor_unknown_channel_subscriptions_total", "Subscriptions to channels the broker had not written to", () => g.unknownChannelSubscriptions);
    counter("recodex_monitor_ping_timeout_disconnects_total", "Clients dropped for not answering a keepalive ping", () => g.pingTimeouts);
    counter("recodex_monitor_subscribe_timeouts_total", "Clients closed for sending no channel id in time", () => g.subscribeTimeouts);
    counter("recodex_monitor_bad_first_messages_total", "Clients closed for a binary, empty or oversized first message", () => g.badFirstMessage);
    counter("recodex_monitor_channels_expired_total", "Channels dropped after idle_ttl without a message", () => s.expired);
    counter("recodex_monitor_channels_evicted_total", "Channels evicted at a retention cap", () => s.evicted);
    counter("recodex_monitor_channels_finished_total", "Finished channels dropped after finished_ttl", () => s.finishedDropped);
    counter("recodex_monitor_truncated_messages_total", "Messages dropped from history at a per-channel cap", () => s.truncatedMessages);
    // The channel store's backend (store.kind) and its link.
    gauge("recodex_monitor_store_up", "1 while the channel store's backend answers (the memory store always does)", () => (m.store.health().up ? 1 : 0));
    gauge("recodex_monitor_store_waiting_channels", "Channels only browsers have asked for (no broker message yet)", () => m.store.waitingChannels);
    gauge("recodex_monitor_store_pending_messages", "Broker messages not yet written to the store's backend (Redis)", () => m.store.pending);
    counter("recodex_monitor_store_waiting_refused_total", "Subscriptions to unknown channels closed at store.max_waiting_channels", () => s.waitingRefused);
    counter("recodex_monitor_store_dropped_messages_total", "Broker messages dropped past store.redis.max_pending", () => s.pendingDropped);
    counter("recodex_monitor_store_reconnects_total", "Connections to Redis lost (or timed out) and made anew", () => s.reconnects);
    counter("recodex_monitor_store_resyncs_total", "Channels re-read from Redis because live delivery could not vouch for them", () => s.resyncs);
    labelledCounter("recodex_monitor_refused_upgrades_total", "Connections (at accept) and WebSocket upgrades refused, by reason", "reason", () => g.refused);

    gauge("recodex_monitor_jobs_in_progress", "Jobs whose last message is not FINISHED, FAILED or ABORTED", () => j.inProgress);
    gauge("recodex_monitor_jobs_failed_or_aborted", "Jobs whose last message is a FAILED or ABORTED without FINISHED (counted as ended when their channel is dropped)", () => j.failedOrAborted);
    labelledCounter("recodex_monitor_jobs_ended_total", "Jobs ended, by how: finished, or dropped without FINISHED after a FAILED or ABORTED, or expired or evicted", "outcome", () => j.ended);
    counter("recodex_monitor_jobs_reassigned_total", "New runs of a job (DOWNLOADED after its FAILED or ABORTED)", () => j.reassigned);
    labelledCounter("recodex_monitor_tasks_total", "TASK messages, by task state", "state", () => j.tasks);
    this.evaluation = new Histogram({
      name: "recodex_monitor_job_evaluation_seconds",
      help: "Time from a job's first message to its FINISHED",
      buckets: [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600],
      registers,
    });
    this.downloadedToStarted = new Histogram({
      name: "recodex_monitor_job_downloaded_to_started_seconds",
      help: "Time from a run's DOWNLOADED to its STARTED",
      buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
      registers,
    });
    const [evaluation, downloadedToStarted] = [this.evaluation, this.downloadedToStarted];
    m.jobs.timings = {
      evaluation: (seconds) => evaluation.observe(seconds),
      downloadedToStarted: (seconds) => downloadedToStarted.observe(seconds),
    };
  }

  /** What `recodex-monitor status` shows; channel ids only for `channel=ID`, or `channels=N` when allowed. */
  private async status(params: URLSearchParams): Promise<{ code: number; body: unknown }> {
    const m = this.monitor;
    const one = params.get("channel");
    if (one !== null) {
      const ch = m.store.describe(one);
      return ch === undefined ? { code: 404, body: { error: "no such channel", channel: one } } : { code: 200, body: detail(ch) };
    }
    const listed = params.get("channels");
    let channels: unknown[] | undefined;
    if (listed !== null) {
      if (!m.config.http.list_channels) {
        return { code: 403, body: { error: "channel ids are not listed", key: "http.list_channels" } };
      }
      const limit = Number(listed);
      if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LISTED) {
        return { code: 400, body: { error: `channels takes a number from 1 to ${MAX_LISTED}` } };
      }
      channels = [...m.jobs.channels()]
        .map((id) => m.store.describe(id))
        .filter((ch) => ch !== undefined)
        .sort((a, b) => b.lastActivity - a.lastActivity)
        .slice(0, limit)
        .map(detail);
    }
    const s = m.store.counters;
    const g = m.gateway.counters;
    const j = m.jobs;
    const body = {
      version: pkg.version,
      state: m.state,
      uptime_seconds: round(process.uptime()),
      store: {
        backend: m.store.kind,
        up: m.store.health().up,
        channels: m.store.size,
        finished: j.finishedKept,
        unfinished: m.store.size - j.finishedKept,
        messages: m.store.totalMessages,
        bytes: m.store.totalBytes,
      },
      connections: m.gateway.connections,
      subscribers: m.gateway.subscribers,
      zeromq_peers: m.broker.peers,
      messages: { in: s.published, out: g.sentFrames, out_bytes: g.sentBytes, late: s.late, malformed: m.counters.malformed },
      channels_dropped: { finished: s.finishedDropped, expired: s.expired, evicted: s.evicted },
      truncated_messages: s.truncatedMessages,
      refused_upgrades: { ...g.refused },
      disconnects: {
        slow_client: g.slowClients,
        ping_timeout: g.pingTimeouts,
        subscribe_timeout: g.subscribeTimeouts,
        bad_first_message: g.badFirstMessage,
      },
      jobs: {
        in_progress: j.inProgress,
        failed_or_aborted: j.failedOrAborted,
        reassigned: j.reassigned,
        ended: { ...j.ended },
        tasks: { ...j.tasks },
        evaluation_seconds: await summary(this.evaluation),
        downloaded_to_started_seconds: await summary(this.downloadedToStarted),
      },
      ...(channels !== undefined ? { channels } : {}),
    };
    return { code: 200, body };
  }

}

const MAX_LISTED = 10_000;
const STARTED_AT = performance.timeOrigin / 1000;

/** What status shows of one channel. */
function detail(ch: ChannelStatus) {
  return {
    id: ch.id,
    messages: ch.messages,
    kept: ch.kept,
    finished: ch.finished,
    subscribers: ch.subscribers,
    idle_seconds: round((performance.now() - ch.lastActivity) / 1000),
    last: ch.last === null ? null : (JSON.parse(ch.last) as unknown),
  };
}

function round(seconds: number): number {
  return Math.round(seconds * 1000) / 1000;
}

async function summary(h: Histogram): Promise<{ count: number; sum: number }> {
  const { values } = await h.get();
  const pick = (suffix: string) => values.find((v) => v.metricName?.endsWith(suffix))?.value ?? 0;
  return { count: pick("_count"), sum: round(pick("_sum")) };
}

const TEXT = Object.freeze({ "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store" });

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

function reply(res: ServerResponse, status: number, body: string, type = "text/plain; charset=utf-8"): void {
  res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store" });
  res.end(body);
}
