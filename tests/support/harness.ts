/**
 * An in-process broker for end-to-end tests: a policy, the handlers, and the
 * publish URL each shed's guest services use. The direct transport is always
 * available; the shed transport (shed-server + shed-agent emulators) is added
 * by tests/support/bus-emulator.ts.
 */
import path from 'node:path';
import { memoryLogger, type Logger } from '../../protocol/log.js';
import { MemoryAudit, type AuditSink } from '../../host-broker/audit/audit.js';
import { Broker, type BrokerOptions } from '../../host-broker/broker.js';
import type { NamespaceHandler } from '../../host-broker/handler.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import { tempDir } from './procs.js';

export type TransportKind = 'direct' | 'shed';

export interface HarnessOptions {
  /** The policy document (version 1). `direct.sockets_dir` and `audit.path` are filled in. */
  policy: Record<string, unknown>;
  /** Defaults to the broker's own handlers. */
  handlers?: NamespaceHandler[];
  audit?: AuditSink;
  log?: Logger;
  broker?: Partial<BrokerOptions>;
}

export interface Harness {
  broker: Broker;
  audit: AuditSink;
  log: Logger & { lines: string[] };
  dir: string;
  /** The publish URL a guest of `shed` uses. */
  publishUrl(shed: string): string;
  /** Replace the policy document and reload. */
  setPolicy(doc: Record<string, unknown>): Promise<Error | undefined>;
  stop(): Promise<void>;
}

/** A broker on direct sockets in a temp dir. */
export async function startDirectBroker(options: HarnessOptions): Promise<Harness> {
  const dir = tempDir('shed-h');
  const socketsDir = path.join(dir, 'socks');
  const log = (options.log as Harness['log']) ?? memoryLogger('shed-host-agent');
  const audit = options.audit ?? new MemoryAudit();
  let doc = withDirect(options.policy, socketsDir);
  const broker = new Broker({
    loadPolicy: () => policyFromDocument(doc, 'test-policy.yaml'),
    log,
    audit,
    handlers: options.handlers,
    ...options.broker,
  });
  await broker.start();
  return {
    broker,
    audit,
    log,
    dir,
    publishUrl: (shed) => `unix:${path.join(socketsDir, `${shed}.sock`)}`,
    async setPolicy(next) {
      doc = withDirect(next, socketsDir);
      return broker.reload();
    },
    stop: () => broker.stop(),
  };
}

function withDirect(policy: Record<string, unknown>, socketsDir: string): Record<string, unknown> {
  return { ...policy, direct: { ...(policy.direct as object | undefined), sockets_dir: socketsDir } };
}
