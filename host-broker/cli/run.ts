/**
 * `shed-host-agent run`: serve until SIGINT/SIGTERM. The policy is reloaded
 * on SIGHUP and when its files change (watched); an invalid edit is logged
 * with its errors and the policy in force stays.
 */
import type { Logger } from '../../protocol/log.js';
import { untilStopSignal } from '../../protocol/signals.js';
import { Broker } from '../broker.js';
import { loadPolicyFile } from '../policy/policy.js';
import { PolicyWatcher } from '../policy/watch.js';

export async function runBroker(configPath: string, log: Logger): Promise<number> {
  const broker = new Broker({
    loadPolicy: () => {
      const policy = loadPolicyFile(configPath);
      for (const notice of policy.notices) log.warn(notice);
      return policy;
    },
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
  // Start is all or nothing (Broker.start undoes a partial one), and a stop
  // signal meanwhile stops it at once.
  const starting = broker.start();
  const first = await Promise.race([starting.then(() => undefined, (err: Error) => err), stopSignal]);
  if (typeof first === 'string') {
    log.info(`${first} during start-up: stopping`);
    process.off('SIGHUP', onHup);
    await broker.stop();
    await starting.catch(() => undefined);
    return 0;
  }
  if (first instanceof Error) {
    process.off('SIGHUP', onHup);
    log.error(`not started: ${first.message}`);
    return 1;
  }
  started = true;
  const watcher = new PolicyWatcher({ file: configPath, onChange: () => broker.reload(), log });
  log.info(`shed-host-agent ready (policy ${broker.policy.files.join(', ')}; reloads on edit and on SIGHUP)`);
  log.info(`${await stopSignal}: stopping`);
  process.off('SIGHUP', onHup);
  watcher.close();
  try {
    await broker.stop();
    return 0;
  } catch (err) {
    log.error(`unclean stop: ${(err as Error).message}`);
    return 1;
  }
}
