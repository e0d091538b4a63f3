// The single executable dist/recodex-monitor (built by `npm run build`), run the way the
// packages run it: empty environment (`env -i`, so no node on PATH), a private runtime
// directory for the embedded ZeroMQ addon. Skipped when the binary has not been built.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Router } from "zeromq";
import { WebSocket } from "ws";

const ROOT = join(import.meta.dirname, "..");
const BIN = join(ROOT, "dist", "recodex-monitor");
const VERSION: string = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
const skip = existsSync(BIN) ? false : `${BIN} not built (run \`npm run build\`)`;
if (skip) console.log(`# binary.test.ts skipped: ${skip}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

test("--version under env -i prints the package version", { skip }, () => {
  const r = spawnSync("/usr/bin/env", ["-i", BIN, "--version"], { encoding: "utf8", timeout: 20_000 });
  assert.equal(r.status, 0, `exit ${r.status}: ${r.stderr}`);
  assert.equal(r.stdout.trim(), `recodex-monitor ${VERSION}`);
  assert.equal(r.stderr, "", "no warnings (SEA, experimental, missing modules)");
});

test("relay round trip through the binary under env -i; SIGTERM exits 0", { skip, timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "recodex-binary-test-"));
  const runtimeDir = join(dir, "run");
  spawnSync("mkdir", ["-m", "0700", runtimeDir]);
  const [wsPort, zmqPort] = [await freePort(), await freePort()];
  const config = join(dir, "config.yml");
  writeFileSync(
    config,
    `websocket_uri: ["127.0.0.1", ${wsPort}]\nzeromq_uri: ["127.0.0.1", ${zmqPort}]\n` +
      `logger: {file: "-", level: info}\n`,
  );
  let out = "";
  const child: ChildProcess = spawn(
    "/usr/bin/env",
    ["-i", `RUNTIME_DIRECTORY=${runtimeDir}`, BIN, "-c", config],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | string>((r) => child.once("exit", (code, sig) => r(code ?? sig!)));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  for (let i = 0; !/ready/.test(out); i++) {
    assert.ok(i < 300, `no 'ready' within 15 s:\n${out}`);
    assert.equal(child.exitCode, null, `monitor exited early:\n${out}`);
    await sleep(50);
  }
  assert.deepEqual(readdirSync(runtimeDir), [], "the extracted addon is removed after loading");

  const ws = new WebSocket(`ws://127.0.0.1:${wsPort}/`);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  const received: unknown[] = [];
  ws.on("message", (data) => received.push(JSON.parse(data.toString())));
  const closed = new Promise<number>((r) => ws.once("close", (code) => r(code)));
  ws.send("job1");
  await sleep(200);

  const router = new Router({ mandatory: true, linger: 0 });
  router.connect(`tcp://127.0.0.1:${zmqPort}`);
  try {
    for (const command of ["DOWNLOADED", "FINISHED"]) {
      for (let i = 0; ; i++) {
        try {
          await router.send(["recodex-monitor", "job1", command]);
          break;
        } catch (err) {
          if ((err as { code?: string }).code !== "EHOSTUNREACH" || i > 200) throw err;
          await sleep(50);
        }
      }
    }
    assert.equal(await closed, 1000, "close code after FINISHED");
  } finally {
    router.close();
    ws.terminate();
  }
  assert.deepEqual(received, [{ command: "DOWNLOADED" }, { command: "FINISHED" }]);

  const t0 = Date.now();
  child.kill("SIGTERM");
  assert.equal(await exited, 0, `exit after SIGTERM:\n${out}`);
  assert.ok(Date.now() - t0 < 10_000, "exits within 10 s of SIGTERM");
});
