/** `shed-ext`: status, serve, install-guest, init-token, sshd-env, version. main.ts only wires process I/O to this. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { VERSION } from '../../protocol/version.js';
import { DEFAULT_PUBLISH_URL, parsePublishUrl, publishUrlFromEnv } from '../bus-client.js';
import { GUEST_ENV_FILE } from '../guest-env.js';
import { DEFAULT_AWS_PORT, RECOMMENDED_MOUNT, SetupError, writeSshdEnv } from './guest-setup.js';
import { DEFAULT_SERVICE_USER, formatInstall, installGuest, InstallError } from './install.js';
import { formatReport, runStatus, STATUS_DEADLINE_MS } from './status.js';
import { initToken } from './token.js';

export const PROGRAM = 'shed-ext';

export const USAGE = `Usage: ${PROGRAM} <command> [options]

Guest-side tools of shed-extensions: SSH signatures, AWS role credentials,
registry credentials and git credentials for this VM come from the host
(shed-host-agent).

Commands:
  status [--publish-url URL] [--json]
        ask the host about each namespace (ssh-agent, aws-credentials,
        docker-credentials, git-credentials), 2 s each; exit 0 when all are connected (or
        disabled on purpose by the host policy), 1 otherwise
  serve [--sock PATH] [--port PORT] [--publish-url URL] ...
        the SSH agent and the AWS endpoint in one process, for a guest
        without systemd (\`shed-ext serve --help\`)
  install-guest --root DIR [--publish-url URL] [--user NAME] [--uid N]
                [--aws-port PORT] [--from DIR]
        lay the bundles, launchers, systemd units and config into an image
        root, and create the user the units run as (idempotent).
        --publish-url unix:${RECOMMENDED_MOUNT}/bus.sock: the guest reaches the
        broker through the shed's directory mounted at ${RECOMMENDED_MOUNT}
        (unit drop-ins, environment.d, profile.d, sshd, guest.env);
        --user the user the units run as (default ${DEFAULT_SERVICE_USER}; made if
        missing, with --uid, default the mounted socket's owner or 1000: it
        must be the uid shed-host-agent runs as on the host);
        --aws-port the AWS endpoint's port (default ${DEFAULT_AWS_PORT});
        --from the bundle directory (default: beside this program, or the
        package's build/guest)
  init-token FILE
        create the AWS endpoint's authorization token (0600, no newline) if
        FILE does not already hold one; run at boot by shed-ext-aws-token.service
  sshd-env --user NAME
        as root: give sshd the environment of NAME's sessions with the AWS
        token, for non-login \`ssh vm cmd\` (run at boot by shed-ext-aws-token.service)
  version
        print the version

Environment:
  SHED_PUBLISH_URL  publish URL when --publish-url is not given; else the
                    one in ${GUEST_ENV_FILE} (install-guest --publish-url
                    writes it), else ${DEFAULT_PUBLISH_URL} (shed-agent);
                    unix:/path/to.sock for a shed-host-agent direct socket
`;

export interface CliIO {
  stdout(text: string): void;
  stderr(text: string): void;
  env: Record<string, string | undefined>;
}

function usageError(io: CliIO, message: string): number {
  io.stderr(`${PROGRAM}: ${message}\nTry '${PROGRAM} --help'.\n`);
  return 2;
}

export async function runCli(argv: string[], io: CliIO): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'status':
      return status(rest, io);
    case 'install-guest':
      return install(rest, io);
    case 'serve': {
      // Loaded only for serve: status and the others do not pay for the services.
      const { serveCommand } = await import('../serve/cli.js');
      return serveCommand(rest, io);
    }
    case 'sshd-env':
      return sshdEnv(rest, io);
    case 'init-token':
      return token(rest, io);
    case 'version':
    case '--version':
      io.stdout(`${PROGRAM} (shed-extensions) ${VERSION}\n`);
      return 0;
    case 'help':
    case '--help':
    case '-h':
      io.stdout(USAGE);
      return 0;
    case undefined:
      io.stderr(USAGE);
      return 2;
    default:
      return usageError(io, `unknown command ${JSON.stringify(command.slice(0, 64))}`);
  }
}

function parse(args: string[], options: NonNullable<ParseArgsConfig['options']>, io: CliIO, positionals = 0) {
  try {
    const parsed = parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: positionals > 0, strict: true });
    if (parsed.positionals.length > positionals) {
      return { error: usageError(io, `unexpected argument ${JSON.stringify(parsed.positionals[positionals]?.slice(0, 64))}`) };
    }
    return { parsed };
  } catch (err) {
    return { error: usageError(io, (err as Error).message) };
  }
}

async function status(args: string[], io: CliIO): Promise<number> {
  const { parsed, error } = parse(args, { 'publish-url': { type: 'string' }, json: { type: 'boolean' } }, io);
  if (!parsed) return error;
  const values = parsed.values as { 'publish-url'?: string; json?: boolean; help?: boolean };
  if (values.help) {
    io.stdout(USAGE);
    return 0;
  }
  const publishUrl = values['publish-url'] ?? publishUrlFromEnv(io.env);
  try {
    parsePublishUrl(publishUrl);
  } catch (err) {
    return usageError(io, (err as Error).message);
  }
  const report = await runStatus(publishUrl, STATUS_DEADLINE_MS);
  io.stdout(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
  return report.ok ? 0 : 1;
}

async function install(args: string[], io: CliIO): Promise<number> {
  const { parsed, error } = parse(args, {
    root: { type: 'string' }, from: { type: 'string' }, user: { type: 'string' }, uid: { type: 'string' },
    'publish-url': { type: 'string' }, 'aws-port': { type: 'string' },
  }, io);
  if (!parsed) return error;
  const values = parsed.values as { root?: string; from?: string; user?: string; uid?: string; 'publish-url'?: string; 'aws-port'?: string; help?: boolean };
  if (values.help) {
    io.stdout(USAGE);
    return 0;
  }
  if (!values.root) return usageError(io, 'install-guest needs --root DIR (the image root to install into; --root / inside the image build)');
  if (values.uid !== undefined && !/^[1-9]\d{0,9}$/.test(values.uid)) return usageError(io, `--uid must be a number above 0, not ${JSON.stringify(values.uid.slice(0, 32))}`);
  if (values['aws-port'] !== undefined && !/^[1-9]\d{0,4}$/.test(values['aws-port'])) {
    return usageError(io, `--aws-port must be a port number, not ${JSON.stringify(values['aws-port'].slice(0, 32))}`);
  }
  try {
    io.stdout(formatInstall(installGuest({
      root: values.root, from: values.from, user: values.user, publishUrl: values['publish-url'],
      uid: values.uid === undefined ? undefined : Number(values.uid),
      awsPort: values['aws-port'] === undefined ? undefined : Number(values['aws-port']),
    })));
    return 0;
  } catch (err) {
    if (err instanceof InstallError) {
      io.stderr(`${PROGRAM} install-guest: ${err.message}\n`);
      return 1;
    }
    const e = err as NodeJS.ErrnoException;
    io.stderr(`${PROGRAM} install-guest: ${e.message}${e.code === 'EACCES' || e.code === 'EPERM' ? '; run it as a user that may write into the root' : ''}\n`);
    return 1;
  }
}

function sshdEnv(args: string[], io: CliIO): number {
  const { parsed, error } = parse(args, { user: { type: 'string' }, 'token-file': { type: 'string' }, out: { type: 'string' } }, io);
  if (!parsed) return error;
  const values = parsed.values as { user?: string; 'token-file'?: string; out?: string; help?: boolean };
  if (values.help) {
    io.stdout(USAGE);
    return 0;
  }
  if (!values.user) return usageError(io, 'sshd-env needs --user NAME (whose ssh sessions get the environment)');
  try {
    const result = writeSshdEnv({ user: values.user, tokenFile: values['token-file'], out: values.out });
    io.stderr(result.written ? `${PROGRAM}: wrote sshd's environment for ${values.user} to ${result.path}\n` : `${PROGRAM}: nothing to do: ${result.why}\n`);
    return 0;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint = e.code === 'EACCES' || e.code === 'EPERM' ? '; run it as root (the token unit does, with ExecStartPost=+)' : '';
    io.stderr(`${PROGRAM} sshd-env: ${e.message}${err instanceof SetupError ? '' : hint}\n`);
    return 1;
  }
}

function token(args: string[], io: CliIO): number {
  const { parsed, error } = parse(args, {}, io, 1);
  if (!parsed) return error;
  if ((parsed.values as { help?: boolean }).help) {
    io.stdout(USAGE);
    return 0;
  }
  const file = parsed.positionals[0];
  if (!file) return usageError(io, 'init-token needs the token file, like /run/shed-extensions/aws-token');
  try {
    const result = initToken(file);
    io.stderr(`${PROGRAM}: ${result.created ? 'created' : 'kept the existing'} AWS endpoint token ${result.path}\n`);
    return 0;
  } catch (err) {
    io.stderr(`${PROGRAM} init-token: ${(err as Error).message}\n`);
    return 1;
  }
}
