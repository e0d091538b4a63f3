#!/usr/bin/env node
// Command line, signals and exit codes. Everything that can go wrong before the monitor
// is up ends here with one line on stderr and an exit code per class of error. The first
// argument may name a command (the table COMMANDS); without one the monitor runs.
import { readFileSync } from "node:fs";
import { parseArgs, type ParseArgsConfig } from "node:util";
import pkg from "../package.json" with { type: "json" };
import { loadConfig, reloadConfig, type Config, type LoadedConfig } from "./config.ts";
import { EXIT, MonitorError, reasonOf } from "./errors.ts";
import type { Log } from "./logger.ts";
import { printable } from "./printable.ts";
import type { Monitor } from "./monitor.ts";
import { notifyReady } from "./systemd.ts";

const USAGE = `Usage: recodex-monitor [-c FILE] [--check-config]
       recodex-monitor COMMAND [OPTIONS]     (recodex-monitor COMMAND --help for its options)

Relays ReCodEx job progress from the broker (ZeroMQ) to browsers (WebSocket).

Options:
  -c, --config FILE   YAML configuration (without it: defaults, log to stderr)
      --check-config  validate the configuration and exit
  -h, --help          show this help and exit
  -V, --version       print the version and exit

Commands (each reaches the running monitor at the addresses in -c FILE, or the defaults):
  check               act as a broker and a browser; exit 0 only if a test job went through
  watch CHANNEL       print a job's messages as a browser receives them
  send CHANNEL COMMAND [TASK_ID TASK_STATE]
                      play the broker for one message (--job: a whole job)
  status              what the monitor holds now: channels, clients, messages, jobs

Exit codes: 0 ok, 1 internal error, 2 bad command line, 3 bad configuration,
4 cannot bind a port, 5 log file not writable, 6 self-test failed, 7 watch: the stream
ended before FINISHED, 8 the monitor cannot be reached, 9 switched off in the monitor's
config, 10 no such channel, 130 watch interrupted.
`;

type Options = NonNullable<ParseArgsConfig["options"]>;
type Values = Record<string, string | boolean | undefined>;

interface Command {
  /** --help of the command. */
  usage: string;
  options: Options;
  /** How many positional arguments it takes. */
  positionals: readonly [min: number, max: number];
  /** Node is left to exit on its own after run() instead of process.exit() (send: see there). */
  exitNaturally?: boolean;
  run(values: Values, positionals: string[]): Promise<number>;
}

const CONFIG = { config: { type: "string", short: "c" } } as const;
const TIMEOUT = { timeout: { type: "string" } } as const;

/** A command line that cannot be run; main() prints it with a hint and exits 2. */
class UsageError extends Error {}

const COMMANDS: Readonly<Record<string, Command>> = {
  check: {
    usage: `Usage: recodex-monitor check [-c FILE] [--timeout SECONDS]

Plays the broker and a browser against the running monitor at the configured addresses,
pushes a test job through it and prints each step with its timing.

  -c, --config FILE    the monitor's configuration (default: the built-in defaults)
      --timeout S      give up on a step after S seconds (default 5)

Exit 0: the job went through; 6: a step failed; 3: bad config file.
`,
    options: { ...CONFIG, ...TIMEOUT },
    positionals: [0, 0],
    async run(values) {
      const timeout = seconds(values.timeout, 5);
      const loaded = configOf(values);
      const { runSelfTest } = await import("./self-test.ts");
      return runSelfTest(loaded.config, timeout, print);
    },
  },
  watch: {
    usage: `Usage: recodex-monitor watch CHANNEL [-c FILE | --url ws://HOST:PORT/PATH] [--resume] [-t]

Subscribes to CHANNEL like a browser and prints every message as it arrives, one line
each, exactly as the monitor sends it (stdout); then how the connection ended (stderr).

  -c, --config FILE    reach the monitor at its configured websocket_uri (wss:// when it
                       has a TLS certificate, which is then not checked: it is this host's)
      --url URL        reach it at URL instead, e.g. wss://recodex.example.org/ws/
                       through the reverse proxy (the certificate is checked)
      --ca FILE        with --url: also trust the CA certificate(s) in FILE (PEM)
      --insecure       with --url: do not check the certificate
      --resume         use the resumable protocol: lines carry offsets, and a lost
                       connection is resumed after the last offset printed
  -t, --timestamps     start each line with the time it arrived (ISO 8601, UTC)
      --timeout S      give up when the monitor does not answer, or no message arrives,
                       for S seconds (default: wait for messages as long as it takes)

Exit 0 after FINISHED and the monitor's close (1000); 7 on any other end (the close code
and reason are printed); 8 when the monitor cannot be reached; 130 on Ctrl-C.
`,
    options: {
      ...CONFIG,
      ...TIMEOUT,
      url: { type: "string" },
      ca: { type: "string" },
      insecure: { type: "boolean" },
      resume: { type: "boolean" },
      timestamps: { type: "boolean", short: "t" },
    },
    positionals: [1, 1],
    async run(values, [channel]) {
      const timeout = values.timeout === undefined ? null : seconds(values.timeout, 0) * 1000;
      if (values.url !== undefined && values.config !== undefined) throw new UsageError("give -c/--config or --url, not both");
      if (values.url === undefined && (values.ca !== undefined || values.insecure)) throw new UsageError("--ca and --insecure go with --url");
      const config = values.url === undefined ? configOf(values).config : null;
      checkChannel(channel, config);
      const url = config === null ? urlOption(values.url, "--url", /^wss?:\/\/./, "a ws:// or wss:// URL") : (await import("./monitor-client.ts")).monitorUrls(config).ws;
      const { runWatch } = await import("./watch.ts");
      return runWatch(
        {
          channel,
          url,
          verify: values.url !== undefined && values.insecure !== true,
          ca: values.ca === undefined ? undefined : readOption(values.ca, "--ca"),
          resume: values.resume === true,
          timestamps: values.timestamps === true,
          timeoutMs: timeout,
        },
        print,
        (line) => process.stderr.write(line + "\n"),
      );
    },
  },
  send: {
    usage: `Usage: recodex-monitor send CHANNEL COMMAND [TASK_ID TASK_STATE] [-c FILE | --zmq tcp://HOST:PORT]
       recodex-monitor send CHANNEL --job [--tasks N] [--interval S] [-c FILE | --zmq URL]

Plays the broker: connects to the monitor's ZeroMQ socket, waits until the monitor has
answered the connection (so that nothing is dropped unseen), and sends one message, or
with --job a whole job: DOWNLOADED, STARTED, a TASK per task, ENDED, UPLOADED, FINISHED.
Prints each message as browsers will receive it.

  -c, --config FILE    reach the monitor at its configured zeromq_uri
      --zmq URL        reach it at URL instead (tcp://HOST:PORT)
      --job            send a whole job instead of COMMAND
      --tasks N        tasks in the job (default 4: compilation, test01, ...)
      --interval S     wait S seconds between the job's messages (default 0)
      --timeout S      how long to wait for the monitor (default 5)

Exit 0 when sent; 8 when the monitor cannot be reached.
`,
    options: {
      ...CONFIG,
      ...TIMEOUT,
      zmq: { type: "string" },
      job: { type: "boolean" },
      tasks: { type: "string" },
      interval: { type: "string" },
    },
    positionals: [1, 4],
    // The messages may still be in libzmq's queue when the last send resolves; zeromq.js
    // waits for them (up to the socket's linger) only when node exits on its own, not from
    // process.exit().
    exitNaturally: true,
    async run(values, [channel, ...message]) {
      const timeout = seconds(values.timeout, 5) * 1000;
      const { jobMessages, runSend } = await import("./send.ts");
      let messages: string[][];
      if (values.job) {
        if (message.length > 0) throw new UsageError("--job sends a whole job: give only CHANNEL");
        messages = jobMessages(count(values.tasks, 4, "--tasks"));
      } else {
        if (values.tasks !== undefined || values.interval !== undefined) throw new UsageError("--tasks and --interval go with --job");
        if (message.length !== 1 && message.length !== 3) {
          throw new UsageError("send takes CHANNEL COMMAND, or CHANNEL COMMAND TASK_ID TASK_STATE (or CHANNEL --job)");
        }
        messages = [message];
      }
      if (values.zmq !== undefined && values.config !== undefined) throw new UsageError("give -c/--config or --zmq, not both");
      const config = values.zmq === undefined ? configOf(values).config : null;
      checkChannel(channel, config);
      const url = config === null ? urlOption(values.zmq, "--zmq", /^tcp:\/\/.+:\d+$/, "tcp://HOST:PORT") : (await import("./monitor-client.ts")).monitorUrls(config).zmq;
      const interval = values.interval === undefined ? 0 : seconds(values.interval, 0, "--interval", true);
      return runSend({ url, channel, messages, intervalMs: interval * 1000, timeoutMs: timeout }, print);
    },
  },
  status: {
    usage: `Usage: recodex-monitor status [-c FILE | --url http://HOST:PORT/] [--json]
       recodex-monitor status --channel ID | --channels [--limit N]

What the running monitor holds now, from its /status endpoint (http.enabled): channels
kept, clients, messages in and out, drops and refusals, and what the jobs are doing.
No channel id is shown unless asked for.

  -c, --config FILE    reach the monitor's HTTP endpoints as configured (http.uri, else
                       the WebSocket port)
      --url URL        reach them at URL instead
      --channel ID     that one channel: messages, subscribers, its last message
      --channels       also list the most recently active channels (only when the
                       monitor allows it: http.list_channels)
      --limit N        how many --channels lists (default 20)
      --json           print the endpoint's JSON
      --timeout S      how long to wait for the monitor (default 5)

Exit 0; 8 when the monitor cannot be reached; 9 when the endpoint (or the listing) is off,
naming the config key that turns it on; 10 when --channel names no channel it keeps.
`,
    options: {
      ...CONFIG,
      ...TIMEOUT,
      url: { type: "string" },
      channel: { type: "string" },
      channels: { type: "boolean" },
      limit: { type: "string" },
      json: { type: "boolean" },
    },
    positionals: [0, 0],
    async run(values) {
      const timeout = seconds(values.timeout, 5) * 1000;
      if (values.url !== undefined && values.config !== undefined) throw new UsageError("give -c/--config or --url, not both");
      if (values.channel !== undefined && values.channels) throw new UsageError("give --channel ID or --channels, not both");
      if (values.limit !== undefined && !values.channels) throw new UsageError("--limit goes with --channels");
      if (values.channel !== undefined) checkChannel(text(values.channel, "--channel"), null);
      const base =
        values.url === undefined
          ? (await import("./monitor-client.ts")).monitorUrls(configOf(values).config).http
          : urlOption(values.url, "--url", /^https?:\/\/./, "an http:// or https:// URL").replace(/\/?$/, "/");
      const { runStatus } = await import("./status.ts");
      return runStatus(
        {
          base,
          channel: values.channel as string | undefined,
          list: values.channels ? count(values.limit, 20, "--limit") : undefined,
          json: values.json === true,
          timeoutMs: timeout,
        },
        print,
      );
    },
  },
};

const MONITOR: Command = {
  usage: USAGE,
  options: { ...CONFIG, "check-config": { type: "boolean" }, version: { type: "boolean", short: "V" } },
  positionals: [0, 0],
  async run(values) {
    if (values.version) {
      print(`recodex-monitor ${pkg.version}`);
      return EXIT.OK;
    }
    const loaded = configOf(values);
    if (values["check-config"]) {
      print(`recodex-monitor: configuration ${loaded.source ?? "(defaults)"} is valid`);
      return EXIT.OK;
    }
    return run(loaded);
  },
};

function print(line: string): void {
  process.stdout.write(line + "\n");
}

function fail(err: unknown): number {
  if (err instanceof MonitorError) {
    process.stderr.write(`recodex-monitor: ${printable(err.message)} [${err.code}]\n`);
    return err.exitCode;
  }
  process.stderr.write(`recodex-monitor: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
  return EXIT.INTERNAL;
}

/** The config file given with -c (or the defaults); its warnings go to stderr. */
function configOf(values: Values): LoadedConfig {
  const path = values.config as string | undefined;
  if (path === "") throw new UsageError("option -c/--config needs a file path");
  const loaded = loadConfig(path);
  for (const w of loaded.warnings) process.stderr.write(`recodex-monitor: warning: ${printable(w)}\n`);
  return loaded;
}

function seconds(value: string | boolean | undefined, fallback: number, flag = "--timeout", zeroOk = false): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value === "" || !Number.isFinite(n) || n < 0 || (n === 0 && !zeroOk) || n > 3600) {
    throw new UsageError(`${flag} takes a number of seconds, ${zeroOk ? "0" : "more than 0"} to 3600, got '${value}'`);
  }
  return n;
}

function count(value: string | boolean | undefined, fallback: number, flag: string): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value === "" || !Number.isInteger(n) || n < 1 || n > 10_000) throw new UsageError(`${flag} takes a whole number from 1 to 10000, got '${value}'`);
  return n;
}

function urlOption(value: string | boolean | undefined, flag: string, form: RegExp, expected: string): string {
  const url = text(value, flag);
  if (!form.test(url)) throw new UsageError(`${flag} takes ${expected}, got '${url}'`);
  return url;
}

function text(value: string | boolean | undefined, flag: string): string {
  if (typeof value !== "string" || value === "") throw new UsageError(`${flag} needs a value`);
  return value;
}

function readOption(path: string | boolean, flag: string): Buffer {
  try {
    return readFileSync(text(path, flag));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`${flag} ${String(path)} cannot be read: ${reasonOf(err)}`);
  }
}

/** A channel id the monitor would refuse is a usage error here rather than a silent drop there. */
function checkChannel(channel: string, config: Config | null): void {
  if (channel === "") throw new UsageError("CHANNEL must not be empty");
  const limit = config?.limits.max_channel_id_length;
  if (limit !== undefined && Buffer.byteLength(channel) > limit) {
    throw new UsageError(`CHANNEL is ${Buffer.byteLength(channel)} bytes; the monitor refuses more than ${limit} (limits.max_channel_id_length)`);
  }
}

/** The exit code, or null where it is set already and node is to exit on its own (Command.exitNaturally). */
async function main(argv: string[]): Promise<number | null> {
  const name = argv[0] !== undefined && Object.hasOwn(COMMANDS, argv[0]) ? argv[0] : null;
  const command = name === null ? MONITOR : COMMANDS[name];
  const hint = `Try 'recodex-monitor${name === null ? "" : ` ${name}`} --help'.`;
  const usageError = (message: string) => {
    process.stderr.write(`recodex-monitor: ${message}\n${hint}\n`);
    return EXIT.USAGE;
  };
  let values: Values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: name === null ? argv : argv.slice(1),
      allowPositionals: true,
      strict: true,
      options: { ...command.options, help: { type: "boolean", short: "h" } },
    }));
  } catch (err) {
    const unknown = /Unknown option '(--?[^']+)'/.exec((err as Error).message)?.[1];
    const owners = unknown === undefined ? [] : Object.keys(COMMANDS).filter((c) => unknown in optionFlags(COMMANDS[c]));
    if (owners.length > 0) return usageError(`option ${unknown} goes with ${owners.map((c) => `'${c}'`).join(", ")}`);
    return usageError((err as Error).message);
  }
  if (values.help) {
    process.stdout.write(command.usage);
    return EXIT.OK;
  }
  const [min, max] = command.positionals;
  if (positionals.length < min || positionals.length > max) {
    const synopsis = command.usage.split("\n", 1)[0].replace(/^Usage: /, "");
    return usageError(positionals.length > max ? `unexpected argument '${positionals.slice(max).join(" ")}'` : `missing argument: ${synopsis}`);
  }
  let code: number;
  try {
    code = await command.run(values, positionals);
  } catch (err) {
    if (err instanceof UsageError) return usageError(err.message);
    code = fail(err);
  }
  if (command.exitNaturally !== true) return code;
  process.exitCode = code;
  return null;
}

function optionFlags(command: Command): Record<string, true> {
  const flags: Record<string, true> = {};
  for (const [long, spec] of Object.entries(command.options)) {
    flags[`--${long}`] = true;
    if (spec.short !== undefined) flags[`-${spec.short}`] = true;
  }
  return flags;
}

async function run(loaded: LoadedConfig): Promise<number> {
  const { config } = loaded;
  // Loaded here rather than at the top, so that --help, --version and --check-config answer
  // without initialising ZeroMQ, ws and the rest.
  const [{ Log }, { Monitor }] = await Promise.all([import("./logger.ts"), import("./monitor.ts")]);
  let log: Log;
  try {
    log = new Log(config.logger);
  } catch (err) {
    return fail(err);
  }
  for (const w of loaded.warnings) log.warning(w);

  let monitor: Monitor;
  try {
    monitor = new Monitor(config, log);
  } catch (err) {
    log.critical(`cannot start: ${(err as Error).message}`);
    await log.close();
    return fail(err);
  }
  // Handlers go in before the ports are bound: a signal that arrives while starting is
  // acted on once the start has finished, never by the default action (death).
  let started = false;
  let pendingStop: string | null = null;
  const stop = (signal: string) => {
    if (started) void monitor.stop(`${signal} received`);
    else pendingStop ??= signal;
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGHUP", () => {
    if (!started) {
      log.warning("SIGHUP while starting: configuration not reloaded");
      return;
    }
    try {
      const next = reloadConfig(loaded.source ?? undefined);
      for (const w of next.warnings) log.warning(w);
      monitor.reload(next.config);
    } catch (err) {
      log.error(`configuration not reloaded, keeping the running one: ${(err as Error).message}`);
    }
  });
  process.on("uncaughtException", (err) => {
    log.critical(`internal error: ${err.stack ?? err.message}`);
    void log.close().then(() => process.exit(EXIT.INTERNAL));
  });

  try {
    await monitor.start();
  } catch (err) {
    log.critical(`cannot start: ${(err as Error).message}`);
    await log.close();
    return fail(err);
  }
  started = true;
  notifyReady(log);
  if (log.destination !== "stderr") {
    process.stderr.write(`recodex-monitor ${pkg.version} running; log: ${log.destination}\n`);
  }
  if (pendingStop !== null) stop(pendingStop);

  await monitor.stopped;
  await log.close();
  return EXIT.OK;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== null) process.exit(code);
  },
  (err) => process.exit(fail(err)),
);
