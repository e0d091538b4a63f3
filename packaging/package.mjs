#!/usr/bin/env node
// Builds the installable packages from dist/recodex-monitor (run `npm run build` first):
//   dist/recodex-monitor-<version>-<release>.x86_64.rpm   (rpmbuild; apt-get install rpm)
//   dist/recodex-monitor_<version>-<release>_amd64.deb    (dpkg-deb, fakeroot not needed)
//
//   npm run package
//   node packaging/package.mjs [--release N] [--version V] [--outdir DIR] [--only rpm|deb]
//                              [--binary FILE] [--fast]
// --fast compresses with zstd level 3 (tests); the default is xz, readable by
// every dpkg and rpm in use. The binary is never stripped or otherwise touched: it is a
// Node single executable application and any post-processing corrupts it.
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
const { values: opts } = parseArgs({
  options: {
    version: { type: "string", default: pkg.version },
    release: { type: "string", default: "1" },
    outdir: { type: "string", default: path.join(root, "dist") },
    binary: { type: "string", default: path.join(root, "dist/recodex-monitor") },
    only: { type: "string" },
    fast: { type: "boolean", default: false },
  },
});

const NAME = "recodex-monitor";
const { version, release } = opts;
if (!/^[0-9][0-9A-Za-z.+~]*$/.test(version)) fail(`bad version ${JSON.stringify(version)}`);
if (!/^[0-9][0-9A-Za-z.+~]*$/.test(release)) fail(`bad release ${JSON.stringify(release)}`);
const outdir = path.resolve(opts.outdir);
const binary = path.resolve(opts.binary);
const unit = path.join(here, "recodex-monitor.service");
const config = path.join(root, "config.yml");
const license = path.join(root, "LICENSE");

function fail(msg) {
  console.error(`package.mjs: ${msg}`);
  process.exit(1);
}

function run(cmd, args, what, env = {}) {
  const r = spawnSync(cmd, args, {
    stdio: ["ignore", "pipe", "pipe"],
    encoding: "utf8",
    env: { ...process.env, ...env },
    maxBuffer: 64 << 20,
  });
  if (r.error) fail(`${what}: ${r.error.code === "ENOENT" ? `${cmd} not found` : r.error.message}`);
  if (r.status !== 0) fail(`${what} failed (exit ${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

for (const f of [binary, unit, config, license]) {
  if (!fs.existsSync(f)) fail(`${path.relative(root, f)} missing${f === binary ? ": run `npm run build` first" : ""}`);
}
// The packaged binary must answer --version with the package version it is shipped as
// (a --version override for test builds only changes the package metadata).
const v = spawnSync(binary, ["--version"], { env: {}, encoding: "utf8" });
if (v.status !== 0 || !v.stdout.includes(pkg.version)) {
  fail(`${binary} --version failed or does not print ${pkg.version}: ${v.stdout}${v.stderr}`);
}
fs.mkdirSync(outdir, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "recodex-monitor-pkg-"));
const children = new Set();
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    for (const c of children) c.kill("SIGTERM");
    fs.rmSync(tmp, { recursive: true, force: true });
    process.exit(130);
  });
}

const t0 = Date.now();
const step = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);

// rpm and deb compress in parallel (xz is single-threaded here: ~65 s each for 111 MB)
try {
  await Promise.all([opts.only !== "deb" && buildRpm(), opts.only !== "rpm" && buildDeb()]);
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}

function runAsync(cmd, args, what, env = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    children.add(child);
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.on("error", (err) => fail(`${what}: ${err.code === "ENOENT" ? `${cmd} not found` : err.message}`));
    child.on("close", (code, sig) => {
      children.delete(child);
      if (code !== 0) fail(`${what} failed (exit ${code ?? sig}):\n${out}`);
      resolve(out);
    });
  });
}

async function buildRpm() {
  const src = path.join(tmp, "rpm-src");
  const top = path.join(tmp, "rpmbuild");
  fs.mkdirSync(src, { recursive: true });
  // hard links would be fine too, but copies keep the source tree untouched
  fs.copyFileSync(binary, path.join(src, NAME));
  fs.copyFileSync(unit, path.join(src, `${NAME}.service`));
  fs.copyFileSync(config, path.join(src, "config.yml"));
  fs.copyFileSync(license, path.join(src, "LICENSE"));
  step(`rpmbuild ${NAME}-${version}-${release}.x86_64.rpm`);
  const defines = [
    ["_topdir", top],
    ["pkg_version", version],
    ["pkg_release", release],
    ["pkg_srcdir", src],
    // reproducible: no build host name or time in the header beyond what is asked for
    ["_buildhost", "reproducible"],
    ["use_source_date_epoch_as_buildtime", "1"],
    ["clamp_mtime_to_source_date_epoch", "1"],
    ["pkg_payload", opts.fast ? "w3.zstdio" : "w6T.xzdio"],
  ];
  const args = ["-bb", "--target", "x86_64-linux", "--nodeps"];
  for (const [k, val] of defines) args.push("--define", `${k} ${val}`);
  args.push(path.join(here, "recodex-monitor.spec"));
  await runAsync("rpmbuild", args, "rpmbuild (apt-get install rpm)", { SOURCE_DATE_EPOCH: sourceDateEpoch() });
  const built = path.join(top, "RPMS/x86_64", `${NAME}-${version}-${release}.x86_64.rpm`);
  if (!fs.existsSync(built)) fail(`rpmbuild did not produce ${built}`);
  const dest = path.join(outdir, path.basename(built));
  fs.copyFileSync(built, dest);
  checkRpm(dest);
  step(`${path.relative(process.cwd(), dest)}: ${(fs.statSync(dest).size / 1e6).toFixed(1)} MB`);
}

function checkRpm(file) {
  // the binary inside must be byte-identical to the one built (nothing stripped it)
  const sums = run("rpm", ["-qp", "--qf", "[%{FILEDIGESTS} %{FILENAMES}\n]", file], "rpm -qp");
  const line = sums.split("\n").find((l) => l.endsWith(" /usr/bin/recodex-monitor"));
  const want = sha256(binary);
  if (!line || !line.startsWith(want)) fail(`${file}: /usr/bin/recodex-monitor differs from ${binary}`);
}

async function buildDeb() {
  const debVersion = `${version}-${release}`;
  const rootDir = path.join(tmp, "deb-root");
  const D = (p) => path.join(rootDir, p);
  for (const d of ["DEBIAN", "usr/bin", "lib/systemd/system", "etc/recodex/monitor", "var/log/recodex", `usr/share/doc/${NAME}`]) {
    fs.mkdirSync(D(d), { recursive: true, mode: 0o755 });
  }
  fs.copyFileSync(binary, D(`usr/bin/${NAME}`));
  fs.chmodSync(D(`usr/bin/${NAME}`), 0o755);
  fs.copyFileSync(unit, D(`lib/systemd/system/${NAME}.service`));
  fs.chmodSync(D(`lib/systemd/system/${NAME}.service`), 0o644);
  fs.copyFileSync(config, D("etc/recodex/monitor/config.yml"));
  fs.chmodSync(D("etc/recodex/monitor/config.yml"), 0o600);
  fs.chmodSync(D("etc/recodex/monitor"), 0o750);
  fs.writeFileSync(
    D(`usr/share/doc/${NAME}/copyright`),
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n" +
      `Upstream-Name: ${NAME}\nSource: https://github.com/ReCodEx/monitor\n\n` +
      "Files: *\nLicense: MIT\n " +
      fs
        .readFileSync(license, "utf8")
        .trim()
        .split("\n")
        .map((l) => (l.trim() === "" ? "." : l))
        .join("\n ") +
      "\n\nFiles: usr/bin/recodex-monitor\nComment: contains the Node.js runtime " +
      "(MIT and bundled third-party licenses, see https://github.com/nodejs/node/blob/main/LICENSE)\n" +
      "License: MIT\n",
  );
  fs.chmodSync(D(`usr/share/doc/${NAME}/copyright`), 0o644);
  for (const s of ["postinst", "prerm", "postrm"]) {
    fs.copyFileSync(path.join(here, "deb", s), D(`DEBIAN/${s}`));
    fs.chmodSync(D(`DEBIAN/${s}`), 0o755);
  }
  fs.writeFileSync(D("DEBIAN/conffiles"), "/etc/recodex/monitor/config.yml\n");
  const installedKiB = Math.ceil(duBytes(rootDir, ["DEBIAN"]) / 1024);
  fs.writeFileSync(
    D("DEBIAN/control"),
    fs
      .readFileSync(path.join(here, "deb/control.in"), "utf8")
      .replace("@VERSION@", debVersion)
      .replace("@INSTALLED_SIZE@", String(installedKiB)),
  );
  // deterministic mtimes
  const epoch = Number(sourceDateEpoch());
  walk(rootDir, (p) => fs.lutimesSync(p, epoch, epoch));

  const dest = path.join(outdir, `${NAME}_${debVersion}_amd64.deb`);
  step(`dpkg-deb ${path.basename(dest)}`);
  const comp = opts.fast ? ["-Zzstd", "-z3"] : ["-Zxz", "-z6"];
  await runAsync("dpkg-deb", ["--root-owner-group", ...comp, "--build", rootDir, dest], "dpkg-deb", {
    SOURCE_DATE_EPOCH: sourceDateEpoch(),
  });
  step(`${path.relative(process.cwd(), dest)}: ${(fs.statSync(dest).size / 1e6).toFixed(1)} MB`);
}

function sourceDateEpoch() {
  if (process.env.SOURCE_DATE_EPOCH) return process.env.SOURCE_DATE_EPOCH;
  const r = spawnSync("git", ["-C", root, "log", "-1", "--format=%ct"], { encoding: "utf8" });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : "1700000000";
}

function sha256(file) {
  return run("sha256sum", [file], "sha256sum").split(" ")[0];
}

function walk(dir, fn) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, fn);
    fn(p);
  }
  fn(dir);
}

function duBytes(dir, skip) {
  let total = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (skip.includes(e.name)) continue;
    const p = path.join(dir, e.name);
    total += e.isDirectory() ? duBytes(p, []) + 4096 : fs.lstatSync(p).size;
  }
  return total;
}
