#!/usr/bin/env node
// A broker (ZeroMQ ROUTER connecting to the monitor) and browsers (WebSocket clients)
// for the package tests: packaging/live-systemd.mjs imports them, packaging/test-arm64.sh
// runs the round trip from the command line. Runs with the repo's node_modules.
//
//   node packaging/roundtrip.mjs [--ws-port 4567] [--zmq-port 7894] [--host 127.0.0.1]
//                                [--channel job1] [--timeout 15000]
// Exit 0 when the client received exactly the original monitor's bytes for DOWNLOADED,
// a TASK with a non-ASCII task id and FINISHED, then a close with code 1000.
import { parseArgs } from "node:util";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "package.json"));
const zmq = require("zeromq");
const { WebSocket } = require("ws");

/** Frames sent by the broker and the exact text frames the original monitor sends. */
export const JOB = [
  [["DOWNLOADED"], '{"command": "DOWNLOADED"}'],
  [["TASK", "úkol-1", "COMPLETED"], '{"command": "TASK", "task_id": "\\u00fakol-1", "task_state": "COMPLETED"}'],
  [["FINISHED"], '{"command": "FINISHED"}'],
];

/** A WebSocket client subscribed to `channel`: its text frames and how it closed. */
export async function openClient({ host = "127.0.0.1", port, channel, timeoutMs = 10_000 }) {
  const ws = new WebSocket(`ws://${host}:${port}/`, { perMessageDeflate: false });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`WebSocket ${host}:${port}: no connection within ${timeoutMs} ms`)), timeoutMs);
    ws.once("open", () => {
      clearTimeout(timer);
      resolve();
    });
    ws.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`WebSocket ${host}:${port}: ${err.message}`));
    });
  });
  ws.on("error", () => {});
  const client = { ws, messages: [], close: null, waiters: [] };
  const wake = () => client.waiters.splice(0).forEach((f) => f());
  ws.on("message", (data, isBinary) => {
    client.messages.push(isBinary ? `<binary ${data.length}>` : data.toString());
    wake();
  });
  ws.on("close", (code) => {
    client.close = code;
    wake();
  });
  ws.send(channel);
  return client;
}

/** Waits until `check(client)` holds (re-checked on every frame and on close). */
export function waitFor(client, check, what, timeoutMs = 15_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`timed out waiting for ${what}: messages ${JSON.stringify(client.messages)}, close ${client.close}`)),
      timeoutMs,
    );
    const test = () => {
      if (check(client)) {
        clearTimeout(timer);
        resolve(client);
      } else client.waiters.push(test);
    };
    test();
  });
}

/** A broker: sends [channel, ...frames] to "recodex-monitor", retrying until connected. */
export function openBroker({ host = "127.0.0.1", port }) {
  const router = new zmq.Router({ mandatory: true, linger: 0 });
  router.connect(`tcp://${host}:${port}`);
  return {
    async send(channel, frames, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        try {
          await router.send(["recodex-monitor", channel, ...frames]);
          return;
        } catch (err) {
          if (err.code !== "EHOSTUNREACH" || Date.now() > deadline) throw err;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    },
    close: () => router.close(),
  };
}

/** One job through the monitor; resolves with the frames received, throws on a mismatch.
 *  Live or replayed from the history, the client must get the same bytes. */
export async function roundTrip({ host = "127.0.0.1", wsPort, zmqPort, channel = "job1", timeoutMs = 15_000 }) {
  const client = await openClient({ host, port: wsPort, channel, timeoutMs });
  const broker = openBroker({ host, port: zmqPort });
  try {
    for (const [frames] of JOB) await broker.send(channel, frames, timeoutMs);
    await waitFor(client, (c) => c.close !== null, "the close after FINISHED", timeoutMs);
    const expected = JOB.map(([, text]) => text);
    if (client.close !== 1000 || JSON.stringify(client.messages) !== JSON.stringify(expected)) {
      throw new Error(`expected ${JSON.stringify(expected)} and close 1000, got ${JSON.stringify(client.messages)} and close ${client.close}`);
    }
    return client.messages;
  } finally {
    broker.close();
    client.ws.terminate();
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      "ws-port": { type: "string", default: "4567" },
      "zmq-port": { type: "string", default: "7894" },
      channel: { type: "string", default: "job1" },
      timeout: { type: "string", default: "15000" },
    },
  });
  try {
    const received = await roundTrip({
      host: values.host,
      wsPort: Number(values["ws-port"]),
      zmqPort: Number(values["zmq-port"]),
      channel: values.channel,
      timeoutMs: Number(values.timeout),
    });
    console.log(`round trip ok, exact bytes: ${received.join(" ")}; close 1000`);
    process.exit(0);
  } catch (err) {
    console.error(`round trip FAILED: ${err.message}`);
    process.exit(1);
  }
}
