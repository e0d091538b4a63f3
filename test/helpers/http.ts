// Plain HTTP(S) requests on loopback, and the monitor's /metrics read as numbers.
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { WAIT_MS } from "./wait.ts";

export interface HttpReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A GET (or another method) to 127.0.0.1:port; https with a CA when `tls`. */
export function httpGet(
  port: number,
  path: string,
  options: { method?: string; tls?: boolean; ca?: Buffer; headers?: Record<string, string> } = {},
): Promise<HttpReply> {
  const request = options.tls ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        path,
        method: options.method ?? "GET",
        headers: options.headers,
        agent: false,
        ...(options.tls ? { ca: options.ca, rejectUnauthorized: options.ca !== undefined } : {}),
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on("error", reject);
      },
    );
    req.setTimeout(WAIT_MS, () => req.destroy(new Error(`${options.method ?? "GET"} ${path} got no answer within ${WAIT_MS} ms`)));
    req.on("error", reject);
    req.end();
  });
}

/** One scrape of /metrics. */
export class Metrics {
  private readonly values = new Map<string, number>();

  constructor(text: string) {
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      const m = line.match(/^(\S+)\s+(\S+)$/);
      if (m) this.values.set(m[1], Number(m[2]));
    }
  }

  /** The value of `name` ('name{label="v"}' for a labelled one); fails when it is not exported. */
  value(name: string): number {
    const v = this.values.get(name);
    if (v === undefined) throw new Error(`metric ${name} not exported; have: ${[...this.values.keys()].join(", ")}`);
    return v;
  }
}

export async function metrics(port: number): Promise<Metrics> {
  const reply = await httpGet(port, "/metrics");
  if (reply.status !== 200) throw new Error(`/metrics answered ${reply.status}: ${reply.body}`);
  return new Metrics(reply.body);
}

/** The current value of one metric. */
export async function metric(port: number, name: string): Promise<number> {
  return (await metrics(port)).value(name);
}
