/**
 * The guest's container-credentials endpoint: what every AWS SDK reads from
 * `AWS_CONTAINER_CREDENTIALS_FULL_URI`. `GET /credentials` asks the host over
 * the bus for the shed's role credentials and answers them in the SDKs'
 * format. Nothing is cached here: the host caches, and decides the role.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { Hono, type Context } from 'hono';
import { AwsCredentialsResponse, toContainerCredentials } from '../../protocol/aws-credentials.js';
import { compiledOnceHot } from '../../protocol/compiled.js';
import type { Payload } from '../../protocol/envelope.js';
import { LogThrottle, type Logger } from '../../protocol/log.js';
import { printable } from '../../protocol/text.js';
import { BusError } from '../bus-client.js';
import type { BusState } from '../status-file.js';

export const NAMESPACE = 'aws-credentials';

/** What the app needs of the bus: BusClient fits. */
export interface Publisher {
  publish(namespace: string, payload: Payload): Promise<Payload>;
}

/** The host as last seen: `connected`, or why not. */

export interface AwsAppOptions {
  bus: Publisher;
  /** When set, every request must carry exactly this `Authorization` header. */
  authToken?: string;

  log: Logger;
  /** Told after each bus call whether the host answered. */
  onBusState?: (state: BusState) => void;
}

const credentialsResponse = compiledOnceHot(AwsCredentialsResponse);
const JSON_HEADERS = { 'content-type': 'application/json', 'cache-control': 'no-store' };

/** The error body the SDKs show: Python clients print it verbatim, so `Message` must say what to do. */
function errorBody(c: Context, status: 403 | 404 | 405 | 500 | 502 | 503, code: string, message: string, hint?: string, extra: Record<string, string> = {}) {
  return c.body(JSON.stringify(hint ? { Code: code, Message: message, hint } : { Code: code, Message: message }), status, { ...JSON_HEADERS, ...extra });
}

export function createAwsApp(options: AwsAppOptions): Hono {
  const { bus, log } = options;
  const expected = options.authToken === undefined ? undefined : digest(options.authToken);
  const app = new Hono();
  // A process in the VM can repeat a refused request at will: logged once a minute with the count.
  const throttle = new LogThrottle(log);

  if (expected) {
    app.use('*', async (c, next) => {
      const given = c.req.header('authorization');
      if (given === undefined || !timingSafeEqual(digest(given), expected)) {
        throttle.warn(given === undefined ? 'no token' : 'wrong token', `refused ${printable(c.req.method, 16)} ${printable(c.req.path, 100)}: ${given === undefined ? 'no' : 'wrong'} Authorization header`);
        return errorBody(c, 403, 'AccessDenied',
          'this endpoint needs the Authorization header the AWS SDKs send from AWS_CONTAINER_AUTHORIZATION_TOKEN: export it '
          + 'with the content of the token file (older AWS CLIs and boto3 ignore AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE) and retry');
      }
      await next();
    });
  }

  app.all('/credentials', async (c) => {
    if (c.req.method !== 'GET' && c.req.method !== 'HEAD') {
      return errorBody(c, 405, 'MethodNotAllowed', `${c.req.method.slice(0, 16)} is not allowed on /credentials; use GET`, undefined, { allow: 'GET, HEAD' });
    }
    let payload: Payload;
    try {
      payload = await bus.publish(NAMESPACE, { operation: 'get_credentials' });
    } catch (err) {
      if (!(err instanceof BusError)) {
        log.error(`get_credentials failed unexpectedly: ${(err as Error).name}`);
        return errorBody(c, 500, 'InternalError', 'shed-ext-aws-credentials failed unexpectedly; see its log (journalctl -u shed-ext-aws-credentials)');
      }
      if (err.kind === 'host') {
        options.onBusState?.({ connected: true });
        log.warn(`host refused credentials: ${err.describe()}`);
        return errorBody(c, 502, err.code, err.message, err.hint);
      }
      if (err.kind === 'malformed') {
        log.error(`bad answer from the host: ${err.describe()}`);
        return errorBody(c, 502, err.code, err.message, err.hint);
      }
      options.onBusState?.({ connected: false, why: err.describe() });
      log.warn(`credentials unavailable: ${err.describe()}`);
      return errorBody(c, 503, err.code, `AWS credentials are unavailable: the host broker (shed-host-agent) did not answer: ${err.message}`, err.hint);
    }
    options.onBusState?.({ connected: true });
    const parsed = credentialsResponse.safeParse(payload);
    if (!parsed.success) {
      log.error('the host answered get_credentials without the four credential fields');
      return errorBody(c, 502, 'MALFORMED_RESPONSE', 'the host answered without complete credentials; shed-host-agent and this guest may be different versions',
        'upgrade shed-host-agent and the guest services to the same release');
    }
    return c.body(JSON.stringify(toContainerCredentials(parsed.data)), 200, JSON_HEADERS);
  });

  app.notFound((c) => errorBody(c, 404, 'NotFound', `no such path ${c.req.path.slice(0, 100)}; AWS credentials are at /credentials`));
  app.onError((err, c) => {
    log.error(`request failed: ${err.name}`);
    return errorBody(c, 500, 'InternalError', 'shed-ext-aws-credentials failed unexpectedly; see its log');
  });
  return app;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/**
 * The authorization token from a file, as the SDKs read it. One trailing
 * newline is dropped (with a warning from the caller): the clients that read
 * the file themselves refuse it, but one exported by `$(cat file)` works.
 */
export function parseToken(text: string, source: string): { token: string; trailingNewline: boolean } {
  const trailingNewline = /\r?\n$/.test(text);
  const token = text.replace(/\r?\n$/, '');
  if (!token) throw new Error(`the authorization token in ${source} is empty; write a random token (e.g. \`head -c 32 /dev/urandom | base64 | tr -d '\\n' > FILE\`)`);
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new Error(`the authorization token in ${source} has characters an HTTP header cannot carry (spaces, newlines, non-ASCII); write one without`);
  }
  return { token, trailingNewline };
}
