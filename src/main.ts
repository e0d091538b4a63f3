#!/usr/bin/env node
// Command line, signals and exit codes. Everything that can go wrong before the monitor
// is up ends here with one line on stderr and an exit code per class of error.
import { parseArgs } from "node:util";
import pkg from "../package.json" with { type: "json" };
import { loadConfig, reloadConfig, type LoadedConfig } from "./config.ts";
import { EXIT, MonitorError } from "./errors.ts";
import type { Log } from "./logger.ts";
import { printable } from "./printable.ts";
import type { Monitor } from "./monitor.ts";
import { notifyReady } from "./systemd.ts";

const USAGE = `Usage: recodex-monitor [-c FILE] [--check-config]
       recodex-monitor check [-c FILE] [--timeout SECONDS]

Relays ReCodEx job progress from the broker (ZeroMQ) to browsers (WebSocket).

Options:
  -c, --config FILE   YAML configuration (without it: defaults, log to stderr)
      --check-config  validate the configuration and exit
  -h, --help          show this help and exit
  -V, --version       print the version and exit

Commands:
  check               act as a broker and a browser against the running monitor at the
                      configured addresses; exit 0 only if a test job went through

Exit codes: 0 ok, 1 internal error, 2 bad command line, 3 bad configuration,
4 cannot bind a port, 5 log file not writable, 6 self-test failed.
`;

function fail(err: unknown): number {
  if (err instanceof MonitorError) {
    process.stderr.write(`recodex-monitor: ${printable(err.message)} [${err.code}]\n`);
    return err.exitCode;
  }
  process.stderr.write(`recodex-monitor: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
  return EXIT.INTERNAL;
}

async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        config: { type: "string", short: "c" },
        "check-config": { type: "boolean" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
        timeout: { type: "string" },
      },
    });
  } catch (err) {
    process.stderr.write(`recodex-monitor: ${(err as Error).message}\nTry 'recodex-monitor --help'.\n`);
    return EXIT.USAGE;
  }
  const { values, positionals } = args;
  if (values.help) {
    process.stdout.write(USAGE);
    return EXIT.OK;
  }
  if (values.version) {
    process.stdout.write(`recodex-monitor ${pkg.version}\n`);
    return EXIT.OK;
  }
  const command = positionals[0];
  if (positionals.length > 1 || (command !== undefined && command !== "check")) {
    process.stderr.write(`recodex-monitor: unexpected argument '${positionals.join(" ")}'\nTry 'recodex-monitor --help'.\n`);
    return EXIT.USAGE;
  }
  if (values.config === "") {
    process.stderr.write(`recodex-monitor: option -c/--config needs a file path\nTry 'recodex-monitor --help'.\n`);
    return EXIT.USAGE;
  }
  let timeout = 5;
  if (values.timeout !== undefined) {
    timeout = Number(values.timeout);
    if (command !== "check" || !Number.isFinite(timeout) || timeout <= 0 || timeout > 3600) {
      process.stderr.write(`recodex-monitor: --timeout takes a number of seconds from 0 to 3600 and goes with 'check'\n`);
      return EXIT.USAGE;
    }
  }

  let loaded: LoadedConfig;
  try {
    loaded = loadConfig(values.config);
  } catch (err) {
    return fail(err);
  }
  for (const w of loaded.warnings) process.stderr.write(`recodex-monitor: warning: ${printable(w)}\n`);
  if (values["check-config"]) {
    process.stdout.write(`recodex-monitor: configuration ${loaded.source ?? "(defaults)"} is valid\n`);
    return EXIT.OK;
  }
  if (command === "check") {
    try {
      const { runSelfTest } = await import("./self-test.ts");
      return await runSelfTest(loaded.config, timeout, (line) => process.stdout.write(line + "\n"));
    } catch (err) {
      return fail(err);
    }
  }
  return run(loaded);
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
  (code) => process.exit(code),
  (err) => process.exit(fail(err)),
);
