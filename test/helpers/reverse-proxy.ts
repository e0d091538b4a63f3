// Tools for test/reverse-proxy.test.ts: nginx as a child process serving the packaged
// snippet behind a loopback port of the test's own, and headless Chromium driven over the
// DevTools protocol.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { connect, createServer, type Server } from "node:net";
import { userInfo } from "node:os";
import { join } from "node:path";
import { WebSocket } from "ws";
import { killGroup, killOnExit } from "./monitor-process.ts";
import { waitUntil } from "./wait.ts";

export const NGINX = "/usr/sbin/nginx";
export const CHROMIUM = "/usr/bin/chromium";

/** Why the reverse-proxy test cannot run here, or null when it can. */
export function missingTools(): string | null {
  const missing = [NGINX, CHROMIUM].filter((p) => !existsSync(p));
  if (missing.length === 0) return null;
  return `needs ${missing.join(", ")} (Debian: apt-get install -y nginx-light chromium)`;
}

/** Why the nginx-only tests cannot run here, or null when they can. */
export function nginxMissing(): string | null {
  return existsSync(NGINX) ? null : `needs ${NGINX} (Debian: apt-get install -y nginx-light)`;
}

// ---------------------------------------------------------------------------------------
// The packaged nginx snippet

export interface NginxSnippet {
  /** Blocks that belong in the http { } context (the map). */
  http: string[];
  /** Blocks that belong in a server { } context (the location). */
  server: string[];
}

/**
 * Splits packaging/reverse-proxy/nginx.conf into its top-level blocks: `map` blocks go to the
 * http context, `location` blocks to the server context. Anything else at top level is an
 * error, so the test notices when the snippet grows something it does not place.
 */
export function splitNginxSnippet(text: string): NginxSnippet {
  const out: NginxSnippet = { http: [], server: [] };
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    if (c === "#") {
      while (i < n && text[i] !== "\n") i++;
      continue;
    }
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    // A top-level statement: read up to its "{" and then to the matching "}".
    const start = i;
    while (i < n && text[i] !== "{" && text[i] !== ";") {
      if (text[i] === "#") throw new Error(`nginx snippet: comment inside a statement at offset ${i}`);
      i++;
    }
    if (text[i] !== "{") throw new Error(`nginx snippet: unexpected top-level directive: ${text.slice(start, i + 1)}`);
    let depth = 0;
    for (; i < n; i++) {
      const ch = text[i];
      if (ch === "#") {
        while (i < n && text[i] !== "\n") i++;
      } else if (ch === "'" || ch === '"') {
        const q = ch;
        for (i++; i < n && text[i] !== q; i++) if (text[i] === "\\") i++;
      } else if (ch === "{") {
        depth++;
      } else if (ch === "}") {
        depth--;
        if (depth === 0) break;
      }
    }
    if (depth !== 0) throw new Error("nginx snippet: unbalanced braces");
    const block = text.slice(start, ++i);
    const keyword = block.split(/\s/, 1)[0];
    if (keyword === "map") out.http.push(block);
    else if (keyword === "location") out.server.push(block);
    else throw new Error(`nginx snippet: unexpected top-level block "${keyword}"`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// nginx

export interface NginxOptions {
  dir: string;
  cert: string;
  key: string;
  /** Directory served at / (static files). */
  root: string;
  /** The snippet, already templated for the monitor's port. */
  snippet: NginxSnippet;
}

export interface NginxProcess {
  child: ChildProcess;
  /** The loopback port browsers connect to. */
  port: number;
  configPath: string;
  accessLog: string;
  errorLog: string;
  output(): string;
  stop(): Promise<void>;
}

/**
 * Writes a self-contained nginx.conf (everything under `dir`) and runs nginx in the
 * foreground. nginx cannot listen on port 0, so it listens on a unix socket and the test
 * holds the TCP port: a listener on port 0 that hands every connection to that socket,
 * announcing the client's address with a PROXY protocol header. nginx takes that address
 * as $remote_addr (test scaffolding: the realip lines are not the recipe's), so the snippet
 * sees each client as it would behind a TCP listen, not every one as "unix:".
 */
export async function startNginx(o: NginxOptions): Promise<NginxProcess> {
  const tmp = join(o.dir, "nginx-tmp");
  mkdirSync(tmp, { recursive: true });
  const accessLog = join(o.dir, "access.log");
  const errorLog = join(o.dir, "error.log");
  const configPath = join(o.dir, "nginx.conf");
  const socketPath = join(o.dir, "nginx.sock");
  // Only a master running as root switches users; run the workers as the same user then.
  const user = process.getuid?.() === 0 ? `user ${userInfo().username};\n` : "";
  const indent = (s: string, pad: string) => s.replace(/^/gm, pad);
  writeFileSync(
    configPath,
    `# generated by test/reverse-proxy.test.ts
${user}daemon off;
worker_processes 1;
pid ${join(o.dir, "nginx.pid")};
error_log ${errorLog} info;
events { worker_connections 64; }
http {
    log_format rmon '"$request" $status upstream=$upstream_addr upgrade=$http_upgrade';
    access_log ${accessLog} rmon;
    client_body_temp_path ${join(tmp, "body")};
    proxy_temp_path ${join(tmp, "proxy")};
    fastcgi_temp_path ${join(tmp, "fastcgi")};
    uwsgi_temp_path ${join(tmp, "uwsgi")};
    scgi_temp_path ${join(tmp, "scgi")};
    types { text/html html; }
    default_type application/octet-stream;
    charset utf-8;

    # --- from packaging/reverse-proxy/nginx.conf (http context) ---
${indent(o.snippet.http.join("\n"), "    ")}

    server {
        listen unix:${socketPath} ssl proxy_protocol;
        set_real_ip_from unix:;
        real_ip_header proxy_protocol;
        server_name localhost;
        ssl_certificate ${o.cert};
        ssl_certificate_key ${o.key};
        root ${o.root};
        index index.html;

        # --- from packaging/reverse-proxy/nginx.conf (server context) ---
${indent(o.snippet.server.join("\n"), "        ")}
    }
}
`,
  );
  const front = await frontDoor(socketPath);
  const port = (front.address() as { port: number }).port;
  const child = spawn(NGINX, ["-p", o.dir, "-e", errorLog, "-c", configPath], {
    stdio: ["ignore", "pipe", "pipe"],
    detached: true, // its own process group, so stop() can reach the workers too
  });
  killOnExit(child, true);
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => resolve());
    child.once("error", () => resolve());
  });
  const errors = () => `${out}${existsSync(errorLog) ? readFileSync(errorLog, "utf8") : ""}`;
  const proc: NginxProcess = {
    child,
    port,
    configPath,
    accessLog,
    errorLog,
    output: errors,
    async stop() {
      front.close();
      await stopGroup(child, exited, "SIGQUIT");
    },
  };
  try {
    await waitUntil(async () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nginx exited (${child.exitCode ?? child.signalCode}):\n${errors()}`);
      return (await httpsStatus(port, "/").catch(() => 0)) === 200;
    }, () => `nginx to serve / over TLS:\n${errors()}`);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return proc;
}

/**
 * A listener on a free loopback port that connects each client through to `socketPath`,
 * after a PROXY protocol (v1) line with the client's address and port.
 */
function frontDoor(socketPath: string): Promise<Server> {
  const server = createServer((client) => {
    const upstream = connect(socketPath);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    upstream.write(`PROXY TCP4 ${client.remoteAddress} ${client.localAddress} ${client.remotePort} ${client.localPort}\r\n`);
    client.pipe(upstream).pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

function httpsStatus(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port, path, rejectUnauthorized: false, timeout: 2000 },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

/** Signals a detached child, then its whole process group; SIGKILL after 5 s. */
async function stopGroup(child: ChildProcess, exited: Promise<void>, signal: NodeJS.Signals): Promise<void> {
  const pid = child.pid;
  if (pid === undefined) return;
  if (child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(pid, signal);
    } catch {
      // Already gone.
    }
    const timer = setTimeout(() => killGroup(pid, "SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  }
  // Anything of the group still left (workers, renderer processes) goes now.
  killGroup(pid, "SIGKILL");
}

// ---------------------------------------------------------------------------------------
// Chromium over the DevTools protocol

type CdpEvent = { method: string; params: Record<string, unknown>; sessionId?: string };

export class Chromium {
  readonly child: ChildProcess;
  private readonly exited: Promise<void>;
  private ws: WebSocket | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; method: string }>();
  private readonly listeners: ((e: CdpEvent) => void)[] = [];
  private stderr = "";
  /** Session of the page target, once attached. */
  session = "";

  private constructor(child: ChildProcess) {
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once("exit", () => resolve());
      child.once("error", () => resolve());
    });
    child.stderr!.on("data", (d: Buffer) => {
      if (this.stderr.length < 100_000) this.stderr += d.toString();
    });
    child.stdout!.resume();
  }

  output(): string {
    return this.stderr;
  }

  /** Starts headless Chromium with a profile in `profileDir` and attaches to its first page. */
  static async launch(profileDir: string, size = { width: 900, height: 760 }): Promise<Chromium> {
    mkdirSync(profileDir, { recursive: true });
    const child = spawn(
      CHROMIUM,
      [
        "--headless",
        "--no-sandbox",
        "--ignore-certificate-errors",
        `--user-data-dir=${profileDir}`,
        "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1",
        `--window-size=${size.width},${size.height}`,
        "--hide-scrollbars",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-field-trial-config",
        "--metrics-recording-only",
        "--no-pings",
        "--mute-audio",
        "--password-store=basic",
        "about:blank",
      ],
      { stdio: ["ignore", "pipe", "pipe"], detached: true },
    );
    killOnExit(child, true);
    const browser = new Chromium(child);
    try {
      const portFile = join(profileDir, "DevToolsActivePort");
      let lines: string[] = [];
      await waitUntil(
        () => {
          if (child.exitCode !== null || child.signalCode !== null) {
            throw new Error(`chromium exited (${child.exitCode ?? child.signalCode}):\n${browser.stderr}`);
          }
          lines = existsSync(portFile) ? readFileSync(portFile, "utf8").split("\n") : [];
          return lines.length >= 2 && /^\d+$/.test(lines[0]) && lines[1].startsWith("/devtools/");
        },
        () => `chromium's DevToolsActivePort:\n${browser.stderr}`,
        20_000,
      );
      await browser.connect(`ws://127.0.0.1:${lines[0]}${lines[1].trim()}`);
      const { targetInfos } = (await browser.send("Target.getTargets")) as {
        targetInfos: { targetId: string; type: string }[];
      };
      let page = targetInfos.find((t) => t.type === "page")?.targetId;
      if (page === undefined) {
        page = ((await browser.send("Target.createTarget", { url: "about:blank" })) as { targetId: string }).targetId;
      }
      const { sessionId } = (await browser.send("Target.attachToTarget", { targetId: page, flatten: true })) as {
        sessionId: string;
      };
      browser.session = sessionId;
      await browser.page("Page.enable");
      await browser.page("Runtime.enable");
      return browser;
    } catch (err) {
      await browser.close();
      throw err;
    }
  }

  private connect(url: string): Promise<void> {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
    this.ws = ws;
    ws.on("message", (data: Buffer) => {
      const msg = JSON.parse(data.toString()) as {
        id?: number;
        result?: unknown;
        error?: { message: string };
      } & Partial<CdpEvent>;
      if (msg.id !== undefined) {
        const p = this.pending.get(msg.id);
        if (p === undefined) return;
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
        else p.resolve(msg.result);
      } else if (msg.method !== undefined) {
        const event = { method: msg.method, params: msg.params ?? {}, sessionId: msg.sessionId };
        for (const l of [...this.listeners]) l(event);
      }
    });
    ws.on("close", () => {
      for (const p of this.pending.values()) p.reject(new Error(`${p.method}: DevTools connection closed`));
      this.pending.clear();
    });
    return new Promise((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
  }

  /** A DevTools command to the browser (no session) or to `sessionId`. */
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string, timeoutMs = 15_000): Promise<unknown> {
    const ws = this.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error(`${method}: not connected`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        method,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      ws.send(JSON.stringify(sessionId === undefined ? { id, method, params } : { id, method, params, sessionId }));
    });
  }

  /** A command to the attached page. */
  page(method: string, params: Record<string, unknown> = {}, timeoutMs?: number): Promise<unknown> {
    return this.send(method, params, this.session, timeoutMs);
  }

  /** Resolves with the first page event named `method` (registered before the caller acts). */
  nextEvent(method: string, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const listener = (e: CdpEvent) => {
        if (e.method !== method || e.sessionId !== this.session) return;
        this.listeners.splice(this.listeners.indexOf(listener), 1);
        clearTimeout(timer);
        resolve(e.params);
      };
      const timer = setTimeout(() => {
        this.listeners.splice(this.listeners.indexOf(listener), 1);
        reject(new Error(`no ${method} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.listeners.push(listener);
    });
  }

  /** Navigates and waits for the load event. */
  async navigate(url: string): Promise<void> {
    const loaded = this.nextEvent("Page.loadEventFired");
    const r = (await this.page("Page.navigate", { url })) as { errorText?: string };
    if (r.errorText) throw new Error(`navigating to ${url}: ${r.errorText}`);
    await loaded;
  }

  /** Evaluates an expression in the page and returns its value (JSON-serialisable). */
  async evaluate<T>(expression: string): Promise<T> {
    const r = (await this.page("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true })) as {
      result: { value?: T };
      exceptionDetails?: { text: string; exception?: { description?: string } };
    };
    if (r.exceptionDetails) {
      throw new Error(`page threw: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
    }
    return r.result.value as T;
  }

  /** Polls `expression` in the page until it is truthy; returns its value. */
  async waitFor<T>(expression: string, what = expression): Promise<T> {
    let value: T | undefined;
    await waitUntil(async () => Boolean((value = await this.evaluate<T>(expression))), what);
    return value!;
  }

  async screenshot(): Promise<Buffer> {
    const r = (await this.page("Page.captureScreenshot", { format: "png" })) as { data: string };
    return Buffer.from(r.data, "base64");
  }

  /** Closes the browser (politely, then by force) and every process it started. */
  async close(): Promise<void> {
    if (this.ws !== null && this.ws.readyState === WebSocket.OPEN) {
      await this.send("Browser.close", {}, undefined, 3000).catch(() => {});
    }
    this.ws?.terminate();
    const timer = setTimeout(() => killGroup(this.child.pid!, "SIGKILL"), 5000);
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const pid = this.child.pid;
      if (pid !== undefined) {
        // Browser.close normally ends it; SIGTERM if it is still there shortly after.
        const term = setTimeout(() => killGroup(pid, "SIGTERM"), 2000);
        await this.exited;
        clearTimeout(term);
      }
    }
    clearTimeout(timer);
    if (this.child.pid !== undefined) killGroup(this.child.pid, "SIGKILL");
  }
}
