// The shapes of load the benchmark runs, and the retention the relay runs them with.

export type Shape = {
  key: string;
  title: string;
  channels: number; // concurrent jobs per wave
  perChannel: number; // browser tabs per job
  idle: number; // idle subscribed connections held open during the run
  satWaves: number;
  pacedWaves: number;
  pacedChannels: number; // jobs per paced wave (same tabs per job)
  pacedRate: number; // cap of the broker messages per second in the paced waves
};

/** Small shapes for `--smoke` (CI): the same three kinds of load, in well under a minute. */
export const SMOKE_SHAPES: Shape[] = [
  { key: "a", title: "20 channels x 1 client", channels: 20, perChannel: 1, idle: 0, satWaves: 3, pacedWaves: 1, pacedChannels: 20, pacedRate: 2000 },
  { key: "b", title: "100 channels x 2 clients", channels: 100, perChannel: 2, idle: 0, satWaves: 2, pacedWaves: 1, pacedChannels: 50, pacedRate: 2000 },
  { key: "c", title: "1,000 idle + 20 channels x 1", channels: 20, perChannel: 1, idle: 1000, satWaves: 2, pacedWaves: 1, pacedChannels: 20, pacedRate: 2000 },
];

export const FULL_SHAPES: Shape[] = [
  { key: "a", title: "100 channels x 1 client", channels: 100, perChannel: 1, idle: 0, satWaves: 10, pacedWaves: 2, pacedChannels: 100, pacedRate: 5000 },
  { key: "b", title: "1,000 channels x 2 clients", channels: 1000, perChannel: 2, idle: 0, satWaves: 2, pacedWaves: 1, pacedChannels: 250, pacedRate: 5000 },
  { key: "c", title: "10,000 idle + 100 channels x 1", channels: 100, perChannel: 1, idle: 10000, satWaves: 8, pacedWaves: 2, pacedChannels: 100, pacedRate: 5000 },
];

/** Paced waves run at this fraction of the floor's saturated rate (at most shape.pacedRate). */
export const PACED_FRACTION = 0.25;

export type Retention = Record<string, number>;

/** Retention for the shapes: large enough that nothing is dropped while a wave runs. */
export const BENCH_RETENTION: Retention = {
  finished_ttl: 300,
  idle_ttl: 3600,
  max_channels: 200000,
  max_messages_per_channel: 1000,
  max_bytes_per_channel: 1048576,
  max_total_bytes: 1073741824,
};
