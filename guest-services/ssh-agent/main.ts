#!/usr/bin/env node
/** shed-ext-ssh-agent: a thin CLI over agent.ts. */
import { parseArgs } from 'node:util';
import { createLogger } from '../../protocol/log.js';
import { untilStopSignal } from '../../protocol/signals.js';
import { VERSION } from '../../protocol/version.js';
import { DEFAULT_PUBLISH_URL, parsePublishUrl, publishUrlFromEnv } from '../bus-client.js';
import { GUEST_ENV_FILE } from '../guest-env.js';
import { DEFAULT_SOCK, startSshAgent } from './agent.js';

const USAGE = `Usage: shed-ext-ssh-agent [--sock PATH] [--publish-url URL]
       shed-ext-ssh-agent version

An SSH agent for this shed whose keys stay on the host: ssh, git, scp and
ssh-keygen -Y sign through it with SSH_AUTH_SOCK=PATH, and shed-host-agent
on the host decides which keys and servers this shed may use.

Options:
  --sock PATH          the agent socket, mode 0600 (default ${DEFAULT_SOCK});
                       ssh-agent.status beside it says whether the host answers
  --publish-url URL    shed-agent's publish endpoint, or unix:/path for a
                       broker socket (default $SHED_PUBLISH_URL, else the
                       one in ${GUEST_ENV_FILE}, else
                       ${DEFAULT_PUBLISH_URL})
  -h, --help           this text
`;

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        sock: { type: 'string' },
        'publish-url': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    });
  } catch (err) {
    process.stderr.write(`shed-ext-ssh-agent: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help || positionals[0] === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.version || positionals[0] === 'version') {
    process.stdout.write(`shed-ext-ssh-agent ${VERSION}\n`);
    return 0;
  }
  if (positionals.length) {
    process.stderr.write(`shed-ext-ssh-agent: unknown command ${JSON.stringify(positionals[0])}\n${USAGE}`);
    return 2;
  }
  const sockPath = values.sock ?? DEFAULT_SOCK;
  const publishUrl = values['publish-url'] ?? publishUrlFromEnv();
  if (!sockPath.startsWith('/')) {
    process.stderr.write(`shed-ext-ssh-agent: --sock must be an absolute path, got ${JSON.stringify(sockPath)}\n`);
    return 2;
  }
  try {
    parsePublishUrl(publishUrl);
  } catch (err) {
    process.stderr.write(`shed-ext-ssh-agent: ${(err as Error).message}\n`);
    return 2;
  }

  const log = createLogger('shed-ext-ssh-agent');
  const stopSignal = untilStopSignal();
  let agent;
  try {
    agent = await startSshAgent({ sockPath, publishUrl, log });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const hint = code === 'EACCES' ? `; no permission to create it: run as the shed user, or pass --sock in a directory you own` : '';
    log.error(`cannot serve ${sockPath}: ${(err as Error).message}${hint}`);
    return 1;
  }
  log.info(`${await stopSignal}: stopping`);
  await agent.close();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: Error) => {
    process.stderr.write(`shed-ext-ssh-agent: ${err.message}\n`);
    process.exitCode = 1;
  },
);
