// The floor: the leanest relay speaking the monitor's wire protocol, used as the yardstick.
// ZeroMQ ROUTER (routing id "recodex-monitor") -> JSON -> `ws` text frames to the channel's
// subscribers, with every socket's writes of one event-loop turn batched (cork/uncork) into one
// syscall. No history, no retention, no logging, no validation: it is not a monitor.
//
//   node bench/floor.ts WS_PORT ZMQ_PORT
import * as zmq from "zeromq";
import { WebSocketServer, type WebSocket } from "ws";
import type { Socket } from "node:net";

const host = "127.0.0.1";
const wsPort = Number(process.argv[2] ?? 4567);
const zmqPort = Number(process.argv[3] ?? 7894);

const channels = new Map<string, WebSocket[]>();
const corked: Socket[] = [];
const TEXT = { binary: false };
let flushQueued = false;

function flush(): void {
  flushQueued = false;
  for (let i = 0; i < corked.length; i++) corked[i].uncork();
  corked.length = 0;
}

const wss = new WebSocketServer({ host, port: wsPort, perMessageDeflate: false, clientTracking: false });
wss.on("connection", (ws: WebSocket) => {
  ws.on("error", () => {});
  ws.once("message", (data) => {
    const channel = String(data);
    let subs = channels.get(channel);
    if (subs === undefined) channels.set(channel, (subs = []));
    subs.push(ws);
    ws.once("close", () => {
      const list = channels.get(channel);
      if (list === undefined) return;
      const i = list.indexOf(ws);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) channels.delete(channel);
    });
  });
});

const router = new zmq.Router({ routingId: "recodex-monitor" });
await router.bind(`tcp://${host}:${zmqPort}`);
await new Promise<void>((resolve) => (wss.address() ? resolve() : wss.once("listening", () => resolve())));
process.stderr.write("floor ready\n");
process.on("SIGTERM", () => process.exit(0));

for await (const frames of router) {
  const subs = channels.get(frames[1].toString());
  if (subs === undefined) continue;
  const command = frames[2].toString();
  let json = '{"command": ' + JSON.stringify(command);
  if (frames.length > 3) json += ', "task_id": ' + JSON.stringify(frames[3].toString());
  if (frames.length > 4) json += ', "task_state": ' + JSON.stringify(frames[4].toString());
  const payload = Buffer.from(json + "}");
  for (let i = 0; i < subs.length; i++) {
    const ws = subs[i];
    const sock = (ws as unknown as { _socket: Socket })._socket;
    if (sock.writableCorked === 0) {
      sock.cork();
      corked.push(sock);
    }
    ws.send(payload, TEXT);
  }
  if (!flushQueued && corked.length > 0) {
    flushQueued = true;
    setImmediate(flush);
  }
  if (command === "FINISHED") {
    for (const ws of subs.slice()) ws.close(1000);
    channels.delete(frames[1].toString());
  }
}
