// Readiness notification for systemd (the packaged unit is Type=notify, so that
// `systemctl start` returns once both ports accept and fails when the monitor cannot
// start). Node cannot send on the AF_UNIX datagram socket named by $NOTIFY_SOCKET, so the
// message goes through systemd's own `systemd-notify` helper, a child of ours; the unit's
// NotifyAccess=all lets systemd accept it from that child, and systemd >= 246 makes the
// helper wait until the message has been processed. Without $NOTIFY_SOCKET (not started
// by systemd, or not as Type=notify) nothing happens.
import { execFile } from "node:child_process";
import type { Log } from "./logger.ts";

const TIMEOUT_MS = 10_000;

/** Tells systemd that start-up has finished. A failure is logged, never thrown: the relay
 *  works either way, and systemd's start timeout reports a readiness that never came. */
export function notifyReady(log: Pick<Log, "warning">): void {
  if (!process.env.NOTIFY_SOCKET) return;
  const warn = (why: string) => log.warning(`cannot tell systemd that the monitor is ready: ${why}`);
  try {
    execFile("systemd-notify", ["READY=1"], { timeout: TIMEOUT_MS }, (err, _stdout, stderr) => {
      if (err !== null) warn(`systemd-notify READY=1: ${stderr.trim() || err.message}`);
    });
  } catch (err) {
    warn((err as Error).message);
  }
}
