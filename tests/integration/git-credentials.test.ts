/**
 * git-credentials end to end with real git: bare repositories behind
 * `git http-backend` with basic auth on loopback, a "host" whose git keeps
 * the token in credential-store, a "guest" whose system gitconfig is the
 * one install-guest writes (credential.helper=shed, credential.useHttpPath)
 * and whose PATH has git-credential-shed bundled as a guest ships it, and
 * the broker between them on a direct socket or through shed's bus.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import type { MemoryAudit } from '../../host-broker/audit/audit.js';
import { createGitHandler } from '../../host-broker/git/handler.js';
import { withGitCredentialSettings } from '../../guest-services/status/gitconfig.js';
import { memoryLogger } from '../../protocol/log.js';
import { startShedBroker } from '../support/bus-emulator.js';
import { bundleGitCredentialShed, git, gitEnv, gitGuestBinDir, startGitServer, storeHostCredential, type GitServer } from '../support/git-http.js';
import { startDirectBroker, type Harness, type TransportKind } from '../support/harness.js';
import { auditOf, startBrokerProcess } from '../support/hostile.js';
import { run, tempDir, waitFor } from '../support/procs.js';

const TOKEN = 'ghp-SECRET-8c1d5e0f3a94';
const CI_TOKEN = 'cmd-SECRET-2b7e19c4d6aa';
const TRANSPORTS: TransportKind[] = ['direct', 'shed'];

/** Every file under `dir`, as text. */
function allText(dir: string): string {
  let out = '';
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out += fs.readFileSync(path.join(entry.parentPath, entry.name), 'latin1');
  }
  return out;
}

/** A guest: its own HOME, the system gitconfig install-guest writes, git-credential-shed on PATH, the shed's publish URL. */
function guestEnvironment(guestBin: string, publishUrl: string): { home: string; env: Record<string, string> } {
  const home = tempDir('shed-gguest');
  const system = path.join(home, 'etc-gitconfig');
  fs.writeFileSync(system, withGitCredentialSettings(undefined));
  return { home, env: gitEnv(home, { PATH: `${guestBin}:/usr/bin:/bin`, SHED_PUBLISH_URL: publishUrl }, system) };
}

describe('git-credentials end to end (git http-backend, git credential-store, git-credential-shed)', function () {
  this.timeout(90_000);
  let server: GitServer;
  let guestBin: string;

  before(async function () {
    this.timeout(60_000);
    server = await startGitServer({ users: { alice: TOKEN, ci: CI_TOKEN }, repos: ['acme/app.git', 'acme/lib.git', 'other/secret.git'] });
    guestBin = gitGuestBinDir((await bundleGitCredentialShed()).file);
  });

  after(async () => {
    await server?.stop();
  });

  for (const kind of TRANSPORTS) {
    describe(`over the ${kind} transport`, () => {
      let h: Harness;
      let hostHome: string;
      let guest: { home: string; env: Record<string, string> };
      const log = memoryLogger('shed-host-agent');
      const policy = (allowed: string[]) => ({ version: 1, sheds: { alpha: { git: { allowed } } } });
      const entries = () => (h.audit as MemoryAudit).entries;
      const clone = (repo: string, dest = path.join(tempDir('shed-clone'), 'w')) =>
        run('git', ['clone', '-q', `${server.base}/${repo}`, dest], { env: guest.env, timeoutMs: 60_000 }).then((r) => ({ ...r, dest }));
      const noSecretAnywhere = () => {
        const all = `${log.lines.join('\n')}\n${JSON.stringify(entries())}`;
        expect(all).to.not.contain(TOKEN);
        expect(all).to.not.contain(CI_TOKEN);
      };

      before(async () => {
        hostHome = tempDir('shed-ghost');
        await storeHostCredential(hostHome, { protocol: 'http', host: server.host, username: 'alice', password: TOKEN });
        const handler = createGitHandler({ log, env: gitEnv(hostHome) });
        h = await (kind === 'direct' ? startDirectBroker : startShedBroker)({ policy: policy([`http://${server.host}/acme/*`]), handlers: [handler], log });
        guest = guestEnvironment(guestBin, h.publishUrl('alpha'));
      });

      after(async () => {
        await h?.stop();
      });

      beforeEach(async () => {
        entries().length = 0;
        expect(await h.setPolicy(policy([`http://${server.host}/acme/*`]))).to.equal(undefined);
      });

      it('git clone and git push succeed with a token that lives only in the host\'s credential-store', async () => {
        const cloned = await clone('acme/app.git');
        expect(cloned.code, cloned.stderr).to.equal(0);
        expect(fs.readFileSync(path.join(cloned.dest, 'README'), 'utf8')).to.equal('acme/app.git\n');

        fs.writeFileSync(path.join(cloned.dest, 'CHANGE'), `from the guest over ${kind}\n`);
        await git(['add', 'CHANGE'], guest.env, { cwd: cloned.dest });
        await git(['commit', '-q', '-m', 'guest change'], guest.env, { cwd: cloned.dest });
        const pushed = await run('git', ['push', '-q', 'origin', 'main'], { env: guest.env, cwd: cloned.dest, timeoutMs: 60_000 });
        expect(pushed.code, pushed.stderr).to.equal(0);
        expect(await server.head('acme/app.git')).to.equal((await git(['rev-parse', 'HEAD'], guest.env, { cwd: cloned.dest })).trim());

        // The server saw alice, with the host's token, for the clone and the push.
        const served = server.requests.filter((r) => r.user === 'alice' && r.url.startsWith('/acme/app.git/'));
        expect(served.some((r) => r.url.includes('git-upload-pack'))).to.equal(true);
        expect(served.some((r) => r.url.includes('git-receive-pack'))).to.equal(true);

        expect(entries().length).to.be.at.least(2);
        for (const e of entries()) {
          expect(e).to.include({ shed: 'alpha', ns: 'git-credentials', op: 'get', result: 'ok', detail: `http://${server.host}/acme/app.git via git credential fill` });
        }
        noSecretAnywhere();
        // git kept nothing in the guest: its store and erase go nowhere.
        expect(allText(guest.home)).to.not.contain(TOKEN);
      });

      it('a repository outside git.allowed gets no credentials: git\'s own auth error, and the audit says why with the rule', async () => {
        const before = server.requests.length;
        const r = await clone('other/secret.git');
        expect(r.code).to.equal(128);
        expect(r.stderr).to.contain(`fatal: could not read Username for '${server.base}/other/secret.git': terminal prompts disabled`);
        expect(r.stderr).to.contain(`git-credential-shed: no git credentials for ${server.base}/other/secret.git in shed alpha: git.allowed covers only `)
          .and.contain('(GIT_HOST_NOT_ALLOWED)\n');
        // Only the anonymous first try reached the server.
        expect(server.requests.slice(before).every((q) => q.user === undefined && q.status === 401)).to.equal(true);
        const denied = entries().at(-1)!;
        expect(denied).to.include({ ns: 'git-credentials', op: 'get', result: 'denied' });
        expect(denied.detail).to.equal(`http://${server.host}/other/secret.git: git.allowed covers only http://${server.host}/acme/* on ${server.host}, not other/secret.git (GIT_HOST_NOT_ALLOWED)`);
        noSecretAnywhere();
      });

      it('plain http is refused unless the policy names it for that host', async () => {
        expect(await h.setPolicy(policy([`${server.host}/acme/*`]))).to.equal(undefined);
        const r = await clone('acme/app.git');
        expect(r.code).to.equal(128);
        expect(r.stderr).to.contain('terminal prompts disabled').and.contain('GIT_HOST_NOT_ALLOWED');
        const denied = entries().at(-1)!;
        expect(denied).to.include({ result: 'denied' });
        expect(denied.detail).to.contain(`plain http is refused for ${server.host}: git.allowed names it for https only (${server.host}/acme/*)`);
        noSecretAnywhere();
      });
    });
  }

  describe('a command source, in the broker as it runs (shed-host-agent run)', () => {
    it('is used instead of the host\'s git, and its token is in no log, audit or state file', async () => {
      const bin = tempDir('shed-gsrc');
      const script = path.join(bin, 'print-token');
      fs.writeFileSync(script, `#!/bin/sh\nprintf '%s\\n' '${CI_TOKEN}'\n`, { mode: 0o755 });
      // The host's own git has alice's token: the source must win.
      const hostHome = tempDir('shed-ghost');
      await storeHostCredential(hostHome, { protocol: 'http', host: server.host, username: 'alice', password: TOKEN });
      const broker = await startBrokerProcess({
        version: 1,
        sheds: { beta: { git: { allowed: [`http://${server.host}/acme/*`], sources: { [server.host]: { command: [script], username: 'ci' } } } } },
      }, { GIT_CONFIG_GLOBAL: path.join(hostHome, '.gitconfig'), SHED_LOG_LEVEL: 'debug' });
      try {
        const guest = guestEnvironment(guestBin, `unix:${broker.socketPath('beta')}`);
        const dest = path.join(tempDir('shed-clone'), 'w');
        const before = server.requests.length;
        const r = await run('git', ['clone', '-q', `${server.base}/acme/lib.git`, dest], { env: guest.env, timeoutMs: 60_000 });
        expect(r.code, r.stderr).to.equal(0);
        expect(server.requests.slice(before).filter((q) => q.user !== undefined).every((q) => q.user === 'ci')).to.equal(true);
        const lines = await waitFor(() => {
          const got = auditOf(broker.auditDir, 'beta');
          return got.length ? got : undefined;
        }, 5000, 'the audit line');
        expect(lines[0]).to.include({ ns: 'git-credentials', op: 'get', result: 'ok', detail: `http://${server.host}/acme/lib.git via git.sources.${server.host} command` });
        for (const secret of [CI_TOKEN, TOKEN]) {
          expect(broker.stderr(), 'the broker log').to.not.contain(secret);
          expect(allText(broker.dir), 'audit, state and config files').to.not.contain(secret);
          expect(allText(guest.home), 'the guest').to.not.contain(secret);
        }
      } finally {
        expect(await broker.stop()).to.equal(0);
      }
    });
  });

  describe('the host never prompts', () => {
    let h: Harness;
    let hostHome: string;
    let marks: string;
    const log = memoryLogger('shed-host-agent');

    before(async () => {
      hostHome = tempDir('shed-gprompt');
      marks = path.join(hostHome, 'marks');
      fs.mkdirSync(marks);
      const bin = path.join(hostHome, 'bin');
      fs.mkdirSync(bin);
      // Anything that would ask a person leaves a mark (and would answer, so a prompt would show as a success).
      const askpass = path.join(bin, 'askpass');
      fs.writeFileSync(askpass, `#!/bin/sh\necho "$0 $*" >> '${marks}/asked'\necho prompted-SECRET\n`, { mode: 0o755 });
      // The host's helper records what git gave it, and whether it had a terminal, and has nothing.
      const recorder = path.join(bin, 'git-credential-recorder');
      fs.writeFileSync(recorder, `#!/bin/sh\n[ "$1" = get ] || exit 0\ncat > '${marks}/input'\nif (: </dev/tty) 2>/dev/null; then echo tty > '${marks}/tty'; else echo no-tty > '${marks}/tty'; fi\nawk '{print $6}' /proc/$$/stat > '${marks}/session'\n`, { mode: 0o755 });
      const env = gitEnv(hostHome, { PATH: `${bin}:/usr/bin:/bin`, GIT_ASKPASS: askpass, SSH_ASKPASS: askpass, SSH_ASKPASS_REQUIRE: 'force', DISPLAY: ':0' });
      delete (env as Record<string, string | undefined>).GIT_TERMINAL_PROMPT;
      await git(['config', '--global', 'core.askPass', askpass], env);
      await git(['config', '--global', 'credential.helper', 'recorder'], env);
      h = await startDirectBroker({ policy: { version: 1, sheds: { gamma: { git: { allowed: [`http://${server.host}`] } } } }, handlers: [createGitHandler({ log, env })], log });
    });

    after(async () => {
      await h?.stop();
    });

    it('a host with no credentials answers "none" at once: no askpass, no terminal, only protocol and host on the helper\'s stdin', async () => {
      const guest = guestEnvironment(guestBin, h.publishUrl('gamma'));
      const started = Date.now();
      const r = await run('git-credential-shed', ['get'], { env: guest.env, input: `protocol=http\nhost=${server.host}\npath=acme/app.git\nusername=mallory\n\n` });
      const elapsed = Date.now() - started;
      expect(r.code).to.equal(0);
      expect(r.stdout).to.equal('');
      expect(r.stderr).to.match(/^git-credential-shed: the host has no git credentials for http:\/\/127\.0\.0\.1:\d+; store them on the host .*\(CREDENTIALS_NOT_FOUND\)\n$/);
      expect(elapsed).to.be.below(3000);
      expect(fs.existsSync(path.join(marks, 'asked')), 'an askpass program was run').to.equal(false);
      expect(fs.readFileSync(path.join(marks, 'input'), 'utf8')).to.equal(`protocol=http\nhost=${server.host}\n`);
      expect(fs.readFileSync(path.join(marks, 'tty'), 'utf8')).to.equal('no-tty\n');
      // In a session of its own: no terminal of the broker's to open, whatever the broker has.
      const session = (pid: string) => fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')[3];
      expect(fs.readFileSync(path.join(marks, 'session'), 'utf8').trim()).to.not.equal(session('self'));
      expect((h.audit as MemoryAudit).entries.at(-1)).to.include({ result: 'error', detail: `http://${server.host}/acme/app.git: no credentials (git credential fill)` });

      // And git in the guest fails the way it does with no credentials anywhere.
      const clone = await run('git', ['clone', '-q', `${server.base}/acme/app.git`, path.join(tempDir('shed-clone'), 'w')], { env: guest.env, timeoutMs: 30_000 });
      expect(clone.code).to.equal(128);
      expect(clone.stderr).to.contain('terminal prompts disabled');
      expect(fs.existsSync(path.join(marks, 'asked'))).to.equal(false);
      expect(log.lines.join('\n')).to.not.contain('prompted-SECRET');
    });

    it('a host helper that hangs is killed at the timeout, with what it started, and the guest gets no answer', async () => {
      const pidFile = path.join(marks, 'sleeper.pid');
      const hang = path.join(hostHome, 'bin', 'git-credential-hang');
      fs.writeFileSync(hang, `#!/bin/sh\nsleep 60 &\necho $! > '${pidFile}'\nwait\n`, { mode: 0o755 });
      const env = gitEnv(hostHome, { PATH: `${path.join(hostHome, 'bin')}:/usr/bin:/bin` });
      const hangLog = memoryLogger('shed-host-agent');
      const hung = await startDirectBroker({
        policy: { version: 1, sheds: { gamma: { git: { allowed: [`http://${server.host}`] } } } },
        handlers: [createGitHandler({ log: hangLog, env: { ...env, GIT_CONFIG_PARAMETERS: "'credential.helper'='hang'" }, timeoutMs: 1500 })],
        log: hangLog,
      });
      try {
        const guest = guestEnvironment(guestBin, hung.publishUrl('gamma'));
        const started = Date.now();
        const r = await run('git-credential-shed', ['get'], { env: guest.env, input: `protocol=http\nhost=${server.host}\n\n` });
        const elapsed = Date.now() - started;
        expect(r.code).to.equal(0);
        expect(r.stdout).to.equal('');
        expect(r.stderr).to.contain('HELPER_FAILED').and.contain('git credential fill');
        expect(elapsed).to.be.within(1400, 6000);
        expect(hangLog.lines.join('\n')).to.contain('git credential fill did not finish within 1.5 s and was killed');
        const pid = Number(fs.readFileSync(pidFile, 'utf8'));
        await waitFor(() => {
          try {
            process.kill(pid, 0);
            return false;
          } catch {
            return true;
          }
        }, 5000, 'the helper\'s sleep to be killed with it');
      } finally {
        await hung.stop();
      }
    });
  });
});
