// `recodex-monitor check`: plays the broker and a browser against the running monitor at
// the configured addresses, pushes a test job through it and reports each step's timing.
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { WebSocket } from "ws";
import type { Config } from "./config.ts";
import { EXIT } from "./errors.ts";
import { encodeMessage } from "./frames.ts";
import { BrokerPeer, httpGet, monitorUrls, withTimeout } from "./monitor-client.ts";

class StepFailed extends Error {}

export async function runSelfTest(config: Config, timeoutSeconds: number, print: (line: string) => void): Promise<number> {
  const timeoutMs = timeoutSeconds * 1000;
  const channel = `selftest_${randomBytes(8).toString("hex")}`;
  const urls = monitorUrls(config);
  const { ws: wsUrl, zmq: zmqUrl } = urls;
  const started = performance.now();
  const cleanups: (() => void)[] = [];

  const step = async <T>(what: string, action: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      const result = await withTimeout(action(), timeoutMs, what);
      print(`ok    ${what} (${(performance.now() - t0).toFixed(1)} ms)`);
      return result;
    } catch (err) {
      print(`FAIL  ${what}: ${(err as Error).message}`);
      throw new StepFailed(what);
    }
  };

  print(`recodex-monitor self-test: WebSocket ${wsUrl}, ZeroMQ ${zmqUrl}, channel ${channel}`);
  try {
    if (urls.http !== null) {
      const httpUrl = urls.http;
      await step(`GET ${httpUrl}readyz`, async () => {
        const res = await httpGet(`${httpUrl}readyz`, timeoutMs);
        if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${res.body.trim()}`);
      });
    }
    const browser = await step("WebSocket connection", () => openClient(wsUrl, cleanups));
    browser.ws.send(channel);
    const broker = await BrokerPeer.connect(zmqUrl, timeoutMs);
    cleanups.push(() => broker.close());
    const sequence: string[][] = [["DOWNLOADED"], ["TASK", "selftest-task", "COMPLETED"], ["FINISHED"]];
    const expected = sequence.map((values) => encodeMessage(values));
    await step("ZeroMQ connection (handshake with recodex-monitor)", () =>
      broker.send([channel, ...sequence[0]]),
    );
    await step(`relay of ${sequence[0].join(" ")}`, () => browser.next(expected[0]));
    for (let i = 1; i < sequence.length; i++) {
      await broker.send([channel, ...sequence[i]]);
      await step(`relay of ${sequence[i].join(" ")}`, () => browser.next(expected[i]));
    }
    await step("close with 1000 after FINISHED", () => browser.closedWith(1000));
    const late = await step("second WebSocket connection", () => openAfterClose(wsUrl, cleanups));
    late.ws.send(channel);
    await step("history replay to a late subscriber", async () => {
      for (const e of expected) await late.next(e);
      await late.closedWith(1000);
    });
    print(`PASS  round trip through the monitor in ${(performance.now() - started).toFixed(1)} ms`);
    return EXIT.OK;
  } catch (err) {
    if (!(err instanceof StepFailed)) print(`FAIL  ${(err as Error).message}`);
    print("the monitor did not relay the test job: see its log (logger.file) and `systemctl status recodex-monitor`");
    return EXIT.CHECK_FAILED;
  } finally {
    for (const c of cleanups) c();
  }
}

/**
 * The second connection, from the same address as the first, which has just closed. Under
 * access.max_connections_per_ip: 1 the monitor frees the first one's place once it has seen
 * that socket close, which can be a moment after this side saw it: a 429 then is asked again,
 * for up to a second.
 */
async function openAfterClose(url: string, cleanups: (() => void)[]): Promise<Client> {
  const until = performance.now() + 1000;
  for (;;) {
    try {
      return await openClient(url, cleanups);
    } catch (err) {
      if (!/\b429\b/.test((err as Error).message) || performance.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

interface Client {
  ws: WebSocket;
  next(expected: string): Promise<void>;
  closedWith(code: number): Promise<void>;
}

function openClient(url: string, cleanups: (() => void)[]): Promise<Client> {
  const ws = new WebSocket(url, { perMessageDeflate: false, rejectUnauthorized: false });
  cleanups.push(() => ws.terminate());
  const inbox: string[] = [];
  let wake: (() => void) | null = null;
  let closed: number | null = null;
  ws.on("message", (data: Buffer) => {
    inbox.push(data.toString());
    wake?.();
  });
  ws.on("close", (code: number) => {
    closed = code;
    wake?.();
  });
  const waitFor = async (ready: () => boolean) => {
    while (!ready()) await new Promise<void>((r) => (wake = r));
  };
  const client: Client = {
    ws,
    async next(expected) {
      await waitFor(() => inbox.length > 0 || closed !== null);
      const got = inbox.shift();
      if (got === undefined) throw new Error(`connection closed with ${closed} before the message arrived`);
      if (got !== expected) throw new Error(`expected ${expected}, got ${got}`);
    },
    async closedWith(code) {
      await waitFor(() => closed !== null);
      if (closed !== code) throw new Error(`closed with ${closed}, expected ${code}`);
    },
  };
  return new Promise((resolve, reject) => {
    ws.once("open", () => resolve(client));
    ws.once("error", (err) => reject(new Error(`${err.message} (is the monitor running and websocket_uri right?)`)));
  });
}
