// `recodex-monitor check`: placeholder replaced below.
import type { Config } from "./config.ts";
export async function runSelfTest(_config: Config, _timeout: number, _print: (line: string) => void): Promise<number> {
  return 6;
}
