// What plain HTTP gets on the WebSocket port: the endpoints only when the config asks for
// them there (http.on_websocket_port), and for anything else its answer and a closed
// connection, without the monitor reading a request body.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import { validateConfig } from "../src/config.ts";
import { httpGet } from "./helpers/http.ts";
import { monitor, ROOT, startMonitor } from "./helpers/monitor-process.ts";
import { RawSocket } from "./helpers/tcp.ts";
import { withTimeout } from "./helpers/wait.ts";

const ON_WEBSOCKET_PORT = "http:\n  enabled: true\n  on_websocket_port: true\n";

test("http.enabled without http.uri is a config error unless http.on_websocket_port says to serve the endpoints there", async (t) => {
  const m = await startMonitor({ extraYaml: "http:\n  enabled: true\n", waitReady: false });
  t.after(() => m.stop("SIGKILL"));
  assert.equal(await withTimeout(m.exited, "the monitor to refuse its config"), 3);
  assert.match(m.output(), /http\.uri[^\n]*http\.on_websocket_port: true/);

  const on = await monitor(t, { extraYaml: ON_WEBSOCKET_PORT });
  assert.equal((await httpGet(on.wsPort, "/metrics")).status, 200);
  assert.match(on.output(), /HTTP endpoints on the WebSocket port/);
});

test("the packaged config serves the endpoints on a loopback port of their own, not on the WebSocket port", () => {
  const { config } = validateConfig(parse(readFileSync(join(ROOT, "config.yml"), "utf8")), "config.yml");
  assert.equal(config.http.enabled, true);
  assert.equal(config.http.on_websocket_port, false);
  assert.ok(config.http.uri !== null && ["127.0.0.1", "::1"].includes(config.http.uri[0]), JSON.stringify(config.http.uri));
});

test("a 200 MB POST to the WebSocket port is answered and the connection closed without the body being read", async (t) => {
  const m = await monitor(t);
  const s = new RawSocket(m.wsPort);
  t.after(() => s.destroy());
  await s.connected;
  const total = 200 * 1024 * 1024;
  s.socket.write(`POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: ${total}\r\n\r\n`);
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let written = 0;
  // Write as fast as the connection takes it, until all is sent or the monitor hangs up.
  while (written < total && !s.closed && s.error === null) {
    if (!s.socket.write(chunk)) {
      await Promise.race([new Promise((r) => s.socket.once("drain", r)), s.ended]);
    }
    written += chunk.length;
  }
  await s.waitClosed();
  t.diagnostic(`client wrote ${(written / 1048576).toFixed(1)} MB before the monitor closed`);
  assert.ok(written < 32 * 1024 * 1024, `the monitor stopped taking the body: ${written} bytes went out`);
  assert.match(s.received, /^HTTP\/1\.1 426 /);
  assert.match(s.received, /\r\nConnection: [^\r]*close\r\n/i);
});

test("with the endpoints on the WebSocket port, a POST with a body gets 405 and a closed connection; GET still works", async (t) => {
  const m = await monitor(t, { extraYaml: ON_WEBSOCKET_PORT });
  const s = new RawSocket(m.wsPort);
  t.after(() => s.destroy());
  await s.connected;
  s.socket.write(`POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${64 * 1024 * 1024}\r\n\r\n`);
  s.socket.write(Buffer.alloc(1024));
  await s.waitClosed();
  assert.match(s.received, /^HTTP\/1\.1 405 /);
  assert.equal((await httpGet(m.wsPort, "/livez")).status, 200);
});
