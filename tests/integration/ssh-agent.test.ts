/**
 * The ssh-agent namespace end to end, with real OpenSSH on loopback: ssh,
 * ssh-add, scp, git and ssh-keygen talk to shed-ext-ssh-agent (a real
 * process) whose requests go over the bus (direct sockets, or the emulated
 * shed-server + shed-agent) to the broker, which signs through a real
 * ssh-agent (agent-forward) or the key files of a temp HOME (local-keys).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { AgentClient, type AgentError } from '../../host-broker/ssh/agent-client.js';
import { createSshHandler } from '../../host-broker/ssh/handler.js';
import { keyLineBlob } from '../../host-broker/ssh/rules.js';
import { unknownOperation, type NamespaceHandler } from '../../host-broker/handler.js';
import type { MemoryAudit } from '../../host-broker/audit/audit.js';
import { memoryLogger } from '../../protocol/log.js';
import { startShedBroker } from '../support/bus-emulator.js';
import { startDirectBroker, type Harness, type HarnessOptions, type TransportKind } from '../support/harness.js';
import { binCommand, capture, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';
import { cleanEnv, makeKey, sshOptions, startRealAgent, startSshd, type KeyPair, type RealAgent, type Sshd } from '../support/sshd.js';

const SHED = 'dev';

interface Guest {
  sock: string;
  statusFile: string;
  output: () => string;
  stop(): Promise<void>;
}

async function startGuest(dir: string, publishUrl: string): Promise<Guest> {
  const sock = path.join(dir, 'agent.sock');
  const statusFile = path.join(dir, 'ssh-agent.status');
  const [cmd, args] = binCommand('shed-ext-ssh-agent', ['--sock', sock, '--publish-url', publishUrl]);
  const child = spawnTracked(cmd, args);
  const out = capture(child);
  await waitFor(() => fs.existsSync(statusFile) || child.exitCode !== null, 15_000, 'shed-ext-ssh-agent to start');
  if (child.exitCode !== null) throw new Error(`shed-ext-ssh-agent exited: ${out.stderr()}`);
  return { sock, statusFile, output: () => out.stdout() + out.stderr(), stop: async () => { await stopProcess(child); } };
}

async function startBroker(kind: TransportKind, options: HarnessOptions): Promise<Harness> {
  return kind === 'direct' ? startDirectBroker(options) : startShedBroker(options);
}

/** The shared real peers: three user keys, two sshd with different host keys, a real ssh-agent, a temp HOME, a bare repo. */
interface World {
  dir: string;
  keys: { ed25519: KeyPair; ecdsa: KeyPair; rsa: KeyPair };
  sshd: Sshd;
  other: Sshd;
  agent: RealAgent;
  home: string;
  repo: string;
  /** Every output a test saw, for the key-material check. */
  seen: string[];
}

async function makeWorld(): Promise<World> {
  const dir = tempDir('shed-ssh');
  const keysDir = path.join(dir, 'keys');
  fs.mkdirSync(keysDir, { mode: 0o700 });
  const [ed25519, ecdsa, rsa] = await Promise.all([
    makeKey(keysDir, 'id_ed25519', 'ed25519'),
    makeKey(keysDir, 'id_ecdsa', 'ecdsa'),
    makeKey(keysDir, 'id_rsa', 'rsa'),
  ]);
  const all = [ed25519, ecdsa, rsa];
  const [sshd, other] = await Promise.all([
    startSshd(path.join(dir, 'sshd-a'), all.map((k) => k.pubLine)),
    startSshd(path.join(dir, 'sshd-b'), all.map((k) => k.pubLine)),
  ]);
  const agent = await startRealAgent(path.join(dir, 'host-agent.sock'), all);
  const home = path.join(dir, 'home');
  fs.mkdirSync(path.join(home, '.ssh'), { recursive: true, mode: 0o700 });
  for (const k of all) fs.copyFileSync(k.file, path.join(home, '.ssh', path.basename(k.file)));
  for (const k of all) fs.chmodSync(path.join(home, '.ssh', path.basename(k.file)), 0o600);
  const repo = path.join(dir, 'repo.git');
  const init = await run('git', ['init', '-q', '--bare', '-b', 'main', repo], { env: cleanEnv(dir) });
  expect(init.code, init.stderr).to.equal(0);
  return { dir, keys: { ed25519, ecdsa, rsa }, sshd, other, agent, home, repo, seen: [] };
}

async function stopWorld(w: World | undefined): Promise<void> {
  if (!w) return;
  await Promise.all([w.sshd.stop(), w.other.stop(), w.agent.stop()]);
}

/** Run a client with only the guest agent: no HOME keys, no user ssh config. */
async function client(w: World, guest: Guest, cmd: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}) {
  const clientHome = path.join(w.dir, 'client-home');
  fs.mkdirSync(clientHome, { recursive: true, mode: 0o700 });
  const r = await run(cmd, args, { env: { ...cleanEnv(clientHome), SSH_AUTH_SOCK: guest.sock, ...extraEnv }, timeoutMs: 20_000 });
  w.seen.push(r.stdout, r.stderr);
  return r;
}

function sshLogin(w: World, guest: Guest, sshd: Sshd, key: KeyPair, extra: string[] = []) {
  const knownHosts = path.join(w.dir, 'known_hosts');
  return client(w, guest, 'ssh', [...sshOptions(sshd.port, knownHosts, ['-o', 'IdentitiesOnly=yes', '-i', key.pubFile, ...extra]), 'root@127.0.0.1', `echo logged-in-${key.type}`]);
}

function expectNoKeyMaterial(w: World, texts: string[]): void {
  const haystack = texts.join('\n');
  for (const k of Object.values(w.keys)) {
    for (const secret of k.secrets) expect(haystack.includes(secret), `private ${k.type} key material leaked`).to.equal(false);
  }
}

function pubPart(line: string): string {
  return line.split(' ').slice(0, 2).join(' ');
}

let world: World | undefined;
const w = () => world!;

describe('ssh-agent namespace with real OpenSSH', function () {
  before(async function () {
    this.timeout(30_000);
    world = await makeWorld();
  });

  after(async () => {
    await stopWorld(world);
  });

  for (const kind of ['direct', 'shed'] as const) {
    for (const mode of ['agent-forward', 'local-keys'] as const) {
      describe(`ssh-agent end to end: ${kind} transport, ${mode}`, function () {
        this.timeout(30_000);
        let harness: Harness;
        let guest: Guest;
        let hostLog: ReturnType<typeof memoryLogger>;

        before(async () => {
          hostLog = memoryLogger('shed-host-agent');
          const handler = createSshHandler({ log: hostLog, homedir: () => w().home, env: {} });
          const ssh = mode === 'agent-forward' ? { mode, agent_socket: w().agent.sock } : { mode };
          harness = await startBroker(kind, { policy: { version: 1, sheds: { [SHED]: { ssh } } }, handlers: [handler], log: hostLog });
          guest = await startGuest(tempDir('shed-g'), harness.publishUrl(SHED));
        });

        after(async () => {
          await guest?.stop();
          await harness?.stop();
        });

        it('writes "connected" beside a 0600 socket', () => {
          expect(fs.readFileSync(guest.statusFile, 'utf8').trim()).to.equal('connected');
          expect(fs.statSync(guest.sock).mode & 0o777).to.equal(0o600);
        });

        it('ssh-add -l and -L list the host\'s keys', async () => {
          const l = await client(w(), guest, 'ssh-add', ['-l']);
          expect(l.code, l.stderr).to.equal(0);
          for (const k of Object.values(w().keys)) expect(l.stdout).to.include(k.fingerprint);
          const L = await client(w(), guest, 'ssh-add', ['-L']);
          expect(L.code, L.stderr).to.equal(0);
          const listed = L.stdout.trim().split('\n').map(pubPart);
          expect(listed).to.have.members(Object.values(w().keys).map((k) => pubPart(k.pubLine)));
        });

        it('ssh logs into a real sshd with ed25519, ecdsa and RSA (rsa-sha2-512)', async () => {
          // Concurrently: the guest agent serves many clients at once.
          const keys = [w().keys.ed25519, w().keys.ecdsa, w().keys.rsa];
          const results = await Promise.all(keys.map((key) => sshLogin(w(), guest, w().sshd, key, key.type === 'rsa' ? ['-o', 'PubkeyAcceptedAlgorithms=rsa-sha2-512'] : [])));
          results.forEach((r, i) => {
            expect(r.code, `${keys[i]!.type}: ${r.stderr}`).to.equal(0);
            expect(r.stdout.trim()).to.equal(`logged-in-${keys[i]!.type}`);
          });
        });

        it('git clones and pushes over ssh', async () => {
          const work = path.join(tempDir('shed-git'), 'clone');
          const sshCmd = ['ssh', ...sshOptions(w().sshd.port, path.join(w().dir, 'known_hosts'), ['-o', 'IdentitiesOnly=yes', '-i', w().keys.ed25519.pubFile])].join(' ');
          const env = { GIT_SSH_COMMAND: sshCmd, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@test', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@test' };
          const clone = await client(w(), guest, 'git', ['clone', '-q', `ssh://root@127.0.0.1${w().repo}`, work], env);
          expect(clone.code, clone.stderr).to.equal(0);
          fs.writeFileSync(path.join(work, `${kind}-${mode}.txt`), 'hello\n');
          const commit = await client(w(), guest, 'git', ['-C', work, 'add', '-A'], env);
          expect(commit.code, commit.stderr).to.equal(0);
          const c2 = await client(w(), guest, 'git', ['-C', work, 'commit', '-q', '-m', `from ${kind} ${mode}`], env);
          expect(c2.code, c2.stderr).to.equal(0);
          const push = await client(w(), guest, 'git', ['-C', work, 'push', '-q', 'origin', 'HEAD:main'], env);
          expect(push.code, push.stderr).to.equal(0);
          const log = await run('git', ['--git-dir', w().repo, 'log', '--format=%s', 'main'], { env: cleanEnv(w().dir) });
          expect(log.stdout).to.include(`from ${kind} ${mode}`);
        });

        it('scp copies both ways', async () => {
          const dir = tempDir('shed-scp');
          const local = path.join(dir, 'up.txt');
          fs.writeFileSync(local, `payload ${kind} ${mode}\n`);
          const remote = path.join(dir, 'remote.txt');
          const opts = sshOptions(w().sshd.port, path.join(w().dir, 'known_hosts'), ['-o', 'IdentitiesOnly=yes', '-i', w().keys.ecdsa.pubFile])
            .map((a) => (a === '-p' ? '-P' : a));
          const up = await client(w(), guest, 'scp', ['-q', ...opts, local, `root@127.0.0.1:${remote}`]);
          expect(up.code, up.stderr).to.equal(0);
          expect(fs.readFileSync(remote, 'utf8')).to.equal(`payload ${kind} ${mode}\n`);
          const down = path.join(dir, 'down.txt');
          const dn = await client(w(), guest, 'scp', ['-q', ...opts, `root@127.0.0.1:${remote}`, down]);
          expect(dn.code, dn.stderr).to.equal(0);
          expect(fs.readFileSync(down, 'utf8')).to.equal(`payload ${kind} ${mode}\n`);
        });

        it('ssh-keygen -Y sign and -Y verify in namespace git', async () => {
          const dir = tempDir('shed-sig');
          const file = path.join(dir, 'commit.txt');
          fs.writeFileSync(file, 'tree 0000\n');
          const signed = await client(w(), guest, 'ssh-keygen', ['-Y', 'sign', '-f', w().keys.ed25519.pubFile, '-n', 'git', file]);
          expect(signed.code, signed.stderr).to.equal(0);
          const signers = path.join(dir, 'allowed_signers');
          fs.writeFileSync(signers, `t@test ${w().keys.ed25519.pubLine}\n`);
          const verify = await run('sh', ['-c', `ssh-keygen -Y verify -f ${signers} -I t@test -n git -s ${file}.sig < ${file}`], { env: cleanEnv(dir) });
          expect(verify.code, verify.stdout + verify.stderr).to.equal(0);
          expect(verify.stdout).to.include('Good "git" signature');
        });

        it('audits list, sign and bind with fingerprints, and no key material appears anywhere', () => {
          const entries = (harness.audit as MemoryAudit).entries;
          const ops = new Set(entries.map((e) => e.op));
          expect([...ops]).to.include.members(['list', 'sign', 'bind']);
          const sign = entries.find((e) => e.op === 'sign' && e.result === 'ok');
          expect(sign?.detail).to.match(/^SHA256:[A-Za-z0-9+/]{43}/);
          const bind = entries.find((e) => e.op === 'bind');
          expect(bind?.detail).to.include(w().sshd.hostKey.fingerprint);
          expectNoKeyMaterial(w(), [guest.output(), ...hostLog.lines, JSON.stringify(entries), ...w().seen, fs.readFileSync(guest.statusFile, 'utf8')]);
        });
      });
    }
  }

  for (const kind of ['direct', 'shed'] as const) {
    describe(`ssh-agent policy through real clients: ${kind} transport`, function () {
      this.timeout(30_000);
      let harness: Harness;
      let guest: Guest;
      let hostLog: ReturnType<typeof memoryLogger>;
      const policy = (ssh: Record<string, unknown>) => ({ version: 1, sheds: { [SHED]: { ssh: { mode: 'agent-forward', agent_socket: w().agent.sock, ...ssh } } } });

      before(async () => {
        hostLog = memoryLogger('shed-host-agent');
        harness = await startBroker(kind, { policy: policy({}), handlers: [createSshHandler({ log: hostLog, env: {} })], log: hostLog });
        guest = await startGuest(tempDir('shed-g'), harness.publishUrl(SHED));
      });

      after(async () => {
        await guest?.stop();
        await harness?.stop();
      });

      it('a key outside allowed_keys is invisible and cannot sign', async () => {
        expect(await harness.setPolicy(policy({ allowed_keys: [w().keys.ed25519.fingerprint] }))).to.equal(undefined);
        const l = await client(w(), guest, 'ssh-add', ['-l']);
        expect(l.stdout).to.include(w().keys.ed25519.fingerprint);
        expect(l.stdout).not.to.include(w().keys.rsa.fingerprint);
        expect(l.stdout).not.to.include(w().keys.ecdsa.fingerprint);
        const rsa = await sshLogin(w(), guest, w().sshd, w().keys.rsa);
        expect(rsa.code).to.equal(255);
        // ssh and ssh-keygen never ask for a key the agent does not list; a client that does is refused.
        const direct = new AgentClient(guest.sock);
        try {
          const rsaBlob = keyLineBlob(w().keys.rsa.pubLine)!;
          const err = await direct.sign(rsaBlob, Buffer.from('data'), 0).then(() => undefined, (e: AgentError) => e);
          expect(err?.kind).to.equal('refused');
        } finally {
          direct.close();
        }
        const denied = (harness.audit as MemoryAudit).entries.filter((e) => e.op === 'sign' && e.result === 'denied');
        expect(denied.map((e) => e.detail).join('\n')).to.include(`${w().keys.rsa.fingerprint}: allowed_keys does not list`);
        const ok = await sshLogin(w(), guest, w().sshd, w().keys.ed25519);
        expect(ok.code, ok.stderr).to.equal(0);
      });

      it('allowed_hosts naming one sshd\'s host key: login there works, to another host key fails', async () => {
        expect(await harness.setPolicy(policy({ allowed_hosts: [{ host: 'sshd-a', key: w().sshd.hostKey.pubLine }] }))).to.equal(undefined);
        const a = await sshLogin(w(), guest, w().sshd, w().keys.ed25519);
        expect(a.code, a.stderr).to.equal(0);
        const b = await sshLogin(w(), guest, w().other, w().keys.ed25519);
        expect(b.code, 'login to a server outside allowed_hosts must fail').to.equal(255);
        const denied = (harness.audit as MemoryAudit).entries.filter((e) => e.op === 'sign' && e.result === 'denied');
        expect(denied.map((e) => e.detail).join('\n')).to.include(`no allowed_hosts entry has host key ${w().other.hostKey.fingerprint}`);
        expect(guest.output()).to.include('HOST_NOT_ALLOWED');
      });

      it('allowed_hosts from a known_hosts file works the same way', async () => {
        const kh = path.join(tempDir('shed-kh'), 'known_hosts');
        fs.writeFileSync(kh, `# allowed\n${w().sshd.knownHostsLine}\n`);
        expect(await harness.setPolicy(policy({ allowed_hosts: [{ known_hosts: kh }] }))).to.equal(undefined);
        const a = await sshLogin(w(), guest, w().sshd, w().keys.ecdsa);
        expect(a.code, a.stderr).to.equal(0);
        const b = await sshLogin(w(), guest, w().other, w().keys.ecdsa);
        expect(b.code).to.equal(255);
      });

      it('signing_namespaces [git] signs namespace git, refuses namespace file', async () => {
        expect(await harness.setPolicy(policy({ signing_namespaces: ['git'] }))).to.equal(undefined);
        const dir = tempDir('shed-sig');
        const file = path.join(dir, 'x.txt');
        fs.writeFileSync(file, 'x\n');
        const git = await client(w(), guest, 'ssh-keygen', ['-Y', 'sign', '-f', w().keys.ed25519.pubFile, '-n', 'git', file]);
        expect(git.code, git.stderr).to.equal(0);
        fs.rmSync(`${file}.sig`);
        const other = await client(w(), guest, 'ssh-keygen', ['-Y', 'sign', '-f', w().keys.ed25519.pubFile, '-n', 'file', file]);
        expect(other.code).not.to.equal(0);
        expect(fs.existsSync(`${file}.sig`)).to.equal(false);
        expect(guest.output()).to.include('SIGNING_NAMESPACE_NOT_ALLOWED');
        expectNoKeyMaterial(w(), [guest.output(), ...hostLog.lines, JSON.stringify((harness.audit as MemoryAudit).entries)]);
      });
    });
  }

  describe('ssh-agent against a host that does not know bind', function () {
    this.timeout(30_000);
    let harness: Harness;
    let guest: Guest;

    before(async () => {
      const real = createSshHandler({ log: memoryLogger(), env: {} });
      // The handler of an older shed-host-agent: everything but bind.
      const old: NamespaceHandler = {
        namespace: 'ssh-agent',
        handle: (op, payload, ctx) => (op === 'bind' ? Promise.reject(unknownOperation('ssh-agent', op)) : real.handle(op, payload, ctx)),
        close: () => real.close!(),
      };
      harness = await startDirectBroker({ policy: { version: 1, sheds: { [SHED]: { ssh: { mode: 'agent-forward', agent_socket: w().agent.sock } } } }, handlers: [old] });
      guest = await startGuest(tempDir('shed-g'), harness.publishUrl(SHED));
    });

    after(async () => {
      await guest?.stop();
      await harness?.stop();
    });

    it('ssh still logs in', async () => {
      const r = await sshLogin(w(), guest, w().sshd, w().keys.ed25519);
      expect(r.code, r.stderr).to.equal(0);
      const binds = (harness.audit as MemoryAudit).entries.filter((e) => e.op === 'bind');
      expect(binds.length).to.be.greaterThan(0);
      expect(binds.every((e) => e.result === 'denied')).to.equal(true);
    });
  });
});
