/**
 * `shed-ext status` as a guest runs it: the real CLI process against a live
 * broker (its real handlers, a real ssh-agent behind agent-forward) over both
 * transports, against a dead broker (no socket, a socket that never answers,
 * a VM without a bus channel), and its usage errors.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { VERSION } from '../../protocol/version.js';
import { BusClient } from '../../guest-services/bus-client.js';
import { AuditLog } from '../../host-broker/audit/audit-log.js';
import { runCli } from '../../guest-services/status/cli.js';
import { describeStatus, formatReport } from '../../guest-services/status/status.js';
import { startShedBroker, type ShedHarness } from '../support/bus-emulator.js';
import { startDirectBroker, type Harness, type TransportKind } from '../support/harness.js';
import { binCommand, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

const TRANSPORTS: TransportKind[] = ['direct', 'shed'];
const ROLE = 'arn:aws:iam::123456789012:role/dev';

/** The real `shed-ext` process (exit codes, stdout as a guest sees them). */
async function shedExtProcess(args: string[], env: Record<string, string> = {}) {
  const [cmd, argv] = binCommand('shed-ext', args);
  const started = Date.now();
  const { SHED_PUBLISH_URL: _ignored, ...base } = process.env;
  const result = await run(cmd, argv, { env: { ...base, ...env }, timeoutMs: 20_000 });
  return { ...result, ms: Date.now() - started };
}

/** The same CLI in this process: what main.ts runs, without a second of tsx start-up per call. */
async function shedExt(args: string[], env: Record<string, string> = {}) {
  let stdout = '';
  let stderr = '';
  const started = Date.now();
  const code = await runCli(args, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), env });
  return { code, stdout, stderr, ms: Date.now() - started };
}

/** A real ssh-agent holding two fresh keys: the host agent of agent-forward mode. */
async function startHostAgent(dir: string) {
  const sock = path.join(dir, 'agent.sock');
  const agent = spawnTracked('ssh-agent', ['-D', '-a', sock]);
  await waitFor(() => fs.existsSync(sock), 5000, 'ssh-agent socket');
  for (const name of ['id_a', 'id_b']) {
    const key = path.join(dir, name);
    const gen = await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', key]);
    expect(gen.code, gen.stderr).to.equal(0);
    const add = await run('ssh-add', [key], { env: { ...process.env, SSH_AUTH_SOCK: sock } });
    expect(add.code, add.stderr).to.equal(0);
  }
  return { sock, stop: () => stopProcess(agent) };
}

const REGISTRY_SECRET = 'status-SECRET-9c1e0f7a';

/** The host's Docker config, holding a registry password that status must never show. */
function hostDockerConfig(dir: string): string {
  const file = path.join(dir, 'docker-config.json');
  const auth = Buffer.from(`alice:${REGISTRY_SECRET}`).toString('base64');
  fs.writeFileSync(file, JSON.stringify({ auths: { 'ghcr.io': { auth } } }), { mode: 0o600 });
  return file;
}

function policy(agentSock: string, dockerConfig: string): Record<string, unknown> {
  return {
    version: 1,
    defaults: { ssh: { mode: 'agent-forward', agent_socket: agentSock }, docker: { config_path: dockerConfig } },
    sheds: {
      dev: {
        aws: { role: ROLE },
        docker: { registries: ['ghcr.io', 'registry.example.test'] },
        git: { allowed: ['github.com/acme/*', 'gitlab.example.com'], sources: { 'github.com': { command: ['gh', 'auth', 'token'] } } },
      },
      quiet: { ssh: { enabled: false }, aws: { enabled: false }, docker: { enabled: false }, git: { enabled: false } },
      bare: { ssh: { agent_socket: `${agentSock}.gone` }, docker: { config_path: `${dockerConfig}.gone` } },
    },
  };
}

describe('shed-ext status', function () {
  this.timeout(60_000);
  let hostAgent: Awaited<ReturnType<typeof startHostAgent>>;
  let dockerConfig: string;

  before(async () => {
    const dir = tempDir('shed-st');
    dockerConfig = hostDockerConfig(dir);
    hostAgent = await startHostAgent(dir);
  });
  after(async () => {
    await hostAgent?.stop();
  });

  for (const kind of TRANSPORTS) {
    describe(`against a live broker over the ${kind} transport`, () => {
      let h: Harness;

      before(async () => {
        h = kind === 'direct' ? await startDirectBroker({ policy: policy(hostAgent.sock, dockerConfig) }) : await startShedBroker({ policy: policy(hostAgent.sock, dockerConfig) });
      });
      after(async () => {
        await h?.stop();
      });

      it('prints one connected line per namespace and exits 0', async () => {
        const r = kind === 'direct'
          ? await shedExtProcess(['status', '--publish-url', h.publishUrl('dev')])
          : await shedExt(['status', '--publish-url', h.publishUrl('dev')]);
        expect(r.stderr).to.equal('');
        expect(r.stdout).to.equal(
          'ssh-agent: ✓ connected (agent-forward mode, 2 keys available)\n'
          + `aws-credentials: ✓ connected (role ${ROLE}, not cached yet)\n`
          + 'docker-credentials: ✓ connected (2 registries)\n'
          + 'git-credentials: ✓ connected (2 allowed hosts or repositories, 1 token command)\n',
        );
        expect(r.code).to.equal(0);
      });

      it('--json carries the host status answers, and SHED_PUBLISH_URL stands in for --publish-url', async () => {
        const r = await shedExt(['status', '--json'], { SHED_PUBLISH_URL: h.publishUrl('dev') });
        expect(r.code, r.stderr).to.equal(0);
        const report = JSON.parse(r.stdout);
        expect(report).to.include({ ok: true, publish_url: h.publishUrl('dev') });
        expect(report.namespaces.map((n: { namespace: string; state: string }) => [n.namespace, n.state])).to.deep.equal([
          ['ssh-agent', 'connected'], ['aws-credentials', 'connected'], ['docker-credentials', 'connected'], ['git-credentials', 'connected'],
        ]);
        expect(report.namespaces[0].status).to.include({ connected: true, mode: 'agent-forward', key_count: 2 });
        expect(report.namespaces[1].status).to.deep.equal({ connected: true, role: ROLE, cached_until: null });
        expect(report.namespaces[2].status).to.include({ connected: true, allow_all: false, registry_count: 2 });
        expect(report.namespaces[3].status).to.deep.equal({ connected: true, allowed_count: 2, source_count: 1 });
        expect(r.stdout).not.to.include(REGISTRY_SECRET);
        expect(r.stdout).not.to.include(Buffer.from(`alice:${REGISTRY_SECRET}`).toString('base64'));
      });

      it('says when the host answers but cannot serve (no agent, no Docker config), with what to do', async () => {
        const r = await shedExt(['status', '--publish-url', h.publishUrl('bare')]);
        const lines = r.stdout.split('\n').filter(Boolean);
        expect(lines[0]).to.match(/^ssh-agent: ✗ unavailable \(.+\)$/);
        expect(lines[1]).to.equal('aws-credentials: ✓ connected (no role assigned to this shed by the host policy)');
        expect(lines[2]).to.equal('docker-credentials: ✗ unavailable (the host has no Docker config to read registry credentials from: '
          + 'run `docker login <registry>` on the host)');
        expect(lines[3]).to.equal('git-credentials: ✓ connected (no git hosts allowed for this shed by the host policy)');
        expect(r.code).to.equal(1);
      });

      it('says which namespaces the host policy turns off, and that is not a failure', async () => {
        const r = await shedExt(['status', '--publish-url', h.publishUrl('quiet')]);
        expect(r.stdout.split('\n').filter(Boolean)).to.deep.equal([
          'ssh-agent: - disabled (the host refused ssh-agent status: ssh-agent is disabled for shed quiet by the host policy (NAMESPACE_DISABLED))',
          'aws-credentials: - disabled (the host refused aws-credentials status: aws-credentials is disabled for shed quiet by the host policy (NAMESPACE_DISABLED))',
          'docker-credentials: - disabled (the host refused docker-credentials status: docker-credentials is disabled for shed quiet by the host policy (NAMESPACE_DISABLED))',
          'git-credentials: - disabled (the host refused git-credentials status: git-credentials is disabled for shed quiet by the host policy (NAMESPACE_DISABLED))',
        ]);
        expect(r.code).to.equal(0);
      });

      it('exits 1 when the broker goes away, with what to do', async () => {
        const url = h.publishUrl('dev');
        await h.stop();
        const r = kind === 'direct' ? await shedExtProcess(['status', '--publish-url', url]) : await shedExt(['status', '--publish-url', url]);
        expect(r.code).to.equal(1);
        const lines = r.stdout.split('\n').filter(Boolean);
        expect(lines).to.have.length(4);
        for (const line of lines) expect(line).to.match(/^[a-z-]+: ✗ not connected \(.+shed-(host-)?agent.+\)$/);
        // 2 s per namespace, all at once: never 6 s (a process start included).
        expect(r.ms).to.be.below(5500);
      });
    });
  }

  describe('while the host cannot write its audit log', () => {
    it('still connects, and warns on every namespace without the host\'s error text', async () => {
      const dir = tempDir('shed-st');
      fs.writeFileSync(path.join(dir, 'not-a-dir'), '');
      const audit = new AuditLog(path.join(dir, 'not-a-dir', 'audit.log')); // ENOTDIR on every write
      const hostAgent = await startHostAgent(dir);
      const h = await startDirectBroker({ policy: policy(hostAgent.sock, hostDockerConfig(dir)), audit });
      try {
        const bus = new BusClient({ publishUrl: h.publishUrl('dev') });
        await bus.publish('docker-credentials', { operation: 'list' }).finally(() => bus.close());
        expect(audit.lastError).to.match(/EEXIST|ENOTDIR/);
        const r = await shedExt(['status', '--publish-url', h.publishUrl('dev')]);
        const lines = r.stdout.split('\n').filter(Boolean);
        expect(lines).to.have.length(4);
        for (const line of lines) expect(line).to.match(/✓ connected \(.*warning: the host cannot write its audit log; see the shed-host-agent log on the host\)$/);
        expect(r.stdout).not.to.match(/EEXIST|ENOTDIR|not-a-dir/);
      } finally {
        await h.stop();
        await hostAgent.stop();
      }
    });
  });

  describe('over the shed transport, trouble on the guest side', () => {
    let h: ShedHarness;
    before(async () => {
      h = await startShedBroker({ policy: policy(hostAgent.sock, dockerConfig) });
    });
    after(async () => {
      await h?.stop();
    });

    it('a shed the host policy does not name is refused, with the fix', async () => {
      const r = await shedExt(['status', '--publish-url', h.publishUrl('stranger')]);
      expect(r.code).to.equal(1);
      const lines = r.stdout.split('\n').filter(Boolean);
      expect(lines).to.have.length(4);
      for (const line of lines) {
        expect(line).to.match(/^[a-z-]+: ✗ refused \(.*SHED_NOT_ALLOWED.*add this shed \(or a "\*" entry\) to the host policy/);
      }
    });

    it('a VM without a bus channel is not connected: NO_CONNECTION and its hint', async () => {
      const url = h.publishUrl('dev');
      h.server.disconnectShed('dev');
      try {
        const r = await shedExt(['status', '--publish-url', url]);
        expect(r.code).to.equal(1);
        const lines = r.stdout.split('\n').filter(Boolean);
        expect(lines).to.have.length(4);
        for (const line of lines) expect(line).to.match(/✗ not connected \(.*NO_CONNECTION.*check that shed-server is running/);
      } finally {
        h.server.connectShed('dev');
      }
    });
  });

  describe('against a dead broker', () => {
    it('no socket: exits 1 at once, naming the socket and what to check', async () => {
      const sock = path.join(tempDir('shed-st'), 'gone.sock');
      const r = await shedExt(['status', '--publish-url', `unix:${sock}`]);
      expect(r.code).to.equal(1);
      expect(r.stdout.split('\n').filter(Boolean)).to.deep.equal(['ssh-agent', 'aws-credentials', 'docker-credentials', 'git-credentials'].map((ns) =>
        `${ns}: ✗ not connected (cannot reach the broker socket ${sock} (ENOENT); check that shed-host-agent is running with this shed in its policy and that its socket is mounted here)`));
    });

    it('a socket that never answers: 2 s per namespace, concurrently, then exit 1 naming shed-host-agent', async () => {
      const sock = path.join(tempDir('shed-st'), 'hung.sock');
      const held: net.Socket[] = [];
      const server = net.createServer((s) => held.push(s));
      await new Promise<void>((resolve) => server.listen(sock, resolve));
      try {
        const r = await shedExt(['status', '--publish-url', `unix:${sock}`]);
        expect(r.code).to.equal(1);
        const lines = r.stdout.split('\n').filter(Boolean);
        expect(lines).to.deep.equal(['ssh-agent', 'aws-credentials', 'docker-credentials', 'git-credentials'].map((ns) =>
          `${ns}: ✗ not connected (no answer on ${ns} within 2 s: shed-host-agent may not be running; `
          + 'start it on the host with `shed-host-agent run --config ~/.config/shed/extensions.yaml`)'));
        expect(held.length).to.equal(4);
        expect(r.ms).to.be.within(1900, 3500);
      } finally {
        for (const s of held) s.destroy();
        await new Promise((resolve) => server.close(resolve));
      }
    });
  });

  describe('usage', () => {
    it('exits 2 on an unknown option, a bad publish URL or an unknown command; --help and version exit 0', async () => {
      const [bad, url, cmd, none, help, version] = await Promise.all([
        shedExtProcess(['status', '--bogus']),
        shedExt(['status', '--publish-url', 'ftp://127.0.0.1/v1/publish']),
        shedExt(['stauts']),
        shedExt([]),
        shedExt(['--help']),
        shedExt(['version']),
      ]);
      expect(bad.code).to.equal(2);
      expect(bad.stderr).to.match(/shed-ext: Unknown option '--bogus'.*\nTry 'shed-ext --help'/s);
      expect(url.code).to.equal(2);
      expect(url.stderr).to.include('must use http: or unix:');
      expect(cmd.code).to.equal(2);
      expect(cmd.stderr).to.include('unknown command "stauts"');
      expect(none.code).to.equal(2);
      expect(none.stderr).to.include('Usage: shed-ext <command>');
      expect(help.code).to.equal(0);
      expect(help.stdout).to.include('status [--publish-url URL] [--json]').and.include('install-guest --root DIR');
      expect(version.code).to.equal(0);
      expect(version.stdout).to.equal(`shed-ext (shed-extensions) ${VERSION}\n`);
    });
  });

  describe('the summaries', () => {
    it('word the host status answers as the original did', () => {
      expect(describeStatus('ssh-agent', { connected: true, mode: 'local-keys', key_count: 1 })).to.equal('local-keys mode, 1 key available');
      expect(describeStatus('aws-credentials', { connected: true, role: ROLE, cached_until: '2026-03-31T19:00:00Z' }))
        .to.equal(`role ${ROLE}, cached until 2026-03-31T19:00:00Z`);
      expect(describeStatus('aws-credentials', { connected: true, role: null, cached_until: null })).to.equal('no role assigned to this shed by the host policy');
      expect(describeStatus('docker-credentials', { connected: true, allow_all: true, registry_count: 0 })).to.equal('all registries');
      expect(describeStatus('docker-credentials', { connected: true, allow_all: false, registry_count: 1 })).to.equal('1 registry');
      expect(formatReport({ publish_url: 'x', ok: false, namespaces: [
        { namespace: 'ssh-agent', state: 'refused', summary: 'no\nagent' },
      ] })).to.equal('ssh-agent: ✗ refused (no agent)\n');
    });
  });
});
