// TCP peers that misbehave the way an attacker's do: sockets that connect and send half a
// request, or nothing, or a body nobody asked for, and note what the monitor did about it.
import { connect, type Socket } from "node:net";
import { upgradeRequest } from "./browser.ts";
import { WAIT_MS, withTimeout } from "./wait.ts";

/** A TCP socket to the monitor that records what the monitor sent and whether it hung up. */
export class RawSocket {
  readonly socket: Socket;
  readonly connected: Promise<void>;
  /** The bytes the monitor sent (the first 64 KiB). */
  received = "";
  closed = false;
  error: string | null = null;
  readonly ended: Promise<void>;

  constructor(port: number) {
    this.socket = connect({ port, host: "127.0.0.1" });
    this.connected = new Promise((resolve, reject) => {
      this.socket.once("connect", () => resolve());
      this.socket.once("error", reject);
    });
    this.connected.catch(() => {});
    this.socket.on("error", (err: NodeJS.ErrnoException) => {
      this.error ??= err.code ?? err.message;
    });
    this.socket.on("data", (d: Buffer) => {
      if (this.received.length < 65536) this.received += d.toString("latin1");
    });
    this.ended = new Promise((resolve) =>
      this.socket.once("close", () => {
        this.closed = true;
        resolve();
      }),
    );
  }

  /** Resolves once the monitor has closed the connection. */
  waitClosed(what = "the monitor to close the socket", ms = WAIT_MS): Promise<void> {
    return withTimeout(this.ended, what, ms);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** An upgrade request without the blank line that would end its headers (slowloris). */
export function partialUpgrade(port: number): string {
  return upgradeRequest(port).slice(0, -2);
}
