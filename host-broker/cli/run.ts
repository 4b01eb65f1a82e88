/**
 * `shed-host-agent run`: serve until SIGINT/SIGTERM. The policy is reloaded
 * on SIGHUP and when its files change (watched); an invalid edit is logged
 * with its errors and the policy in force stays. The status socket
 * (status/server.ts) answers `shed-host-agent status` from the start of
 * start-up to the end of the stop.
 */
import path from 'node:path';
import type { Logger } from '../../protocol/log.js';
import { untilStopSignal } from '../../protocol/signals.js';
import { Broker } from '../broker.js';
import { expandHome } from '../policy/effective.js';
import { loadPolicyFile } from '../policy/policy.js';
import { PolicyWatcher } from '../policy/watch.js';
import { statusAnswer } from '../status/snapshot.js';
import { StatusServer, statusSocketPath } from '../status/server.js';

export interface RunOptions {
  /** Where the status socket and the memory of answered request ids go (default ~/.local/state/shed). */
  stateDir?: string;
}

export async function runBroker(configPath: string, log: Logger, options: RunOptions = {}): Promise<number> {
  const startedAt = new Date().toISOString();
  const broker = new Broker({
    loadPolicy: () => {
      const policy = loadPolicyFile(configPath);
      for (const notice of policy.notices) log.warn(notice);
      return policy;
    },
    log,
    stateDir: options.stateDir,
  });
  const status = new StatusServer({
    socketPath: statusSocketPath(options.stateDir),
    answer: () => statusAnswer(broker, { configPath: path.resolve(expandHome(configPath)), startedAt }),
    log,
  });
  // Signal handlers first: a SIGTERM or SIGHUP during start-up must not kill the broker mid-way.
  const stopSignal = untilStopSignal();
  let started = false;
  const onHup = () => {
    if (started) void broker.reload();
    else log.info('SIGHUP during start-up: the policy is being read now');
  };
  process.on('SIGHUP', onHup);
  // The status socket first: it answers during start-up, and a live one means
  // another broker runs with this state directory, which must not be fought.
  try {
    await status.start();
  } catch (err) {
    process.off('SIGHUP', onHup);
    log.error(`not started: ${(err as Error).message}`);
    return 1;
  }
  // Start is all or nothing (Broker.start undoes a partial one), and a stop
  // signal meanwhile stops it at once.
  const starting = broker.start();
  const first = await Promise.race([starting.then(() => undefined, (err: Error) => err), stopSignal]);
  if (typeof first === 'string') {
    log.info(`${first} during start-up: stopping`);
    process.off('SIGHUP', onHup);
    await broker.stop();
    await starting.catch(() => undefined);
    await status.close();
    return 0;
  }
  if (first instanceof Error) {
    process.off('SIGHUP', onHup);
    await status.close();
    log.error(`not started: ${first.message}`);
    return 1;
  }
  started = true;
  const watcher = new PolicyWatcher({ file: configPath, onChange: () => broker.reload(), log });
  log.info(`shed-host-agent ready (policy ${broker.policy.files.join(', ')}; reloads on edit and on SIGHUP; \`shed-host-agent status${options.stateDir ? ` --state-dir ${options.stateDir}` : ''}\` asks it, over ${status.socketPath})`);
  log.info(`${await stopSignal}: stopping`);
  process.off('SIGHUP', onHup);
  watcher.close();
  try {
    await broker.stop();
    return 0;
  } catch (err) {
    log.error(`unclean stop: ${(err as Error).message}`);
    return 1;
  } finally {
    await status.close();
  }
}
