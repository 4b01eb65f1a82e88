#!/usr/bin/env node
/** shed-host-agent: the host side of shed-extensions. A thin shell over the modules. */
import { parseArgs } from 'node:util';
import { createLogger } from '../../protocol/log.js';
import { VERSION } from '../../protocol/version.js';
import { DEFAULT_POLICY_PATH, PolicyError } from '../policy/policy.js';
import { DEFAULT_STATE_DIR } from '../status/answer.js';
import { goStyleArgs } from './args.js';
import { auditCommand } from './audit.js';
import { doctorCommand } from './doctor.js';
import { explainCommand } from './explain-command.js';
import { processIo } from './io.js';
import { checkCommand, policyListCommand, policyShowCommand } from './policy-commands.js';
import { runBroker } from './run.js';
import { statusCommand } from './status.js';

const USAGE = `Usage: shed-host-agent [command] [--config FILE] [--state-dir DIR]

Brokers SSH signatures, AWS role credentials, registry credentials and git
credentials for shed VMs, decided by a per-shed policy.

Commands:
  run                  serve the policy's sheds (the default); reloads the
                       policy on edit and on SIGHUP
  status [--json]      ask the running daemon: its policy files and last
                       reload, each server's namespaces (connected,
                       reconnecting: why, stopped), direct sockets, approval
                       gates, audit health (exit 1 when it is not running)
  check [--json]       validate the policy: one line per shed (exit 0), or
                       every problem as file:line:col (exit 1); --json prints
                       every listed shed's effective policy
  policy list          each shed's role, ssh mode and keys, registries, git
                       hosts, approval and socket
  policy show SHED [--server NAME] [--json]
                       SHED's merged policy as YAML, each value with its
                       origin; --server for a shed of a server under servers:
  explain SHED NAMESPACE OPERATION [--server NAME] [--key FP] [--registry HOST]
                       [--host NAME] [--signing-namespace NS] [--url URL] [--json]
                       the decision the broker would make, and the rule that
                       decides it (exit 0 allowed, 1 denied); touches no backend
  doctor               check the host side (ssh agent, keys, AWS profile,
                       Docker config and helpers, git and its credential
                       helpers, shed-server, audit path)
  audit                the audit log as a timeline (audit --help)
  version              print the version

Options:
  --config FILE   the policy file (default ${DEFAULT_POLICY_PATH});
                  per-shed files go in sheds.d/<shed>.yaml beside it.
                  Also spelled --config=FILE, -config FILE, -config=FILE
  --state-dir DIR where \`run\` keeps its status socket and the memory of
                  answered requests, and where \`status\` asks (default
                  ${DEFAULT_STATE_DIR}); one daemon per directory
  -V, --version   print the version
  -h, --help      this text
`;

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  help: { type: 'boolean', short: 'h' },
  server: { type: 'string' },
  key: { type: 'string' },
  registry: { type: 'string' },
  host: { type: 'string' },
  'signing-namespace': { type: 'string' },
  url: { type: 'string' },
  json: { type: 'boolean' },
  'state-dir': { type: 'string' },
  version: { type: 'boolean', short: 'V' },
} as const;

/** Set by `run`: exit once it returns, whatever handle a peer may still hold open. */
let forceExit = false;

export async function main(rawArgv: string[]): Promise<number> {
  // audit has options of its own (--shed, --since, --follow): it parses them.
  if (rawArgv[0] === 'audit') return auditCommand(goStyleArgs(rawArgv.slice(1), ['config', 'shed', 'since', 'follow', 'json', 'dir', 'file', 'help']));
  const argv = goStyleArgs(rawArgv, Object.keys(OPTIONS));
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: OPTIONS });
  } catch (err) {
    process.stderr.write(`shed-host-agent: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.version) {
    process.stdout.write(`shed-host-agent ${VERSION}\n`);
    return 0;
  }
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
      forceExit = true;
      return runBroker(config, createLogger('shed-host-agent'), { stateDir: values['state-dir'] });
    case 'status':
      if (positionals.length > 1) {
        process.stderr.write(`shed-host-agent status: unexpected argument ${JSON.stringify(positionals[1]!.slice(0, 64))}\n${USAGE}`);
        return 2;
      }
      return statusCommand({ json: values.json, stateDir: values['state-dir'] }, processIo);
    case 'check':
      return checkCommand(config, processIo, { json: values.json });
    case 'policy': {
      const sub = positionals[1];
      if (sub === 'list') return policyListCommand(config, processIo);
      if (sub === 'show') return policyShowCommand(config, positionals[2], processIo, { server: values.server, json: values.json });
      process.stderr.write(`shed-host-agent policy: expected \`policy list\` or \`policy show SHED\`\n${USAGE}`);
      return 2;
    }
    case 'explain':
      return explainCommand(config, positionals.slice(1), values, processIo);
    case 'doctor':
      return doctorCommand(config, processIo);
    default:
      process.stderr.write(`shed-host-agent: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

// A reader that stops early (`policy list | head -1`) closes the pipe: that is
// the end of the output, not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // The broker has stopped everything it started: nothing it left (a peer
    // that keeps a socket half-open) may keep the process from exiting.
    if (forceExit) process.stderr.write('', () => process.exit(code));
  },
  (err: Error) => {
    const text = err instanceof PolicyError ? err.message : `${err.message}`;
    process.stderr.write(`shed-host-agent: ${text}\n`);
    process.exitCode = 1;
  },
);
