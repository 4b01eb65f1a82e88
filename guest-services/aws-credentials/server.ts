/**
 * Runs the credentials app on a loopback port: the bus client, the startup
 * ping, and the `aws-credentials.status` file.
 */
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { getRequestListener } from '@hono/node-server';
import { compile } from 'zod/mini';
import { compileHotSchemas } from '../../protocol/compiled.js';
import { createHardenedServer, sendJson } from '../../protocol/http-server.js';
import { LogThrottle, type Logger } from '../../protocol/log.js';
import { printable } from '../../protocol/text.js';
import { BusClient, BusError } from '../bus-client.js';
import { createAwsApp, NAMESPACE } from './app.js';
import { StatusFile, type BusState } from '../status-file.js';

export const STATUS_FILE = 'aws-credentials.status';
/** Connections the endpoint takes at once; more are closed as they come (every SDK needs one). */
export const MAX_CONNECTIONS = 256;
export const STARTUP_PING_MS = 2000;

export interface EndpointOptions {
  host: string;
  port: number;
  publishUrl: string;
  authToken?: string;
  /** Where `aws-credentials.status` is written; none when unset. */
  statusDir?: string;
  log: Logger;
  /** Bus deadline per request (ms). */
  deadlineMs?: number;
}

export interface RunningEndpoint {
  /** `http://host:port/credentials` */
  url: string;
  port: number;
  /** Resolves when the startup ping has settled (and the status file says so). */
  ready: Promise<BusState>;
  close(): Promise<void>;
}

/** The names a request to this machine's loopback interface carries in `Host`. */
const LOOPBACK_NAMES = ['127.0.0.1', 'localhost', '[::1]'];

/** `Host` without its port, lower-cased: `127.0.0.1:499` → `127.0.0.1`, `[::1]:499` → `[::1]`; '' when malformed. */
function hostName(host: string): string {
  const m = /^(\[[^\]]*\]|[^:]*)(?::\d{1,5})?$/.exec(host.trim());
  return m ? m[1]!.toLowerCase() : '';
}

export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

export async function startAwsEndpoint(options: EndpointOptions): Promise<RunningEndpoint> {
  const { log } = options;
  compileHotSchemas(compile);
  const bus = new BusClient({ publishUrl: options.publishUrl, deadlineMs: options.deadlineMs });
  const status = new StatusFile(options.statusDir && path.join(options.statusDir, STATUS_FILE), log);
  const app = createAwsApp({ bus, authToken: options.authToken, log, onBusState: (s) => status.set(s) });
  const listener = getRequestListener(app.fetch);
  const throttle = new LogThrottle(log);
  const hosts = new Set([...LOOPBACK_NAMES, ...(isLoopbackHost(options.host) ? [] : [options.host.includes(':') ? `[${options.host}]` : options.host])]);
  const server = createHardenedServer({
    // No request here has a body worth more than a few bytes; SDKs send none.
    limits: { maxBodyBytes: 64 * 1024, maxConnections: MAX_CONNECTIONS },
    refusal: (_status, code, message) => JSON.stringify({ Code: code, Message: message }),
    onRequest: (req, res) => {
      // A web page the user visits can reach 127.0.0.1 under a name of its
      // own (DNS rebinding): only requests addressed to this machine are served.
      const host = req.headers.host;
      if (host === undefined || !hosts.has(hostName(host))) {
        throttle.warn(host === undefined ? 'no host' : 'host', `refused a request addressed to ${host === undefined ? 'no Host' : `Host ${printable(host, 80)}`}: only loopback names are served`);
        sendJson(res, 403, JSON.stringify({ Code: 'AccessDenied', Message: 'this endpoint answers only requests addressed to 127.0.0.1 or localhost; set AWS_CONTAINER_CREDENTIALS_FULL_URI to http://127.0.0.1:<port>/credentials' }), { 'cache-control': 'no-store' });
        return;
      }
      void listener(req, res);
    },
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => reject(listenError(err, options.host, options.port));
    server.once('error', onError);
    server.listen(options.port, options.host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const shown = options.host.includes(':') ? `[${options.host}]` : options.host;
  const url = `http://${shown}:${port}/credentials`;
  log.info(`serving AWS credentials at ${url} (publish URL ${options.publishUrl}${options.authToken ? ', Authorization token required' : ''})`);

  const ready = bus.ping(NAMESPACE, { deadlineMs: STARTUP_PING_MS }).then(
    (): BusState => {
      log.info(`host answered on ${NAMESPACE}: connected`);
      return { connected: true };
    },
    (err: unknown): BusState => {
      const why = err instanceof BusError ? err.describe() : (err as Error).message;
      if (err instanceof BusError && err.kind === 'host') {
        log.warn(`the host refused ${NAMESPACE}: ${why}`);
        return { connected: true };
      }
      log.warn(`no answer from the host on ${NAMESPACE} yet (${why}); serving anyway, requests get 503 until it answers`);
      return { connected: false, why };
    },
  ).then((s) => {
    status.set(s);
    return s;
  });

  return {
    url,
    port,
    ready,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      bus.close();
      throttle.close();
      status.remove();
    },
  };
}

function listenError(err: NodeJS.ErrnoException, host: string, port: number): Error {
  switch (err.code) {
    case 'EACCES':
      return new Error(`cannot listen on ${host}:${port}: permission denied; ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it), or pass --port`);
    case 'EADDRINUSE':
      return new Error(`cannot listen on ${host}:${port}: the port is in use (is another shed-ext-aws-credentials running?); stop it or pass --port`);
    case 'EADDRNOTAVAIL':
    case 'ENOTFOUND':
      return new Error(`cannot listen on ${host}:${port}: no such local address; pass --host 127.0.0.1`);
    default:
      return new Error(`cannot listen on ${host}:${port}: ${err.message}`);
  }
}
