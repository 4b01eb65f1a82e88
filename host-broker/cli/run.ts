/** `shed-host-agent run`: serve until SIGINT/SIGTERM; SIGHUP reloads the policy. */
import type { Logger } from '../../protocol/log.js';
import { Broker } from '../broker.js';
import { loadPolicyFile } from '../policy/policy.js';

export async function runBroker(configPath: string, log: Logger): Promise<number> {
  const broker = new Broker({ loadPolicy: () => loadPolicyFile(configPath), log });
  await broker.start();
  log.info(`shed-host-agent ready (policy ${broker.policy.files.join(', ')})`);
  return new Promise<number>((resolve) => {
    const onHup = () => void broker.reload();
    const stop = (signal: string) => {
      log.info(`${signal}: stopping`);
      process.off('SIGHUP', onHup);
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
