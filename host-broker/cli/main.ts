#!/usr/bin/env node
/** shed-host-agent: the host side of shed-extensions. A thin shell over the modules. */
import { parseArgs } from 'node:util';
import { createLogger } from '../../protocol/log.js';
import { VERSION } from '../../protocol/version.js';
import { DEFAULT_POLICY_PATH, PolicyError } from '../policy/policy.js';
import { auditCommand } from './audit.js';
import { runBroker } from './run.js';

const USAGE = `Usage: shed-host-agent [command] [--config FILE]

Brokers SSH signatures, AWS role credentials and registry credentials for
shed VMs, decided by a per-shed policy.

Commands:
  run        serve the policy's sheds (the default)
  audit      the audit log as a timeline (audit --help)
  version    print the version

Options:
  --config FILE   the policy file (default ${DEFAULT_POLICY_PATH})
  -h, --help      this text
`;

export async function main(argv: string[]): Promise<number> {
  // audit has options of its own (--shed, --since, --follow): it parses them.
  if (argv[0] === 'audit') return auditCommand(argv.slice(1));
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (err) {
    process.stderr.write(`shed-host-agent: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const command = positionals[0] ?? 'run';
  if (values.help || command === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  const config = values.config ?? DEFAULT_POLICY_PATH;
  switch (command) {
    case 'version':
      process.stdout.write(`shed-host-agent ${VERSION}\n`);
      return 0;
    case 'audit': // options before the command: `--config FILE audit`
      return auditCommand(['--config', config, ...positionals.slice(1)]);
    case 'run':
      return runBroker(config, createLogger('shed-host-agent'));
    default:
      process.stderr.write(`shed-host-agent: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: Error) => {
    const text = err instanceof PolicyError ? err.message : `${err.message}`;
    process.stderr.write(`shed-host-agent: ${text}\n`);
    process.exitCode = 1;
  },
);
