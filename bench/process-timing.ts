/**
 * Timing one-shot processes (the credential helpers against bare node): wall
 * time from spawn to exit, and the process's own CPU time, which a preload
 * reports on stderr at exit (on a shared machine wall time swings with other
 * load, CPU time much less). Used by bench/docker-helper.ts and
 * bench/git-helper.ts.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

const CPU_PRELOAD = `process.on('exit', () => { const u = process.cpuUsage(); process.stderr.write('CPU_MS ' + (u.user + u.system) / 1000 + '\\n'); });\n`;

export interface Sample { wall: number; cpu: number }

/** Writes the CPU preload into `dir`; `timed` (a bound function) runs node processes with it. */
export class ProcessTimer {
  private readonly preload: string;

  constructor(dir: string) {
    this.preload = path.join(dir, 'cpu-preload.cjs');
    fs.writeFileSync(this.preload, CPU_PRELOAD);
  }

  /** `node <args>` with `input` on stdin: its wall and CPU time; rejects on a non-zero exit, or an answer other than `expected` when given. */
  readonly timed = (args: string[], input: string, env: NodeJS.ProcessEnv, expected?: string): Promise<Sample> =>
    new Promise((resolve, reject) => {
      const started = performance.now();
      const child = spawn(process.execPath, ['-r', this.preload, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.once('error', reject);
      child.once('exit', (code) => {
        const wall = performance.now() - started;
        const cpu = Number(/CPU_MS ([\d.]+)/.exec(err)?.[1] ?? NaN);
        if (code !== 0) reject(new Error(`${args.join(' ')} exited ${code}: ${(out + err).slice(0, 300)}`));
        else if (expected !== undefined && out !== expected) reject(new Error(`${args.join(' ')} answered ${JSON.stringify(out)}: ${err.slice(0, 300)}`));
        else resolve({ wall, cpu });
      });
      child.stdin.end(input);
    });
}

function quantile(sorted: number[], q: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i]!;
}

export function stats(samples: number[]): { median: number; p10: number; p90: number; min: number } {
  const s = [...samples].sort((a, b) => a - b);
  return { median: quantile(s, 0.5), p10: quantile(s, 0.1), p90: quantile(s, 0.9), min: s[0]! };
}

export const fmt = (ms: number) => ms.toFixed(1);
