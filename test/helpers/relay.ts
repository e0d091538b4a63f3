// The relay under test, end to end: a monitor, a broker peer connected to it, and the
// browsers a test opens, all closed together. It answers the two questions a test must
// never answer with the clock: "is this client subscribed?" (the monitor's log line) and
// "has the monitor handled what the broker sent?" (a sentinel message that must arrive).
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { Broker } from "./broker.ts";
import { Browser, type ClientOptions } from "./browser.ts";
import { startMonitor, type MonitorProcess, type StartOptions } from "./monitor-process.ts";
import { escapeRegExp } from "./wait.ts";

export interface ConnectOptions {
  path?: string;
  protocols?: string | string[];
  ws?: ClientOptions;
}

export interface SubscribeOptions extends ConnectOptions {
  /** The first message, when it is not the channel id itself (a resume request). */
  first?: string;
}

const FINISHED = '{"command": "FINISHED"}';

/** The monitor's log line for a subscription to `channel` (logged as the monitor takes it). */
export function subscribedLine(channel: string): RegExp {
  return new RegExp(`subscribed to channel ${escapeRegExp(channel)}( resuming after offset \\d+)?\\n`);
}

export class Relay {
  readonly monitor: MonitorProcess;
  readonly broker: Broker;
  private readonly brokers: Broker[];
  private readonly browsers: Browser[] = [];
  private sentinels = 0;
  private markers = 0;
  private subscribing: Promise<unknown> = Promise.resolve();

  private constructor(monitor: MonitorProcess, broker: Broker) {
    this.monitor = monitor;
    this.broker = broker;
    this.brokers = [broker];
  }

  static async start(options: StartOptions = {}): Promise<Relay> {
    const monitor = await startMonitor(options);
    return new Relay(monitor, await Broker.connect(monitor.zmqPort));
  }

  /** Another broker peer, closed with the relay. */
  async peer(): Promise<Broker> {
    const b = await Broker.connect(this.monitor.zmqPort);
    this.brokers.push(b);
    return b;
  }

  /** A client with an open connection that has not sent anything yet. */
  async connect(options: ConnectOptions = {}): Promise<Browser> {
    const b = new Browser(this.monitor.url(options.path), options.protocols, options.ws);
    this.browsers.push(b);
    await b.opened;
    return b;
  }

  /**
   * A client subscribed to `channel`: resolves once the monitor has logged the subscription
   * (it logs it as it takes it, so what the broker sends from then on is live). One at a time,
   * so that each waits for its own line; needs the log on stderr at level debug (at info
   * only a channel the broker has written to is logged: issue 10, a browser must not be able
   * to fill the log).
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Promise<Browser> {
    const next = this.subscribing.then(async () => {
      const since = this.monitor.mark();
      const b = await this.connect(options);
      b.ws.send(options.first ?? channel);
      await this.monitor.waitFor(subscribedLine(channel), { since });
      return b;
    });
    this.subscribing = next.catch(() => {});
    return next;
  }

  /**
   * Resolves once the monitor has handled every message `broker` sent before: a sentinel
   * client gets a FINISHED sent after them on a channel of its own (ZeroMQ keeps one peer's
   * messages in order, and the monitor handles them one by one). That channel is kept like
   * any finished job, and it may be created before channels that the earlier messages create
   * (a subscription can overtake them): a test of offsets, channel counts or caps waits on
   * its own channel's messages instead.
   */
  async settled(broker = this.broker): Promise<void> {
    const channel = `sentinel-${++this.sentinels}`;
    const b = await this.subscribe(channel);
    await broker.send(channel, "FINISHED");
    assert.deepEqual(await b.waitMessages(1), [FINISHED], "the sentinel's message");
    assert.equal((await b.waitClose()).code, 1000);
  }

  /**
   * The messages `b` (subscribed to `channel`) got before a marker the broker sends now. A
   * test that checks that nothing (or nothing more) arrived ends with this: whatever the
   * monitor delivered wrongly from what the broker sent earlier comes before the marker.
   */
  async beforeMarker(b: Browser, channel: string, broker = this.broker): Promise<string[]> {
    const command = `MARKER_${++this.markers}`;
    await broker.send(channel, command);
    return b.messagesBefore(`{"command": "${command}"}`);
  }

  /** How many of the clients opened through this relay are still open. */
  get openClients(): number {
    return this.browsers.filter((b) => b.closed === null).length;
  }

  async close(): Promise<void> {
    for (const b of this.browsers) b.close();
    for (const b of this.brokers) b.close();
    await this.monitor.stop("SIGKILL");
  }
}

/** Relay.start() for one test: everything is closed when the test ends. */
export async function relay(t: TestContext, options: StartOptions = {}): Promise<Relay> {
  const r = await Relay.start(options);
  t.after(() => r.close());
  return r;
}
