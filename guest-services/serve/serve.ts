/**
 * `shed-ext serve`: the SSH agent and the AWS endpoint in one process, for a
 * guest without systemd (a `docker run` entrypoint, a Dev Container, a
 * Kubernetes pod) or beside an entrypoint. It does what the three units do:
 * makes the endpoint's token (0600, no newline) when it is missing, serves
 * the agent socket, serves the endpoint requiring that token. One Node
 * process instead of two: about 40 MB of the RSS is Node itself.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../protocol/log.js';
import { parseToken } from '../aws-credentials/app.js';
import { startAwsEndpoint, type RunningEndpoint } from '../aws-credentials/server.js';
import { startSshAgent, type RunningAgent } from '../ssh-agent/agent.js';
import { initToken } from '../status/token.js';

export interface ServeOptions {
  publishUrl: string;
  /** The agent socket; none: no SSH agent. */
  sockPath?: string;
  /** The AWS endpoint; none: no endpoint. */
  aws?: {
    host: string;
    port: number;
    /** Created (0600, no newline) when it holds no token. */
    tokenFile: string;
    statusDir?: string;
  };
  log: { agent: Logger; aws: Logger; serve: Logger };
}

export interface Serving {
  agent?: RunningAgent;
  endpoint?: RunningEndpoint;
  close(): Promise<void>;
}

/** Start both services; one that cannot start is logged and the other serves; when neither can, the error is thrown. */
export async function startServe(options: ServeOptions): Promise<Serving> {
  const { log } = options;
  const serving: Serving = {
    async close() {
      await Promise.all([serving.agent?.close(), serving.endpoint?.close()]);
    },
  };
  try {
    // The runtime directory both share, as the units' RuntimeDirectory= makes it: 0755, the files in it 0600.
    for (const dir of new Set([options.sockPath && path.dirname(options.sockPath), options.aws && path.dirname(options.aws.tokenFile)])) {
      if (dir) makeRuntimeDir(dir);
    }
    const starts: Array<Promise<void>> = [];
    if (options.sockPath) {
      starts.push(startSshAgent({ sockPath: options.sockPath, publishUrl: options.publishUrl, log: log.agent }).then((a) => {
        serving.agent = a;
      }, (err: NodeJS.ErrnoException) => {
        const hint = err.code === 'EACCES' ? '; no permission to create it: run as the guest user, or pass --sock in a directory you own' : '';
        throw new Error(`cannot serve the SSH agent on ${options.sockPath}: ${err.message}${hint}`, { cause: err });
      }));
    }
    if (options.aws) {
      const aws = options.aws;
      starts.push(Promise.resolve().then(() => readOrMakeToken(aws.tokenFile, log.serve)).then((token) =>
        startAwsEndpoint({ host: aws.host, port: aws.port, publishUrl: options.publishUrl, authToken: token, statusDir: aws.statusDir, log: log.aws }))
        .then((e) => {
          serving.endpoint = e;
        }));
    }
    const failures = (await Promise.allSettled(starts)).filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as Error);
    // As two units would: one that cannot start does not take the other down, but nothing served is an error.
    if (failures.length === starts.length) throw failures.length === 1 ? failures[0] : new Error(failures.map((e) => e.message).join('; '));
    for (const err of failures) log.serve.error(`${err.message}; serving the rest`);
    return serving;
  } catch (err) {
    await serving.close();
    throw err;
  }
}

function makeRuntimeDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      throw new Error(`cannot create ${dir} (${code}): create it owned by the guest user (install-guest makes it in the image; `
        + `a container entrypoint running as root: \`install -d -o USER ${dir}\`), or pass --sock and --auth-token-file in a directory you own`, { cause: err });
    }
    throw err;
  }
}

/** The endpoint's token: kept when the file holds one, else made (initToken: 0600, no newline). */
function readOrMakeToken(file: string, log: Logger): string {
  let made;
  try {
    made = initToken(file);
  } catch (err) {
    throw new Error(`cannot make the AWS endpoint's token ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (made.created) log.info(`created the AWS endpoint's token ${file}`);
  return parseToken(fs.readFileSync(file, 'latin1'), file).token;
}
