/** `shed-host-agent explain`: argument handling and output around explain(). */
import { memoryLogger } from '../../protocol/log.js';
import { createHandlers } from '../namespaces.js';
import { explain, ExplainUsage, formatExplanation, type ExplainRequest } from './explain.js';
import type { Io } from './io.js';
import { loadForCli, serverOption } from './policy-commands.js';

export interface ExplainFlags {
  server?: string;
  key?: string;
  registry?: string;
  host?: string;
  'signing-namespace'?: string;
  url?: string;
  json?: boolean;
}

/** The namespaces the broker serves: those of the handlers it registers. */
export async function servedNamespaces(): Promise<Set<string>> {
  const handlers = createHandlers({ log: memoryLogger('explain') });
  const names = new Set(handlers.map((h) => h.namespace as string));
  await Promise.all(handlers.map((h) => h.close?.()));
  return names;
}

export async function explainCommand(config: string, args: string[], flags: ExplainFlags, io: Io): Promise<number> {
  const [shed, namespace, operation] = args;
  if (!shed || !namespace || !operation || args.length > 3) {
    io.err('usage: shed-host-agent explain SHED NAMESPACE OPERATION [--server NAME] [--key FP] [--registry HOST] [--host NAME] [--signing-namespace NS] [--url URL] [--json]\n'
      + '  e.g. explain my-service docker-credentials get --registry ghcr.io\n'
      + '       explain my-service git-credentials get --url https://github.com/acme/app.git\n');
    return 2;
  }
  const opt = serverOption(flags.server, io, 'explain');
  if (!opt.ok) return 2;
  const policy = loadForCli(config, io);
  if (!policy) return 1;
  const req: ExplainRequest = { shed, server: opt.server, namespace, operation, key: flags.key, registry: flags.registry, host: flags.host, signingNamespace: flags['signing-namespace'], url: flags.url };
  const served = await servedNamespaces();
  try {
    const x = explain(policy, req, (ns) => served.has(ns));
    io.out(flags.json ? `${JSON.stringify({ request: req, ...x })}\n` : formatExplanation(req, x));
    return x.allowed ? 0 : 1;
  } catch (err) {
    if (!(err instanceof ExplainUsage)) throw err;
    io.err(`shed-host-agent explain: ${err.message}\n`);
    return 2;
  }
}
