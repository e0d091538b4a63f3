"use strict";
// Replacement for zeromq/lib/load-addon.js, substituted by the esbuild plugin in build.mjs.
//
// zeromq's own loader looks for the native addon relative to its package directory at run
// time, which does not exist in a bundle. This loader:
//  - inside the single executable (Node SEA): takes the addon from the SEA asset
//    "zeromq.node", writes it into a fresh private directory on a file system that allows
//    executable mappings, dlopen()s it and removes the directory again (the mapping stays
//    valid after unlinking). Candidate directories, tried in order until dlopen works:
//    $RECODEX_MONITOR_ADDON_DIR, $RUNTIME_DIRECTORY (systemd RuntimeDirectory=),
//    $XDG_RUNTIME_DIR, /dev/shm, the directory of the executable, os.tmpdir().
//    A noexec mount (typical for /tmp on hardened hosts) makes dlopen fail with
//    "failed to map segment from shared object"; the next candidate is then tried.
//  - outside a SEA (the plain bundle run by node): loads zeromq.node next to the bundle.
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const ASSET = "zeromq.node";

function candidateDirs() {
  const dirs = [];
  const add = (dir, source) => {
    if (!dir || !path.isAbsolute(dir)) return;
    if (dirs.some((d) => d.dir === dir)) return;
    dirs.push({ dir, source });
  };
  add(process.env.RECODEX_MONITOR_ADDON_DIR, "$RECODEX_MONITOR_ADDON_DIR");
  // systemd passes a colon-separated list when RuntimeDirectory= names several directories
  for (const d of (process.env.RUNTIME_DIRECTORY || "").split(":")) add(d, "$RUNTIME_DIRECTORY");
  add(process.env.XDG_RUNTIME_DIR, "$XDG_RUNTIME_DIR");
  add("/dev/shm", "/dev/shm");
  add(path.dirname(process.execPath), "executable's directory");
  add(os.tmpdir(), "os.tmpdir()");
  return dirs;
}

function errorText(err) {
  const msg = err && err.message ? err.message : String(err);
  return msg.split("\n")[0];
}

function loadFromSea(sea) {
  const data = Buffer.from(sea.getAsset(ASSET));
  const tried = [];
  for (const { dir, source } of candidateDirs()) {
    let tmp;
    try {
      tmp = fs.mkdtempSync(path.join(dir, ".recodex-monitor-zmq-"));
      fs.chmodSync(tmp, 0o700);
      const file = path.join(tmp, "zeromq.node");
      fs.writeFileSync(file, data, { mode: 0o500 });
      const mod = { exports: {} };
      process.dlopen(mod, file, os.constants.dlopen.RTLD_NOW);
      return mod.exports;
    } catch (err) {
      tried.push(`  ${dir} (${source}): ${errorText(err)}`);
    } finally {
      if (tmp) {
        try {
          fs.rmSync(tmp, { recursive: true, force: true });
        } catch {
          // best effort: the directory is private and empty of secrets
        }
      }
    }
  }
  const err = new Error(
    "recodex-monitor: cannot load the embedded ZeroMQ addon: no directory allows writing and " +
      "executing it (a noexec mount makes dlopen fail). Tried:\n" +
      tried.join("\n") +
      "\nRun under systemd with RuntimeDirectory= (the packaged unit does), or set " +
      "RUNTIME_DIRECTORY or RECODEX_MONITOR_ADDON_DIR to a writable directory on an exec mount.",
  );
  err.code = "ERR_RECODEX_ADDON_LOAD";
  // This runs while the bundle's modules load, before main() can catch anything: report
  // it as a clean message and exit 1 (internal error) instead of a stack trace.
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
}

function loadNextToBundle() {
  const file = path.join(__dirname, ASSET);
  const mod = { exports: {} };
  process.dlopen(mod, file, os.constants.dlopen.RTLD_NOW);
  return mod.exports;
}

function load() {
  let sea;
  try {
    sea = require("node:sea");
  } catch {
    sea = undefined;
  }
  if (sea && sea.isSea()) return loadFromSea(sea);
  return loadNextToBundle();
}

Object.defineProperty(exports, "__esModule", { value: true });
exports.default = load();
