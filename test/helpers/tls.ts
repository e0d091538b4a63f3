// TLS for tests: two committed self-signed certificates for localhost and 127.0.0.1 (valid
// for a hundred years, so no openssl at test time), and the fingerprints a peer sees.
import { X509Certificate } from "node:crypto";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import { connect } from "node:tls";
import type { Browser } from "./browser.ts";
import { ROOT } from "./monitor-process.ts";
import { withTimeout } from "./wait.ts";

export interface CertFiles {
  cert: string;
  key: string;
  /** SHA-256 fingerprint as node reports it (AA:BB:...). */
  fingerprint: string;
}

function fixture(name: string): CertFiles {
  const dir = join(ROOT, "test", "fixtures", "tls");
  const cert = join(dir, `${name}.crt`);
  return { cert, key: join(dir, `${name}.key`), fingerprint: new X509Certificate(readFileSync(cert)).fingerprint256 };
}

export const CERT_A = fixture("a");
/** Another certificate for the same names (a renewal), with its own key. */
export const CERT_B = fixture("b");

/** Replaces the contents of `target` by those of `source` atomically (write + rename). */
export function replaceFile(source: string, target: string): void {
  const tmp = `${target}.tmp`;
  writeFileSync(tmp, readFileSync(source));
  renameSync(tmp, target);
}

/** The fingerprint of the certificate a new TLS handshake with 127.0.0.1:port presents. */
export function serverFingerprint(port: number): Promise<string> {
  const handshake = new Promise<string>((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, rejectUnauthorized: false, servername: "localhost" }, () => {
      const fp = socket.getPeerCertificate().fingerprint256;
      socket.destroy();
      resolve(fp);
    });
    socket.once("error", reject);
  });
  return withTimeout(handshake, `a TLS handshake on port ${port}`);
}

/** The fingerprint of the certificate an open wss client saw. */
export function peerFingerprint(b: Browser): string {
  return (b.socket as TLSSocket).getPeerCertificate().fingerprint256;
}
