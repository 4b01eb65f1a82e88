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
  let socketsDir = '';
  return startHarness(options, {
    prefix: 'shed-h',
    policy: (doc, dir) => {
      socketsDir = path.join(dir, 'socks');
      return withDirect(doc, socketsDir);
    },
    publishUrl: (shed) => `unix:${path.join(socketsDir, shed, 'bus.sock')}`,
  });
}

/** What a transport kind adds to the shared harness (the shed kind lives in bus-emulator.ts). */
export interface HarnessTransport {
  /** tempDir prefix. */
  prefix: string;
  /** The policy the broker loads, from the test's document and the harness's temp dir. */
  policy(doc: Record<string, unknown>, dir: string): Record<string, unknown>;
  publishUrl(shed: string): string;
  /** Extra broker options (the transport's own). */
  broker?: Partial<BrokerOptions>;
  /** Called after the broker stopped. */
  afterStop?(): Promise<void>;
}

/** The broker, log, audit and policy plumbing both transport kinds share. */
export async function startHarness(options: HarnessOptions, transport: HarnessTransport): Promise<Harness> {
  const dir = tempDir(transport.prefix);
  const log = (options.log as Harness['log']) ?? memoryLogger('shed-host-agent');
  const audit = options.audit ?? new MemoryAudit();
  let doc = transport.policy(options.policy, dir);
  const broker = new Broker({
    loadPolicy: () => policyFromDocument(doc, 'test-policy.yaml'),
    log,
    audit,
    handlers: options.handlers,
    stateDir: path.join(dir, 'state'),
    ...transport.broker,
    ...options.broker,
  });
  try {
    await broker.start();
  } catch (err) {
    await broker.stop().catch(() => undefined);
    throw err;
  }
  return {
    broker,
    audit,
    log,
    dir,
    publishUrl: (shed) => transport.publishUrl(shed),
    async setPolicy(next) {
      doc = transport.policy(next, dir);
      return broker.reload();
    },
    async stop() {
      try {
        await broker.stop();
      } finally {
        await transport.afterStop?.();
      }
    },
  };
}

function withDirect(policy: Record<string, unknown>, socketsDir: string): Record<string, unknown> {
  return { ...policy, direct: { ...(policy.direct as object | undefined), sockets_dir: socketsDir } };
}
