/**
 * docker-credential-shed: Docker's credential-helper protocol over shed's bus.
 *
 * Docker, skopeo, podman and buildah run it once per registry operation, so
 * its start-up time is its speed: this module imports only the bus client and
 * the protocol's zod/mini schemas.
 *
 * The helper protocol (what Docker's client library expects):
 * - `get`: server URL on stdin → `{"ServerURL","Username","Secret"}` on stdout.
 * - `list`: `{"<server url>":"<username>"}` on stdout.
 * - On failure: exit 1 with the error text on stdout. The exact text
 *   `credentials not found in native keychain` means "no credentials here"
 *   and makes clients go anonymous; this helper answers it for every registry
 *   the host will not give credentials for (none stored, outside the shed's
 *   allowlist, docker-credentials off for this shed), with the reason on
 *   stderr. Anything else (host unreachable, deadline) is a hard failure:
 *   the error on stdout, what to do on stderr.
 */
import { BusClient, BusError, DEFAULT_PUBLISH_URL, publishUrlFromEnv } from '../bus-client.js';
import { GUEST_ENV_FILE } from '../guest-env.js';
import { CREDENTIALS_NOT_FOUND_TEXT, DockerGetResponse, DockerListResponse } from '../../protocol/docker-credentials.js';
import { VERSION } from '../../protocol/version.js';
import type { HelperIO } from '../one-shot.js';

export const PROGRAM = 'docker-credential-shed';
export const NAMESPACE = 'docker-credentials';
/** PROTOCOL.md: the docker helper's deadline. */
export const DEADLINE_MS = 5000;
/** A server URL is short; anything longer than this on stdin is not one. */
export const MAX_STDIN_BYTES = 64 * 1024;

/** Host answers that mean "no credentials for you here": the client should go anonymous. */
const NOT_FOUND_CODES = new Set(['CREDENTIALS_NOT_FOUND', 'REGISTRY_NOT_ALLOWED', 'NAMESPACE_DISABLED', 'SHED_NOT_ALLOWED']);

export const USAGE = `Usage: ${PROGRAM} <get|list|store|erase|version>

Docker credential helper that asks the host (shed-host-agent) for registry
credentials over shed's bus. Credentials never live in this VM.

  get       read a registry server URL on stdin, print its credentials as JSON
  list      print the registries this shed may have credentials for
  store     refused: the host broker is read-only (log in on the host)
  erase     refused: the host broker is read-only (log out on the host)
  version   print the version

Configure it in ~/.docker/config.json as {"credsStore": "shed"} (Docker), and
for skopeo/podman/buildah as credential-helpers = ["shed"] in
~/.config/containers/registries.conf.

Environment:
  SHED_PUBLISH_URL  publish URL of the bus (else the one in ${GUEST_ENV_FILE},
                    else ${DEFAULT_PUBLISH_URL}); unix:/path/to.sock for a
                    shed-host-agent direct socket
`;

export type { HelperIO };

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ');
}

/** Run one helper invocation; resolves with the exit status. */
export async function runHelper(argv: string[], io: HelperIO): Promise<number> {
  const action = argv[0];
  switch (action) {
    case 'get':
      return withClient(io, (client) => get(client, io));
    case 'list':
      return withClient(io, (client) => list(client, io));
    case 'store':
    case 'erase':
      // Take what the client writes (Docker sends the credentials or the URL) so it sees no broken pipe; it goes nowhere.
      if (!io.stdinIsTTY) await io.readStdin().catch(() => '');
      io.stdout(`${PROGRAM} is read-only: ${action} is refused\n`);
      io.stderr(`${PROGRAM}: the host broker is read-only; credentials live on the host: run \`docker ${action === 'store' ? 'login' : 'logout'}\` there, not in this VM\n`);
      return 1;
    case 'version':
    case '--version':
      io.stdout(`${PROGRAM} (shed-extensions) ${VERSION}\n`);
      return 0;
    case '--help':
    case '-h':
    case 'help':
      io.stdout(USAGE);
      return 0;
    case undefined:
      io.stderr(USAGE);
      return 1;
    default:
      io.stdout(`unknown action: ${oneLine(action).slice(0, 64)}\n`);
      io.stderr(`${PROGRAM}: unknown action ${JSON.stringify(action.slice(0, 64))}; see \`${PROGRAM} --help\`\n`);
      return 1;
  }
}

async function withClient(io: HelperIO, body: (client: BusClient) => Promise<number>): Promise<number> {
  let client: BusClient;
  try {
    client = new BusClient({ publishUrl: publishUrlFromEnv(io.env), deadlineMs: DEADLINE_MS });
  } catch (err) {
    const message = (err as Error).message;
    io.stdout(`${oneLine(message)}\n`);
    io.stderr(`${PROGRAM}: ${message}; fix SHED_PUBLISH_URL\n`);
    return 1;
  }
  try {
    return await body(client);
  } finally {
    client.close();
  }
}

async function get(client: BusClient, io: HelperIO): Promise<number> {
  const input = await io.readStdin();
  const serverUrl = input.trim();
  if (!serverUrl || input.length > MAX_STDIN_BYTES || /[\r\n]/.test(serverUrl)) {
    io.stdout('no server URL on stdin\n');
    io.stderr(`${PROGRAM}: get reads one registry server URL on stdin, like \`echo ghcr.io | ${PROGRAM} get\`\n`);
    return 1;
  }
  let answer: unknown;
  try {
    answer = await client.publish(NAMESPACE, { operation: 'get', server_url: serverUrl });
  } catch (err) {
    return failure(err, io, serverUrl);
  }
  const parsed = DockerGetResponse.safeParse(answer);
  if (!parsed.success) return malformed(io, 'get');
  const { username, secret } = parsed.data;
  if (username === '' && secret === '') {
    io.stdout(`${CREDENTIALS_NOT_FOUND_TEXT}\n`);
    io.stderr(`${PROGRAM}: the host answered empty credentials for ${serverUrl}\n`);
    return 1;
  }
  io.stdout(`${JSON.stringify({ ServerURL: serverUrl, Username: username, Secret: secret })}\n`);
  return 0;
}

async function list(client: BusClient, io: HelperIO): Promise<number> {
  let answer: unknown;
  try {
    answer = await client.publish(NAMESPACE, { operation: 'list' });
  } catch (err) {
    if (err instanceof BusError && err.kind === 'host' && NOT_FOUND_CODES.has(err.code)) {
      // Nothing this shed may have: an empty list, as a helper with no credentials prints.
      io.stderr(`${PROGRAM}: ${err.message}\n`);
      io.stdout('{}\n');
      return 0;
    }
    return failure(err, io);
  }
  const parsed = DockerListResponse.safeParse(answer);
  if (!parsed.success) return malformed(io, 'list');
  io.stdout(`${JSON.stringify(parsed.data.registries)}\n`);
  return 0;
}

function failure(err: unknown, io: HelperIO, serverUrl?: string): number {
  if (!(err instanceof BusError)) {
    const message = err instanceof Error ? err.message : String(err);
    io.stdout(`${oneLine(message)}\n`);
    io.stderr(`${PROGRAM}: unexpected failure: ${message}\n`);
    return 1;
  }
  if (serverUrl !== undefined && err.kind === 'host' && NOT_FOUND_CODES.has(err.code)) {
    io.stdout(`${CREDENTIALS_NOT_FOUND_TEXT}\n`);
    io.stderr(`${PROGRAM}: no credentials for ${oneLine(serverUrl).slice(0, 200)}: ${err.message}\n  ${err.hint}\n`);
    return 1;
  }
  if (err.kind === 'deadline') {
    // The host cuts a hung credential helper off at the same 5 s: name both causes, not only "not running".
    const message = `no answer from the host within ${DEADLINE_MS / 1000} s`;
    io.stdout(`${message}\n`);
    io.stderr(`${PROGRAM}: ${message}: shed-host-agent may not be running, or a Docker credential helper on the host hangs (the shed-host-agent log says which)\n  ${err.hint}\n`);
    return 1;
  }
  // This helper takes its URL from SHED_PUBLISH_URL, not a flag.
  const hint = err.hint.replace(/(pass|check) --publish-url/g, (_m, verb: string) => `${verb === 'pass' ? 'set' : 'check'} SHED_PUBLISH_URL`);
  io.stdout(`${oneLine(err.message)}\n`);
  io.stderr(`${PROGRAM}: ${err.message}\n  ${hint}\n`);
  return 1;
}

function malformed(io: HelperIO, operation: string): number {
  io.stdout(`the host answered ${operation} with a payload this helper does not understand\n`);
  io.stderr(`${PROGRAM}: the host's docker-credentials answer to ${operation} does not match the protocol; check that shed-host-agent and this guest are the same version\n`);
  return 1;
}
