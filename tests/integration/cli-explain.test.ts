/**
 * `shed-host-agent explain` agrees with the broker: for each request, the
 * dry run's verdict (and code) is what the running broker answers the same
 * request with, over both transports, with real backends behind it (a real
 * ssh-agent, the SigV4-checking test STS, a Docker config, the host's git
 * with a token in its credential-store).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { BusClient, BusError } from '../../guest-services/bus-client.js';
import { createAwsHandler } from '../../host-broker/aws/handler.js';
import { explainCommand } from '../../host-broker/cli/explain-command.js';
import { createDockerHandler } from '../../host-broker/docker/handler.js';
import { createGitHandler } from '../../host-broker/git/handler.js';
import { createSshHandler } from '../../host-broker/ssh/handler.js';
import { memoryLogger } from '../../protocol/log.js';
import { ROLE_DEV, startAwsHost, type AwsHostFixture } from '../support/aws-fixtures.js';
import { startShedBroker } from '../support/bus-emulator.js';
import { gitEnv, storeHostCredential } from '../support/git-http.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { binCommand, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

interface SshKey {
  fp: string;
  blob: string;
}

async function makeKey(dir: string, name: string): Promise<SshKey> {
  const file = path.join(dir, name);
  const gen = await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', file]);
  expect(gen.code, gen.stderr).to.equal(0);
  const fp = (await run('ssh-keygen', ['-lf', `${file}.pub`])).stdout.split(' ')[1]!;
  return { fp, blob: fs.readFileSync(`${file}.pub`, 'utf8').split(' ')[1]! };
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
const sshString = (s: string | Buffer) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);

/** The data `ssh-keygen -Y sign -n <ns>` asks an agent to sign. */
function sshsigData(namespace: string): string {
  return Buffer.concat([Buffer.from('SSHSIG'), sshString(namespace), sshString(''), sshString('sha512'), sshString(Buffer.alloc(64, 7))]).toString('base64');
}

interface Case {
  shed: string;
  namespace: string;
  operation: string;
  flags?: { key?: string; registry?: string; host?: string; 'signing-namespace'?: string; url?: string };
  payload?: Record<string, unknown>;
  /** Only over shed-server (a direct socket exists only for named sheds). */
  shedOnly?: boolean;
  /** What the dry run must say (checked so the matrix covers both verdicts). */
  expect: string;
}

describe('explain agrees with the broker', () => {
  let dir: string;
  let agent: ReturnType<typeof spawnTracked>;
  let aws: AwsHostFixture;
  let keyA: SshKey;
  let keyB: SshKey;
  let config: string;
  let doc: Record<string, unknown>;
  let cases: Case[];
  let gitHome: string;

  before(async () => {
    dir = tempDir('shed-ex');
    const sock = path.join(dir, 'agent.sock');
    agent = spawnTracked('ssh-agent', ['-D', '-a', sock]);
    await waitFor(() => fs.existsSync(sock), 5000, 'ssh-agent');
    keyA = await makeKey(dir, 'key-a');
    keyB = await makeKey(dir, 'key-b');
    for (const k of ['key-a', 'key-b']) {
      const added = await run('ssh-add', [path.join(dir, k)], { env: { ...process.env, SSH_AUTH_SOCK: sock } });
      expect(added.code, added.stderr).to.equal(0);
    }
    aws = await startAwsHost();
    const dockerDir = path.join(dir, 'docker');
    fs.mkdirSync(dockerDir, { mode: 0o700 });
    const auth = Buffer.from('robot:not-a-real-password').toString('base64');
    fs.writeFileSync(path.join(dockerDir, 'config.json'), JSON.stringify({ auths: { 'registry.test:5000': { auth }, 'a.corp.test': { auth } } }), { mode: 0o600 });
    gitHome = path.join(dir, 'git-home');
    fs.mkdirSync(gitHome);
    await storeHostCredential(gitHome, { protocol: 'https', host: 'git.test', username: 'robot', password: 'not-a-real-token' });
    doc = {
      version: 1,
      defaults: {
        ssh: { mode: 'agent-forward', agent_socket: sock },
        aws: { source_profile: 'default', sts_endpoint: aws.sts.url, region: 'us-east-1' },
        docker: { registries: ['registry.test:5000'], config_path: path.join(dockerDir, 'config.json') },
      },
      sheds: {
        alpha: { ssh: { allowed_keys: [keyA.fp] }, aws: { role: ROLE_DEV }, docker: { registries: ['registry.test:5000', '*.corp.test'] }, git: { allowed: ['git.test/acme/*'] } },
        beta: { ssh: { enabled: false } },
        gamma: {
          ssh: { allowed_hosts: [{ host: 'git.example.com', key: `ssh-ed25519 ${keyB.blob}` }], signing_namespaces: ['git'] },
          docker: { enabled: false },
          git: { enabled: false },
        },
      },
    };
    config = path.join(dir, 'extensions.yaml');
    fs.writeFileSync(config, stringify(doc), { mode: 0o600 });
    const sign = (key: SshKey, data = Buffer.from('hello').toString('base64')) => ({ operation: 'sign', public_key: key.blob, data, flags: 0 });
    cases = [
      { shed: 'alpha', namespace: 'ssh-agent', operation: 'list', expect: 'allowed' },
      { shed: 'alpha', namespace: 'ssh-agent', operation: 'sign', flags: { key: keyA.fp }, payload: sign(keyA), expect: 'allowed' },
      { shed: 'alpha', namespace: 'ssh-agent', operation: 'sign', flags: { key: keyB.fp }, payload: sign(keyB), expect: 'KEY_NOT_ALLOWED' },
      { shed: 'beta', namespace: 'ssh-agent', operation: 'sign', flags: { key: keyA.fp }, payload: sign(keyA), expect: 'NAMESPACE_DISABLED' },
      { shed: 'gamma', namespace: 'ssh-agent', operation: 'sign', flags: { key: keyA.fp }, payload: sign(keyA), expect: 'HOST_NOT_ALLOWED' },
      { shed: 'gamma', namespace: 'ssh-agent', operation: 'sign', flags: { key: keyA.fp, 'signing-namespace': 'git' }, payload: sign(keyA, sshsigData('git')), expect: 'allowed' },
      { shed: 'gamma', namespace: 'ssh-agent', operation: 'sign', flags: { key: keyA.fp, 'signing-namespace': 'file' }, payload: sign(keyA, sshsigData('file')), expect: 'SIGNING_NAMESPACE_NOT_ALLOWED' },
      { shed: 'alpha', namespace: 'aws-credentials', operation: 'get_credentials', expect: 'allowed' },
      { shed: 'beta', namespace: 'aws-credentials', operation: 'get_credentials', expect: 'ROLE_NOT_FOUND' },
      { shed: 'alpha', namespace: 'docker-credentials', operation: 'get', flags: { registry: 'registry.test:5000' }, payload: { server_url: 'registry.test:5000' }, expect: 'allowed' },
      { shed: 'alpha', namespace: 'docker-credentials', operation: 'get', flags: { registry: 'https://a.corp.test/v2/' }, payload: { server_url: 'https://a.corp.test/v2/' }, expect: 'allowed' },
      { shed: 'alpha', namespace: 'docker-credentials', operation: 'get', flags: { registry: 'ghcr.io' }, payload: { server_url: 'ghcr.io' }, expect: 'REGISTRY_NOT_ALLOWED' },
      { shed: 'beta', namespace: 'docker-credentials', operation: 'get', flags: { registry: 'corp.test' }, payload: { server_url: 'corp.test' }, expect: 'REGISTRY_NOT_ALLOWED' },
      { shed: 'gamma', namespace: 'docker-credentials', operation: 'get', flags: { registry: 'registry.test:5000' }, payload: { server_url: 'registry.test:5000' }, expect: 'NAMESPACE_DISABLED' },
      { shed: 'alpha', namespace: 'docker-credentials', operation: 'store', expect: 'READ_ONLY' },
      { shed: 'alpha', namespace: 'docker-credentials', operation: 'frobnicate', expect: 'UNKNOWN_OPERATION' },
      { shed: 'stranger', namespace: 'aws-credentials', operation: 'get_credentials', shedOnly: true, expect: 'SHED_NOT_ALLOWED' },
      ...([
        ['alpha', 'https://git.test/acme/app.git', 'allowed'],
        ['alpha', 'https://GIT.test:443/acme/app', 'allowed'],
        ['alpha', 'https://git.test/other/app.git', 'GIT_HOST_NOT_ALLOWED'],
        ['alpha', 'http://git.test/acme/app.git', 'GIT_HOST_NOT_ALLOWED'],
        ['alpha', 'ssh://git.test/acme/app.git', 'GIT_HOST_NOT_ALLOWED'],
        ['alpha', 'https://git.test/acme/../x', 'INVALID_REQUEST'],
        ['beta', 'https://git.test/acme/app.git', 'GIT_HOST_NOT_ALLOWED'],
        ['gamma', 'https://git.test/acme/app.git', 'NAMESPACE_DISABLED'],
      ] as const).map(([shed, url, expect]): Case => {
        // What git in the guest sends for that URL: protocol, host with its port, the path as written.
        const [protocol, rest] = url.split('://') as [string, string];
        const payload = { protocol, host: rest.slice(0, rest.indexOf('/')), path: rest.slice(rest.indexOf('/') + 1) };
        return { shed, namespace: 'git-credentials', operation: 'get', flags: { url }, payload, expect };
      }),
    ];
  });

  after(async () => {
    if (agent) await stopProcess(agent);
    await aws?.stop();
  });

  async function explainJson(c: Case): Promise<{ allowed: boolean; code?: string; steps: Array<{ rule: string }> }> {
    let out = '';
    let err = '';
    const code = await explainCommand(config, [c.shed, c.namespace, c.operation], { ...c.flags, json: true }, { out: (t) => (out += t), err: (t) => (err += t) });
    expect(code, err).to.be.oneOf([0, 1]);
    const x = JSON.parse(out) as { allowed: boolean; code?: string; steps: Array<{ rule: string }> };
    expect(code).to.equal(x.allowed ? 0 : 1);
    return x;
  }

  for (const kind of ['direct', 'shed'] as const) {
    it(`for the same inputs, over the ${kind} transport`, async () => {
      const log = memoryLogger('shed-host-agent');
      const handlers = [
        createSshHandler({ log, env: {} }),
        createAwsHandler({ log, configFile: aws.configFile, credentialsFile: aws.credentialsFile }),
        createDockerHandler({ log, env: { PATH: process.env.PATH }, homedir: dir }),
        createGitHandler({ log, env: gitEnv(gitHome) }),
      ];
      const h: Harness = kind === 'direct' ? await startDirectBroker({ policy: doc, handlers, log }) : await startShedBroker({ policy: doc, handlers, log });
      try {
        for (const c of cases) {
          if (c.shedOnly && kind === 'direct') continue;
          const x = await explainJson(c);
          const what = `${c.shed} ${c.namespace} ${c.operation} ${JSON.stringify(c.flags ?? {})}`;
          expect(x.allowed ? 'allowed' : x.code, `explain: ${what}: ${x.steps.map((s) => s.rule).join('; ')}`).to.equal(c.expect);
          const client = new BusClient({ publishUrl: h.publishUrl(c.shed), deadlineMs: 10_000 });
          try {
            const answer = await client.publish(c.namespace, { operation: c.operation, ...c.payload }).then(
              () => 'allowed',
              (err: BusError) => err.code ?? err.message,
            );
            expect(answer, `broker: ${what}`).to.equal(c.expect);
          } finally {
            client.close();
          }
        }
      } finally {
        await h.stop();
      }
    });
  }

  it('the command prints the deciding rule and exits 0 when allowed, 1 when denied, 2 on a usage error', async () => {
    const [cmd, args] = binCommand('shed-host-agent', ['explain', 'alpha', 'docker-credentials', 'get', '--registry', 'ghcr.io', '--config', config]);
    const denied = await run(cmd, args);
    expect(denied.code, denied.stderr).to.equal(1);
    expect(denied.stdout).to.include('denied   registry: registries (registry.test:5000, *.corp.test) does not cover ghcr.io');
    expect(denied.stdout).to.include('verdict: denied REGISTRY_NOT_ALLOWED');
    const [, usage] = binCommand('shed-host-agent', ['explain', 'alpha', 'ssh-agent', 'sign', '--config', config]);
    const u = await run(cmd, usage);
    expect(u.code).to.equal(2);
    expect(u.stderr).to.include('needs --key');
    const [, ok] = binCommand('shed-host-agent', ['explain', 'alpha', 'ssh-agent', 'sign', '--key', keyA.fp, '--config', config]);
    const allowed = await run(cmd, ok);
    expect(allowed.code, allowed.stderr).to.equal(0);
    expect(allowed.stdout).to.include(`allowed  key: allowed_keys lists ${keyA.fp}`);
    expect(allowed.stdout).to.match(/^verdict: allowed$/m);
  });
});
