/**
 * `shed-host-agent status [--json] [--state-dir DIR]`: what the running
 * daemon loaded and how its connections fare, asked of the daemon itself
 * over its status socket. Exit 0 with the report; 1 when nothing answers
 * (not running); 2 when the socket answers something that is not a status.
 */
import { terminalSafeJson } from '../../protocol/text.js';
import { NotRunning, queryStatus, StatusGarbage } from '../status/client.js';
import { formatStatus } from '../status/format.js';
import { statusSocketPath } from '../status/server.js';
import type { Io } from './io.js';

export interface StatusCommandOptions {
  json?: boolean;
  stateDir?: string;
  timeoutMs?: number;
}

export async function statusCommand(options: StatusCommandOptions, io: Io): Promise<number> {
  const socketPath = statusSocketPath(options.stateDir);
  try {
    const answer = await queryStatus(socketPath, options.timeoutMs);
    io.out(options.json ? `${terminalSafeJson(answer, 2)}\n` : formatStatus(answer));
    return 0;
  } catch (err) {
    // The messages say who they are about ("shed-host-agent is not running …").
    if (err instanceof NotRunning) {
      io.err(`${err.message}\n`);
      return 1;
    }
    if (err instanceof StatusGarbage) {
      io.err(`shed-host-agent status: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}
