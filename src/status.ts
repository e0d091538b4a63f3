// `recodex-monitor status`: what the running monitor holds now, from its /status endpoint,
// as a few lines for a person or (--json) as the endpoint's JSON. Channel ids appear only
// when asked for: one channel by its id, or a listing if the monitor allows it.
import { monitorError } from "./errors.ts";
import { httpGet } from "./monitor-client.ts";

export interface StatusOptions {
  /** The HTTP endpoints' base URL ending in "/"; null when the config has them off. */
  base: string | null;
  channel: string | undefined;
  /** List this many channels (the most recently active first). */
  list: number | undefined;
  json: boolean;
  timeoutMs: number;
}

export async function runStatus(o: StatusOptions, out: (line: string) => void): Promise<number> {
  if (o.base === null) {
    throw monitorError("RMON_ERR_SWITCHED_OFF", { what: "the HTTP endpoint /status", key: "http.enabled", apply: "restart it" });
  }
  const query = o.channel !== undefined ? `?channel=${encodeURIComponent(o.channel)}` : o.list !== undefined ? `?channels=${o.list}` : "";
  const url = `${o.base}status${query}`;
  let reply: { status: number; body: string };
  try {
    reply = await httpGet(url, o.timeoutMs);
  } catch (err) {
    throw unreachable(url, (err as Error).message);
  }
  if (reply.status === 426) {
    // The WebSocket port answers plain requests this way when the endpoints are off.
    throw monitorError("RMON_ERR_SWITCHED_OFF", {
      what: "the HTTP endpoint /status",
      key: "http.enabled",
      apply: "restart it (it was started without them)",
    });
  }
  let body: unknown;
  try {
    body = JSON.parse(reply.body);
  } catch {
    throw unreachable(url, `HTTP ${reply.status}, not a status report: ${reply.body.trim().slice(0, 120)}`);
  }
  if (reply.status === 403 && (body as { key?: unknown }).key === "http.list_channels") {
    throw monitorError("RMON_ERR_SWITCHED_OFF", {
      what: "listing channel ids",
      key: "http.list_channels",
      apply: "reload it (SIGHUP: systemctl kill -s HUP recodex-monitor)",
    });
  }
  if (reply.status === 404 && o.channel !== undefined) throw monitorError("RMON_ERR_NO_CHANNEL", { channel: o.channel });
  if (reply.status !== 200) throw unreachable(url, `HTTP ${reply.status}: ${(body as { error?: string }).error ?? reply.body.trim()}`);

  if (o.json) {
    out(JSON.stringify(body, null, 2));
  } else if (o.channel !== undefined) {
    for (const line of channelLines(body as ChannelDetail)) out(line);
  } else {
    for (const line of summaryLines(body as Report, o.base)) out(line);
  }
  return 0;
}

function unreachable(url: string, reason: string) {
  return monitorError("RMON_ERR_UNREACHABLE", {
    what: "HTTP endpoint",
    url,
    reason,
    hint: "is the monitor running, and http.uri (or websocket_uri) right?",
  });
}

interface ChannelDetail {
  id: string;
  messages: number;
  kept: number;
  finished: boolean;
  subscribers: number;
  idle_seconds: number;
  last: unknown;
}

interface Summary {
  count: number;
  sum: number;
}

/** The shape of GET /status (src/http-endpoints.ts). */
interface Report {
  version: string;
  state: string;
  uptime_seconds: number;
  store: { backend: string; up: boolean; channels: number; finished: number; unfinished: number; messages: number; bytes: number };
  connections: number;
  subscribers: number;
  zeromq_peers: number;
  messages: { in: number; out: number; out_bytes: number; late: number; malformed: number };
  channels_dropped: { finished: number; expired: number; evicted: number };
  truncated_messages: number;
  refused_upgrades: Record<string, number>;
  disconnects: Record<string, number>;
  jobs: {
    in_progress: number;
    failed_or_aborted: number;
    reassigned: number;
    ended: Record<string, number>;
    tasks: Record<string, number>;
    evaluation_seconds: Summary;
    downloaded_to_started_seconds: Summary;
  };
  channels?: ChannelDetail[];
}

function summaryLines(r: Report, base: string): string[] {
  const pairs = (record: Record<string, number>) =>
    Object.entries(record)
      .map(([k, v]) => `${k.replaceAll("_", " ")} ${v}`)
      .join(", ");
  const mean = (s: Summary, what: string) => (s.count === 0 ? `no ${what}s yet` : `${plural(s.count, what)}, mean ${seconds(s.sum / s.count)}`);
  const lines = [
    `recodex-monitor ${r.version} at ${base}: ${r.state}, up ${duration(r.uptime_seconds)}`,
    row("store", `${r.store.backend}${r.store.up ? "" : " (DOWN)"}: ${plural(r.store.channels, "channel")} kept (${r.store.finished} finished, ${r.store.unfinished} not), ${r.store.messages} messages, ${bytes(r.store.bytes)}`),
    row("clients", `${plural(r.connections, "connection")}, ${r.subscribers} subscribed; ${plural(r.zeromq_peers, "ZeroMQ peer")}`),
    row("messages", `${r.messages.in} in, ${r.messages.out} out (${bytes(r.messages.out_bytes)}); ${r.messages.late} after FINISHED, ${r.messages.malformed} malformed`),
    row("channels dropped", `${pairs(r.channels_dropped)}; ${r.truncated_messages} messages truncated from history`),
    row("refused", pairs(r.refused_upgrades)),
    row("disconnected", pairs(r.disconnects)),
    row("jobs", `${r.jobs.in_progress} in progress, ${r.jobs.failed_or_aborted} failed or aborted (not yet dropped), ${r.jobs.reassigned} reassigned`),
    row("jobs ended", pairs(r.jobs.ended)),
    row("tasks", pairs(r.jobs.tasks)),
    row("evaluation", mean(r.jobs.evaluation_seconds, "finished job")),
    row("DOWNLOADED->STARTED", mean(r.jobs.downloaded_to_started_seconds, "run")),
  ];
  if (r.channels !== undefined) {
    lines.push(`channels (${r.channels.length} most recently active):`);
    for (const c of r.channels) {
      lines.push(`  ${c.id}  ${c.messages} messages${c.finished ? ", finished" : ""}, ${c.subscribers} subscribed, idle ${seconds(c.idle_seconds)}, last ${JSON.stringify(c.last)}`);
    }
  }
  return lines;
}

function channelLines(c: ChannelDetail): string[] {
  return [
    `channel ${c.id}`,
    row("messages", `${c.messages} (${c.kept} kept for replay)`),
    row("finished", c.finished ? "yes" : "no"),
    row("subscribers", String(c.subscribers)),
    row("last message", `${seconds(c.idle_seconds)} ago: ${JSON.stringify(c.last)}`),
  ];
}

function plural(n: number, what: string): string {
  return `${n} ${what}${n === 1 ? "" : "s"}`;
}

function row(label: string, text: string): string {
  return `${label.padEnd(20)}${text}`;
}

function seconds(s: number): string {
  return `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`;
}

function duration(s: number): string {
  if (s < 120) return `${Math.floor(s)} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172_800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86_400)} d ${Math.floor((s % 86_400) / 3600)} h`;
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
