/**
 * Reload: the policy files are watched; a valid edit applies to new requests
 * without dropping any, an invalid one is logged with its errors and the old
 * policy stays, direct sockets follow the sheds, and a request in flight
 * finishes under the policy it started with.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { BusClient, BusError } from '../../guest-services/bus-client.js';
import { MemoryAudit } from '../../host-broker/audit/audit.js';
import { createAwsHandler } from '../../host-broker/aws/handler.js';
import { Broker } from '../../host-broker/broker.js';
import type { NamespaceHandler } from '../../host-broker/handler.js';
import { loadPolicyFile } from '../../host-broker/policy/policy.js';
import { PolicyWatcher } from '../../host-broker/policy/watch.js';
import { memoryLogger, type Logger } from '../../protocol/log.js';
import { startShedBroker } from '../support/bus-emulator.js';
import { binCommand, capture, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

const ROLE_A = 'arn:aws:iam::123456789012:role/role-a';
const ROLE_B = 'arn:aws:iam::123456789012:role/role-b';

/** Replace a file the way editors do: write a temp file and rename it over. */
function writeAtomically(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp`);
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

interface Setup {
  file: string;
  /** The policy text for the transport (server url or sockets dir filled in). */
  policy(body: string): string;
  publishUrl(shed: string): string;
  log: Logger & { lines: string[] };
  audit: MemoryAudit;
  broker: Broker;
  stop(): Promise<void>;
}

async function start(kind: 'direct' | 'shed', body: string, handlers: NamespaceHandler[]): Promise<Setup> {
  const dir = tempDir('shed-rl');
  const file = path.join(dir, 'extensions.yaml');
  const log = memoryLogger('shed-host-agent');
  const audit = new MemoryAudit();
  const loadPolicy = () => loadPolicyFile(file);
  let head = '';
  let watcher: PolicyWatcher | undefined;
  if (kind === 'direct') {
    const socks = path.join(dir, 'socks');
    head = `version: 1\ndirect: { sockets_dir: ${socks} }\n`;
    fs.writeFileSync(file, head + body, { mode: 0o600 });
    const broker = new Broker({ loadPolicy, log, audit, handlers, stateDir: path.join(dir, 'state') });
    await broker.start();
    watcher = new PolicyWatcher({ file, onChange: () => broker.reload(), log, debounceMs: 50 });
    return {
      file, log, audit, broker,
      policy: (b) => head + b,
      publishUrl: (shed) => `unix:${path.join(socks, shed, 'bus.sock')}`,
      stop: async () => {
        watcher?.close();
        await broker.stop();
      },
    };
  }
  const harness = await startShedBroker({
    policy: { version: 1, sheds: { alpha: {}, beta: {} } },
    handlers,
    log,
    audit,
    broker: { loadPolicy },
    beforeBroker: (server) => {
      head = `version: 1\nserver: { url: "${server.url}" }\ndirect: { enabled: false }\n`;
      fs.writeFileSync(file, head + body, { mode: 0o600 });
    },
  });
  watcher = new PolicyWatcher({ file, onChange: () => harness.broker.reload(), log, debounceMs: 50 });
  return {
    file, log, audit, broker: harness.broker,
    policy: (b) => head + b,
    publishUrl: (shed) => harness.publishUrl(shed),
    stop: async () => {
      watcher?.close();
      await harness.stop();
    },
  };
}

/** The role the aws-credentials namespace reports for the shed behind `publishUrl`. */
async function roleServed(publishUrl: string): Promise<unknown> {
  const client = new BusClient({ publishUrl, deadlineMs: 5000 });
  try {
    return (await client.publish('aws-credentials', { operation: 'status' })).role;
  } finally {
    client.close();
  }
}

const rolePolicy = (role: string) => `sheds:\n  alpha:\n    aws: { role: ${role} }\n  beta: {}\n`;

for (const kind of ['direct', 'shed'] as const) {
  describe(`policy reload on edit (${kind} transport)`, () => {
    let setup: Setup | undefined;
    afterEach(async () => {
      await setup?.stop();
      setup = undefined;
    });

    it('applies a valid edit to new requests without dropping one under load', async () => {
      const log = memoryLogger('aws');
      setup = await start(kind, rolePolicy(ROLE_A), [createAwsHandler({ log })]);
      const s = setup;
      const seen: string[][] = [];
      const failures: string[] = [];
      let stop = false;
      const worker = async (i: number) => {
        const client = new BusClient({ publishUrl: s.publishUrl('alpha'), deadlineMs: 5000 });
        seen[i] = [];
        try {
          while (!stop) {
            try {
              const answer = await client.publish('aws-credentials', { operation: 'status' });
              seen[i]!.push(String(answer.role));
            } catch (err) {
              failures.push((err as Error).message);
            }
          }
        } finally {
          client.close();
        }
      };
      const workers = [0, 1, 2, 3].map(worker);
      await waitFor(() => seen.every((w) => w && w.length > 20), 10_000, 'requests under the first policy');
      writeAtomically(s.file, s.policy(rolePolicy(ROLE_B)));
      await waitFor(() => seen.every((w) => w.includes(ROLE_B)), 10_000, 'every worker to see the new role');
      const after = seen.map((w) => w.length);
      await waitFor(() => seen.every((w, i) => w.length > after[i]! + 20), 10_000, 'requests under the new policy');
      stop = true;
      await Promise.all(workers);
      expect(failures, failures.slice(0, 3).join('\n')).to.deep.equal([]);
      for (const w of seen) {
        // Each worker sees A, then B, and never A again: the switch is atomic.
        const firstB = w.indexOf(ROLE_B);
        expect(w.slice(0, firstB).every((r) => r === ROLE_A)).to.equal(true);
        expect(w.slice(firstB).every((r) => r === ROLE_B)).to.equal(true);
      }
      expect(s.log.lines.filter((l) => /policy reloaded/.test(l))).to.have.length(1);
    });

    it('refuses an invalid edit with its errors at file:line:col and keeps the policy in force', async () => {
      setup = await start(kind, rolePolicy(ROLE_A), [createAwsHandler({ log: memoryLogger('aws') })]);
      const s = setup;
      const client = new BusClient({ publishUrl: s.publishUrl('alpha'), deadlineMs: 5000 });
      try {
        writeAtomically(s.file, s.policy('sheds:\n  alpha:\n    aws: { role: not-an-arn }\n'));
        const headLines = s.policy('').split('\n').length - 1;
        const line = await waitFor(() => s.log.lines.find((l) => /policy reload refused/.test(l)), 10_000, 'the refusal');
        expect(line).to.include('the previous policy stays in force');
        expect(s.log.lines.join('\n')).to.include(`${s.file}:${headLines + 3}:18: sheds.alpha.aws.role: expected an IAM role ARN`);
        expect((await client.publish('aws-credentials', { operation: 'status' })).role).to.equal(ROLE_A);
        // Fixed, it applies.
        writeAtomically(s.file, s.policy(rolePolicy(ROLE_B)));
        await waitFor(async () => (await client.publish('aws-credentials', { operation: 'status' })).role === ROLE_B, 10_000, 'the fixed policy');
      } finally {
        client.close();
      }
    });

    it('an unknown shed with no "*" is refused with SHED_NOT_ALLOWED until an edit adds it', async () => {
      setup = await start(kind, rolePolicy(ROLE_A), [createAwsHandler({ log: memoryLogger('aws') })]);
      const s = setup;
      const client = new BusClient({ publishUrl: s.publishUrl('gamma'), deadlineMs: 5000 });
      try {
        if (kind === 'shed') {
          const err = await client.publish('aws-credentials', { operation: 'status' }).catch((e: BusError) => e);
          expect((err as BusError).code).to.equal('SHED_NOT_ALLOWED');
          expect(s.audit.entries.find((e) => e.shed === 'gamma')).to.include({ ns: 'aws-credentials', op: 'status', result: 'denied', detail: 'SHED_NOT_ALLOWED' });
        }
        fs.mkdirSync(path.join(path.dirname(s.file), 'sheds.d'), { mode: 0o700 });
        writeAtomically(path.join(path.dirname(s.file), 'sheds.d', 'gamma.yaml'), `aws: { role: ${ROLE_B} }\n`);
        await waitFor(async () => (await client.publish('aws-credentials', { operation: 'status' }).catch(() => ({ role: null }))).role === ROLE_B, 10_000, 'gamma from sheds.d');
      } finally {
        client.close();
      }
    });
  });
}

describe('policy reload: direct sockets and requests in flight', () => {
  it('adds the socket of a new shed and removes a removed shed\'s', async () => {
    const s = await start('direct', rolePolicy(ROLE_A), [createAwsHandler({ log: memoryLogger('aws') })]);
    try {
      const socks = path.join(path.dirname(s.file), 'socks');
      const sock = (shed: string) => path.join(socks, shed, 'bus.sock');
      expect(fs.readdirSync(socks).sort()).to.deep.equal(['alpha', 'alpha.sock', 'beta', 'beta.sock']);
      writeAtomically(s.file, s.policy(`sheds:\n  alpha: {}\n  gamma:\n    aws: { role: ${ROLE_B} }\n`));
      await waitFor(() => fs.existsSync(sock('gamma')) && !fs.existsSync(sock('beta')), 10_000, 'the sockets to follow');
      expect(fs.statSync(sock('gamma')).mode & 0o777).to.equal(0o600);
      expect(await roleServed(s.publishUrl('gamma'))).to.equal(ROLE_B);
    } finally {
      await s.stop();
    }
  });

  it('says a changed direct: or server: section needs a restart, and keeps serving as before', async () => {
    const s = await start('direct', rolePolicy(ROLE_A), [createAwsHandler({ log: memoryLogger('aws') })]);
    try {
      const elsewhere = path.join(path.dirname(s.file), 'other-socks');
      writeAtomically(s.file, `version: 1\ndirect: { sockets_dir: ${elsewhere} }\nserver: { url: "http://127.0.0.1:9" }\n${rolePolicy(ROLE_B)}`);
      await waitFor(() => s.log.lines.some((l) => l.includes('restart shed-host-agent to apply')), 10_000, 'the reload');
      const warned = s.log.lines.filter((l) => l.includes('restart shed-host-agent to apply'));
      expect(warned.map((l) => /reload: (\S+) changed/.exec(l)?.[1]).sort()).to.deep.equal(['direct:', 'server:']);
      expect(fs.existsSync(elsewhere)).to.equal(false);
      // The rest of the edit applies.
      expect(await roleServed(s.publishUrl('alpha'))).to.equal(ROLE_B);
    } finally {
      await s.stop();
    }
  });

  it('a request in flight finishes under the policy it started with', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let started = false;
    const slow: NamespaceHandler = {
      namespace: 'ssh-agent',
      async handle(operation, _payload, ctx) {
        started = true;
        await gate;
        return { mode: ctx.policy.ssh.mode };
      },
    };
    const s = await start('direct', 'defaults:\n  ssh: { mode: agent-forward }\nsheds:\n  alpha: {}\n', [slow]);
    const client = new BusClient({ publishUrl: s.publishUrl('alpha'), deadlineMs: 10_000 });
    try {
      const first = client.publish('ssh-agent', { operation: 'list' });
      await waitFor(() => started, 5000, 'the handler to start');
      writeAtomically(s.file, s.policy('defaults:\n  ssh: { mode: local-keys }\nsheds:\n  alpha: {}\n'));
      await waitFor(() => s.broker.policy.resolve('alpha')?.ssh.mode === 'local-keys', 10_000, 'the reload');
      release();
      expect((await first).mode).to.equal('agent-forward');
      expect((await client.publish('ssh-agent', { operation: 'list' })).mode).to.equal('local-keys');
    } finally {
      client.close();
      await s.stop();
    }
  });

  it('shed-host-agent run watches its policy file (and still reloads on SIGHUP)', async () => {
    const dir = tempDir('shed-rl');
    const socks = path.join(dir, 'socks');
    const file = path.join(dir, 'extensions.yaml');
    const head = `version: 1\ndirect: { sockets_dir: ${socks} }\naudit: { path: ${path.join(dir, 'audit.log')} }\n`;
    fs.writeFileSync(file, `${head}sheds:\n  alpha: {}\n`, { mode: 0o600 });
    const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', file]);
    const child = spawnTracked(cmd, args, { env: { ...process.env, HOME: dir, SSH_AUTH_SOCK: '' } });
    const out = capture(child);
    try {
      await waitFor(() => /shed-host-agent ready/.test(out.stderr()), 20_000, 'the broker to start');
      writeAtomically(file, `${head}sheds:\n  alpha: {}\n  beta: {}\n`);
      await waitFor(() => fs.existsSync(path.join(socks, 'beta', 'bus.sock')), 10_000, `beta's socket after the edit: ${out.stderr()}`);
      // An edit made while nothing watches it (same content now) is still picked up by SIGHUP.
      fs.writeFileSync(file, `${head}sheds:\n  beta: {}\n`, { mode: 0o600 });
      child.kill('SIGHUP');
      await waitFor(() => !fs.existsSync(path.join(socks, 'alpha', 'bus.sock')), 10_000, 'alpha\'s socket to go');
    } finally {
      await stopProcess(child);
    }
  });
});
