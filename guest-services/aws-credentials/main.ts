#!/usr/bin/env node
/**
 * shed-ext-aws-credentials: the AWS container-credentials endpoint inside a
 * shed. Thin: flags and signals here, the server in server.ts, the routes in app.ts.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { createLogger } from '../../protocol/log.js';
import { untilStopSignal } from '../../protocol/signals.js';
import { VERSION } from '../../protocol/version.js';
import { DEFAULT_PUBLISH_URL, publishUrlFromEnv } from '../bus-client.js';
import { GUEST_ENV_FILE } from '../guest-env.js';
import { parseToken } from './app.js';
import { isLoopbackHost, startAwsEndpoint } from './server.js';

const PROGRAM = 'shed-ext-aws-credentials';

const HELP = `Usage: ${PROGRAM} [options]
       ${PROGRAM} version

Serves the shed's AWS role credentials to every AWS SDK in this VM, at
AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:499/credentials. The host
(shed-host-agent) decides the role; nothing is cached here.

Options:
  --host HOST              listen address (default 127.0.0.1; loopback only)
  --port PORT              listen port (default 499)
  --publish-url URL        shed-agent publish URL, or unix:/path/to/broker.sock
                           (default $SHED_PUBLISH_URL, else the one in
                           ${GUEST_ENV_FILE}, else ${DEFAULT_PUBLISH_URL})
  --auth-token-file FILE   require this token in every request's Authorization
                           header; default: the file in
                           AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, else the value of
                           AWS_CONTAINER_AUTHORIZATION_TOKEN
  --status-dir DIR         where aws-credentials.status is written
                           (default /run/shed-extensions)
  --allow-non-loopback     allow a --host other than loopback (the credentials
                           are then reachable from outside this machine)
  -h, --help               this text
  --version                print the version
`;

function usage(message: string): number {
  process.stderr.write(`${PROGRAM}: ${message}\nTry '${PROGRAM} --help'.\n`);
  return 2;
}

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '499' },
        'publish-url': { type: 'string', default: publishUrlFromEnv() },
        'auth-token-file': { type: 'string' },
        'status-dir': { type: 'string', default: '/run/shed-extensions' },
        'allow-non-loopback': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
        version: { type: 'boolean', default: false },
      },
    });
  } catch (err) {
    return usage((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (values.version || positionals[0] === 'version') {
    process.stdout.write(`${PROGRAM} ${VERSION}\n`);
    return 0;
  }
  if (positionals.length) return usage(`unexpected argument ${JSON.stringify(positionals[0])}`);
  const port = Number(values.port);
  if (!/^\d+$/.test(values.port) || port > 65535) return usage(`--port must be a port number (0-65535; 0 picks a free one), not ${JSON.stringify(values.port)}`);
  const host = values.host;
  if (!isLoopbackHost(host) && !values['allow-non-loopback']) {
    return usage(`--host ${host} is not a loopback address: the credentials would be reachable from outside this machine; use 127.0.0.1, or add --allow-non-loopback if you mean it`);
  }

  const log = createLogger(PROGRAM);
  let authToken: string | undefined;
  try {
    authToken = readToken(values['auth-token-file'], log.warn);
  } catch (err) {
    process.stderr.write(`${PROGRAM}: ${(err as Error).message}\n`);
    return 1;
  }
  if (!authToken) {
    log.warn('no authorization token configured: any process that can reach this port can read the credentials; pass --auth-token-file (the systemd setup does)');
  }
  if (!isLoopbackHost(host)) log.warn(`listening on non-loopback ${host}: anything that can reach it can ask for the credentials`);

  const stopSignal = untilStopSignal();
  let endpoint;
  try {
    endpoint = await startAwsEndpoint({ host, port, publishUrl: values['publish-url'], authToken, statusDir: values['status-dir'], log });
  } catch (err) {
    process.stderr.write(`${PROGRAM}: ${(err as Error).message}\n`);
    return 1;
  }
  log.info(`${await stopSignal}: stopping`);
  await endpoint.close();
  return 0;
}

/** The token from --auth-token-file, else AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (wins, as in the SDKs), else AWS_CONTAINER_AUTHORIZATION_TOKEN. */
function readToken(flagFile: string | undefined, warn: (m: string) => void): string | undefined {
  const file = flagFile ?? (process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE || undefined);
  if (file) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new Error(`cannot read the authorization token file ${file} (${code ?? (err as Error).message}); create it (the systemd setup does at boot) or pass another --auth-token-file`, { cause: err });
    }
    const { token, trailingNewline } = parseToken(text, file);
    if (trailingNewline) {
      warn(`${file} ends in a newline: AWS clients that read the file themselves refuse to send it; rewrite it without one (printf %s)`);
    }
    return token;
  }
  const value = process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN;
  return value ? parseToken(value, 'AWS_CONTAINER_AUTHORIZATION_TOKEN').token : undefined;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`${PROGRAM}: ${err.message}\n`);
    process.exit(1);
  },
);
