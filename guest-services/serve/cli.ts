/** `shed-ext serve`: flags and signals; the services in serve.ts. */
import { parseArgs } from 'node:util';
import { createLogger } from '../../protocol/log.js';
import { untilStopSignal } from '../../protocol/signals.js';
import { VERSION } from '../../protocol/version.js';
import { isLoopbackHost } from '../aws-credentials/server.js';
import { DEFAULT_PUBLISH_URL, parsePublishUrl, publishUrlFromEnv } from '../bus-client.js';
import { GUEST_ENV_FILE } from '../guest-env.js';
import { DEFAULT_SOCK } from '../ssh-agent/agent.js';
import { startServe } from './serve.js';

const PROGRAM = 'shed-ext serve';
const DEFAULT_TOKEN_FILE = '/run/shed-extensions/aws-token';
/** A stop that takes longer than this exits anyway (PID 1 ignores a second SIGTERM). */
const STOP_DEADLINE_MS = 5000;

export const SERVE_USAGE = `Usage: shed-ext serve [options]

The SSH agent and the AWS credentials endpoint in one process, for a guest
without systemd: a container's entrypoint (with --init, or tini, to reap
orphans), or started beside one (/usr/local/lib/shed-extensions/entrypoint.sh
does that). It makes the endpoint's token when the file holds none. SIGTERM
or SIGINT stops both. Same flags as the services it replaces:

  --sock PATH              the agent socket, 0600 (default ${DEFAULT_SOCK})
  --host HOST              the endpoint's address (default 127.0.0.1; loopback only)
  --port PORT              the endpoint's port (default 499; below 1024 needs
                           CAP_NET_BIND_SERVICE, or a container's own network)
  --auth-token-file FILE   the endpoint's token, made when missing: 0600, no newline
                           (default ${DEFAULT_TOKEN_FILE})
  --publish-url URL        shed-agent's publish URL, or unix:/path/to/bus.sock for a
                           mounted broker socket (default $SHED_PUBLISH_URL, else
                           SHED_PUBLISH_URL in ${GUEST_ENV_FILE}, else
                           ${DEFAULT_PUBLISH_URL})
  --status-dir DIR         where the status files go (default: the socket's directory)
  --no-ssh-agent           serve only the AWS endpoint
  --no-aws                 serve only the SSH agent
  --allow-non-loopback     allow a --host other than loopback
  -h, --help               this text

Sessions find them through SSH_AUTH_SOCK, AWS_CONTAINER_CREDENTIALS_FULL_URI
and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (login shells: /etc/profile.d;
\`docker exec\`: the lines of ${GUEST_ENV_FILE} as ENV or containerEnv).
`;

export interface ServeIO {
  stdout(text: string): void;
  stderr(text: string): void;
  env: Record<string, string | undefined>;
}

export async function serveCommand(argv: string[], io: ServeIO): Promise<number> {
  const usage = (message: string) => {
    io.stderr(`${PROGRAM}: ${message}\nTry 'shed-ext serve --help'.\n`);
    return 2;
  };
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        sock: { type: 'string' },
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '499' },
        'auth-token-file': { type: 'string' },
        'publish-url': { type: 'string' },
        'status-dir': { type: 'string' },
        'no-ssh-agent': { type: 'boolean', default: false },
        'no-aws': { type: 'boolean', default: false },
        'allow-non-loopback': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    return usage((err as Error).message);
  }
  if (values.help) {
    io.stdout(SERVE_USAGE);
    return 0;
  }
  if (values['no-ssh-agent'] && values['no-aws']) return usage('--no-ssh-agent and --no-aws leave nothing to serve');
  const sockPath = values.sock ?? DEFAULT_SOCK;
  if (!sockPath.startsWith('/')) return usage(`--sock must be an absolute path, got ${JSON.stringify(sockPath)}`);
  const tokenFile = values['auth-token-file'] ?? DEFAULT_TOKEN_FILE;
  if (!tokenFile.startsWith('/')) return usage(`--auth-token-file must be an absolute path, got ${JSON.stringify(tokenFile)}`);
  if (!/^\d+$/.test(values.port) || Number(values.port) > 65535) return usage(`--port must be a port number (0-65535; 0 picks a free one), not ${JSON.stringify(values.port)}`);
  if (!isLoopbackHost(values.host) && !values['allow-non-loopback']) {
    return usage(`--host ${values.host} is not a loopback address: the credentials would be reachable from outside this machine; use 127.0.0.1, or add --allow-non-loopback if you mean it`);
  }
  const publishUrl = values['publish-url'] ?? publishUrlFromEnv(io.env);
  try {
    parsePublishUrl(publishUrl);
  } catch (err) {
    return usage((err as Error).message);
  }

  const log = {
    serve: createLogger('shed-ext-serve'),
    agent: createLogger('shed-ext-ssh-agent'),
    aws: createLogger('shed-ext-aws-credentials'),
  };
  const stopSignal = untilStopSignal();
  let serving;
  try {
    serving = await startServe({
      publishUrl,
      sockPath: values['no-ssh-agent'] ? undefined : sockPath,
      aws: values['no-aws'] ? undefined : {
        host: values.host,
        port: Number(values.port),
        tokenFile,
        statusDir: values['status-dir'] ?? dirOf(sockPath),
      },
      log,
    });
  } catch (err) {
    log.serve.error((err as Error).message);
    return 1;
  }
  log.serve.info(`shed-extensions ${VERSION}: serving${serving.agent ? ` the SSH agent on ${serving.agent.sockPath}` : ''}`
    + `${serving.agent && serving.endpoint ? ' and' : ''}${serving.endpoint ? ` AWS credentials at ${serving.endpoint.url}` : ''}; publish URL ${publishUrl}`);
  const signal = await stopSignal;
  log.serve.info(`${signal}: stopping`);
  const deadline = setTimeout(() => {
    log.serve.error(`still stopping after ${STOP_DEADLINE_MS / 1000} s: exiting anyway`);
    process.exit(1);
  }, STOP_DEADLINE_MS);
  deadline.unref();
  await serving.close();
  clearTimeout(deadline);
  return 0;
}

function dirOf(file: string): string {
  return file.slice(0, file.lastIndexOf('/')) || '/';
}
