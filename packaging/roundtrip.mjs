#!/usr/bin/env node
// One relay round trip against a running monitor, playing both the broker (ZeroMQ ROUTER
// connecting to the monitor) and a browser (WebSocket client). Used by
// packaging/test-packages.sh; runs on the host with the repo's node_modules.
//
//   node packaging/roundtrip.mjs [--ws-port 4567] [--zmq-port 7894] [--host 127.0.0.1]
//                                [--channel job1] [--timeout 15000]
// Exit 0 when the client received {"command":"DOWNLOADED"}, {"command":"FINISHED"} and a
// close with code 1000; 1 otherwise (reason on stderr).
import { parseArgs } from "node:util";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "package.json"));
const zmq = require("zeromq");
const { WebSocket } = require("ws");

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    "ws-port": { type: "string", default: "4567" },
    "zmq-port": { type: "string", default: "7894" },
    channel: { type: "string", default: "job1" },
    timeout: { type: "string", default: "15000" },
  },
});

export async function roundTrip({ host, wsPort, zmqPort, channel, timeoutMs }) {
  const deadline = Date.now() + timeoutMs;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Browser side first, so no message is sent before the subscription exists.
  let ws;
  for (;;) {
    try {
      ws = await new Promise((resolve, reject) => {
        const s = new WebSocket(`ws://${host}:${wsPort}/`);
        s.once("open", () => resolve(s));
        s.once("error", reject);
      });
      break;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`WebSocket connect: ${err.message}`);
      await sleep(100);
    }
  }
  const received = [];
  const closed = new Promise((resolve) => ws.once("close", (code) => resolve(code)));
  ws.on("message", (data) => received.push(JSON.parse(data.toString())));
  ws.send(channel);
  await sleep(200); // let the monitor register the subscription

  const router = new zmq.Router({ mandatory: true, linger: 0 });
  router.connect(`tcp://${host}:${zmqPort}`);
  try {
    const sendRetry = async (frames) => {
      for (;;) {
        try {
          await router.send(frames);
          return;
        } catch (err) {
          if (err.code !== "EHOSTUNREACH" || Date.now() > deadline) throw err;
          await sleep(50);
        }
      }
    };
    await sendRetry(["recodex-monitor", channel, "DOWNLOADED"]);
    await sendRetry(["recodex-monitor", channel, "FINISHED"]);
    let timer;
    const code = await Promise.race([
      closed,
      new Promise((r) => (timer = setTimeout(() => r("timeout"), Math.max(0, deadline - Date.now())))),
    ]);
    clearTimeout(timer);
    const expected = [{ command: "DOWNLOADED" }, { command: "FINISHED" }];
    const ok =
      code === 1000 &&
      received.length === 2 &&
      received.every((m, i) => m.command === expected[i].command);
    if (!ok) {
      throw new Error(`unexpected result: close=${code}, messages=${JSON.stringify(received)}`);
    }
    return { received, code };
  } finally {
    router.close();
    ws.terminate();
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const r = await roundTrip({
      host: values.host,
      wsPort: Number(values["ws-port"]),
      zmqPort: Number(values["zmq-port"]),
      channel: values.channel,
      timeoutMs: Number(values.timeout),
    });
    console.log(`round trip ok: ${JSON.stringify(r.received)} close ${r.code}`);
    process.exit(0);
  } catch (err) {
    console.error(`round trip FAILED: ${err.message}`);
    process.exit(1);
  }
}
