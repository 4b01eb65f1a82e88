/** Running a one-shot guest helper (guest-services/one-shot.ts) in-process, with its I/O captured. */
import type { HelperIO } from '../../guest-services/one-shot.js';

export interface CapturedRun {
  code: number;
  stdout: string;
  stderr: string;
  /** Whether the helper asked for its stdin. */
  stdinRead: boolean;
}

export async function runCaptured(
  runHelper: (argv: string[], io: HelperIO) => Promise<number>,
  argv: string[],
  options: { stdin?: string; env?: Record<string, string>; tty?: boolean } = {},
): Promise<CapturedRun> {
  let stdout = '';
  let stderr = '';
  let stdinRead = false;
  const code = await runHelper(argv, {
    readStdin: async () => {
      stdinRead = true;
      return options.stdin ?? '';
    },
    stdinIsTTY: options.tty,
    stdout: (t) => (stdout += t),
    stderr: (t) => (stderr += t),
    env: options.env ?? {},
  });
  return { code, stdout, stderr, stdinRead };
}
