// A real ZeroMQ ROUTER playing the ReCodEx broker: it connects to the monitor and addresses
// every message to the routing id "recodex-monitor".
import * as zmq from "zeromq";
import { waitUntil } from "./wait.ts";

export class Broker {
  readonly socket: zmq.Router;

  private constructor() {
    this.socket = new zmq.Router({ mandatory: true, linger: 0 });
  }

  static async connect(port: number): Promise<Broker> {
    const b = new Broker();
    b.socket.connect(`tcp://127.0.0.1:${port}`);
    return b;
  }

  /**
   * Sends raw frames after the routing id. Until the ZeroMQ handshake has told this ROUTER
   * the monitor's routing id, `mandatory` refuses the send with EHOSTUNREACH: that refusal
   * is the observable waited on.
   */
  async sendFrames(frames: (string | Buffer)[]): Promise<void> {
    await waitUntil(async () => {
      try {
        await this.socket.send(["recodex-monitor", ...frames]);
        return true;
      } catch (err) {
        if ((err as { code?: string }).code !== "EHOSTUNREACH") throw err;
        return false;
      }
    }, "the ZeroMQ handshake with the monitor");
  }

  send(channel: string, command: string, ...rest: string[]): Promise<void> {
    return this.sendFrames([channel, command, ...rest]);
  }

  close(): void {
    this.socket.close();
  }
}
