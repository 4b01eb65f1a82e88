/**
 * `shed-host-agent run`: serve until SIGINT/SIGTERM. The policy is reloaded
 * on SIGHUP and when its files change (watched); an invalid edit is logged
 * with its errors and the policy in force stays.
 */
import type { Logger } from '../../protocol/log.js';
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
  await broker.start();
  const watcher = new PolicyWatcher({ file: configPath, onChange: () => broker.reload(), log });
  log.info(`shed-host-agent ready (policy ${broker.policy.files.join(', ')}; reloads on edit and on SIGHUP)`);
  return new Promise<number>((resolve) => {
    const onHup = () => void broker.reload();
    const stop = (signal: string) => {
      log.info(`${signal}: stopping`);
      process.off('SIGHUP', onHup);
      watcher.close();
      broker.stop().then(() => resolve(0), (err: Error) => {
        log.error(`unclean stop: ${err.message}`);
        resolve(1);
      });
    };
    process.on('SIGHUP', onHup);
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
