// Health and metrics over HTTP: /livez, /readyz and /metrics (Prometheus text format via
// prom-client), served on a port of their own (http.uri) or, when the config says so, on the
// WebSocket port. Anything else is answered and its connection closed, its body unread.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { Counter, Gauge, Registry } from "prom-client";
import type { Address } from "./config.ts";
import { answerAndClose, listenOn } from "./web-server.ts";
import type { Monitor } from "./monitor.ts";

export class HttpEndpoints {
  private readonly monitor: Monitor;
  readonly registry = new Registry();
  private server: Server | null = null;
  port = 0;

  constructor(monitor: Monitor) {
    this.monitor = monitor;
    this.defineMetrics();
  }

  readonly handler = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? "/").split("?")[0];
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
    } else {
      answerAndClose(res, 404, TEXT, "not found: try /livez, /readyz or /metrics (WebSocket clients: connect with an Upgrade)\n");
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
    const s = m.store.counters;
    const g = m.gateway.counters;
    gauge("recodex_monitor_connections", "Open WebSocket connections", () => m.gateway.connections);
    gauge("recodex_monitor_sockets", "Open connections on the WebSocket port, from accept (also those not yet upgraded)", () => m.gateway.sockets);
    gauge("recodex_monitor_max_connections", "The connection cap in force (access.max_connections or the open-files limit)", () => m.gateway.maxConnections);
    gauge("recodex_monitor_buffered_bytes", "Bytes written to WebSocket clients and not yet taken by them", () => m.gateway.bufferedBytes);
    gauge("recodex_monitor_channels", "Channels kept", () => m.store.size);
    gauge("recodex_monitor_stored_messages", "Messages kept for replay", () => m.store.totalMessages);
    gauge("recodex_monitor_stored_bytes", "Bytes of messages kept for replay", () => m.store.totalBytes);
    gauge("recodex_monitor_zeromq_peers", "Connected ZeroMQ peers (brokers)", () => m.broker.peers);
    gauge("recodex_monitor_ready", "1 when ready to serve, 0 while starting or draining", () => (m.state === "ready" ? 1 : 0));
    counter("recodex_monitor_messages_in_total", "Messages received from the broker and stored", () => s.published);
    counter("recodex_monitor_messages_out_total", "Messages written to WebSocket clients (live and replay)", () => g.sentFrames);
    counter("recodex_monitor_bytes_out_total", "Bytes of messages written to WebSocket clients", () => g.sentBytes);
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
    const lastRefused: Record<string, number> = {};
    new Counter({
      name: "recodex_monitor_refused_upgrades_total",
      help: "Connections (at accept) and WebSocket upgrades refused, by reason",
      labelNames: ["reason"],
      registers,
      collect() {
        for (const [reason, n] of Object.entries(g.refused)) {
          this.inc({ reason }, Math.max(0, n - (lastRefused[reason] ?? 0)));
          lastRefused[reason] = n;
        }
      },
    });
  }
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
