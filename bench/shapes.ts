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
  rounds: number; // alternating floor/monitor rounds unless --rounds says otherwise
};

/** A shape with no waves: RSS per idle subscribed connection only (after one warm-up wave). */
export const idleOnly = (shape: Shape) => shape.satWaves === 0;

/** Small shapes for `--smoke` (CI): the same three kinds of load, in well under a minute. */
export const SMOKE_SHAPES: Shape[] = [
  { key: "a", title: "20 channels x 1 client", channels: 20, perChannel: 1, idle: 0, satWaves: 3, pacedWaves: 1, pacedChannels: 20, pacedRate: 2000, rounds: 1 },
  { key: "b", title: "100 channels x 2 clients", channels: 100, perChannel: 2, idle: 0, satWaves: 2, pacedWaves: 1, pacedChannels: 50, pacedRate: 2000, rounds: 1 },
  { key: "c", title: "1,000 idle + 20 channels x 1", channels: 20, perChannel: 1, idle: 1000, satWaves: 2, pacedWaves: 1, pacedChannels: 20, pacedRate: 2000, rounds: 1 },
  { key: "i", title: "500 idle subscribed connections", channels: 20, perChannel: 1, idle: 500, satWaves: 0, pacedWaves: 0, pacedChannels: 0, pacedRate: 0, rounds: 1 },
];

export const FULL_SHAPES: Shape[] = [
  { key: "a", title: "100 channels x 1 client", channels: 100, perChannel: 1, idle: 0, satWaves: 10, pacedWaves: 6, pacedChannels: 100, pacedRate: 5000, rounds: 8 },
  { key: "b", title: "1,000 channels x 2 clients", channels: 1000, perChannel: 2, idle: 0, satWaves: 2, pacedWaves: 2, pacedChannels: 250, pacedRate: 5000, rounds: 8 },
  { key: "c", title: "10,000 idle + 100 channels x 1", channels: 100, perChannel: 1, idle: 10000, satWaves: 8, pacedWaves: 2, pacedChannels: 100, pacedRate: 5000, rounds: 4 },
  { key: "i", title: "2,000 idle subscribed connections", channels: 100, perChannel: 1, idle: 2000, satWaves: 0, pacedWaves: 0, pacedChannels: 0, pacedRate: 0, rounds: 4 },
];

/**
 * The scaling table (bench/scaling.ts), each row one run of the monitor, sizes ascending:
 * channels kept (preloaded with `keptLength` messages each, no FINISHED) under a fixed live
 * load; open connections (idle subscribed ones + the same live load); subscribers per channel
 * (`fanoutConnections` tabs in all, over connections/subscribers jobs); the history a late
 * joiner gets replayed.
 */
export type ScalingSizes = {
  channels: number[];
  keptLength: number;
  connections: number[];
  subscribers: number[];
  fanoutConnections: number;
  replay: number[];
  /** The live load of the channels and connections rows: waves of `liveJobs` x 1 tab. */
  liveJobs: number;
  liveWaves: number;
  fanoutWaves: number;
  replayJoiners: number;
};

export const FULL_SCALING: ScalingSizes = {
  channels: [1000, 10000, 100000],
  keptLength: 5,
  connections: [1000, 5000, 15000],
  subscribers: [1, 10, 100],
  fanoutConnections: 1000,
  replay: [100, 1000, 10000],
  liveJobs: 100,
  liveWaves: 12,
  fanoutWaves: 4,
  replayJoiners: 5,
};

/** `--quick`: every row at small sizes, to check that the section works. */
export const QUICK_SCALING: ScalingSizes = {
  channels: [100, 1000, 5000],
  keptLength: 5,
  connections: [200, 500, 1000],
  subscribers: [1, 10, 50],
  fanoutConnections: 200,
  replay: [100, 1000, 5000],
  liveJobs: 20,
  liveWaves: 3,
  fanoutWaves: 2,
  replayJoiners: 2,
};

/** Retention for the scaling rows: nothing is dropped, a 10,000-message history is kept whole. */
export const SCALING_RETENTION: Retention = {
  finished_ttl: 3600,
  idle_ttl: 3600,
  max_channels: 200000,
  max_messages_per_channel: 20000,
  max_bytes_per_channel: 4194304, // at most limits.max_buffered_bytes (relay.ts)
  max_total_bytes: 1073741824,
};

/** The restored state file of the start-up figures: about this many bytes (issue 13: ~100 MB). */
export const FULL_STATE_BYTES = 100 * 1024 * 1024;
export const QUICK_STATE_BYTES = 10 * 1024 * 1024;

/**
 * The Redis shape (issue 9, bench/redis-shape.ts): jobs of `channels` per wave, 2 tabs each,
 * through each variant; its paced waves run at `pacedRate` broker messages/s (not a fraction
 * of the floor's rate: the floor is not one of its variants).
 */
export type RedisShape = { key: "redis"; channels: number; satWaves: number; pacedWaves: number; pacedRate: number };

/** memory: one monitor, memory store; redis-1: one monitor on the Redis store; redis-3: the broker to one monitor, the tabs on two others. */
export const REDIS_VARIANTS = ["memory", "redis-1", "redis-3"] as const;
export type RedisVariant = (typeof REDIS_VARIANTS)[number];

export const SMOKE_REDIS_SHAPE: RedisShape = { key: "redis", channels: 20, satWaves: 2, pacedWaves: 1, pacedRate: 1000 };
export const FULL_REDIS_SHAPE: RedisShape = { key: "redis", channels: 100, satWaves: 8, pacedWaves: 2, pacedRate: 2000 };

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
