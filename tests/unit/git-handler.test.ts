/**
 * The git-credentials handler through the dispatcher (a broker on a direct
 * socket), with real host programs: source commands that misbehave, the
 * host's real git with an empty config, the approval gate.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import type { MemoryAudit } from '../../host-broker/audit/audit.js';
import { createGitHandler, parseCredentialLines } from '../../host-broker/git/handler.js';
import { quietEnvironment } from '../../host-broker/git/host-process.js';
import { BusClient, BusError } from '../../guest-services/bus-client.js';
import { memoryLogger } from '../../protocol/log.js';
import { gitEnv } from '../support/git-http.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { tempDir } from '../support/procs.js';

const TOKEN = 'src-SECRET-71be03f2';

describe('git-credentials handler', () => {
  let h: Harness;
  let client: BusClient;
  let dir: string;
  const log = memoryLogger('shed-host-agent');
  const script = (name: string, body: string) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return file;
  };
  const get = (host: string, extra: Record<string, unknown> = {}) =>
    client.publish('git-credentials', { operation: 'get', protocol: 'https', host, path: 'acme/app.git', ...extra }).then((a) => a, (e: BusError) => e);

  before(async () => {
    dir = tempDir('shed-gh');
    const home = path.join(dir, 'home');
    fs.mkdirSync(home);
    const sources = {
      'ok.example': { command: [script('ok', `echo '  ${TOKEN}  '`)] },
      'two-lines.example': { command: [script('two', `printf '${TOKEN}\\nsecond\\n'`)] },
      'empty.example': { command: [script('empty', 'exit 0')] },
      'fails.example': { command: [script('fails', `echo '${TOKEN}'; echo 'gh: not logged in; run gh auth login' >&2; exit 4`)] },
      'missing.example': { command: [path.join(dir, 'no-such-program')] },
      'flood.example': { command: [script('flood', 'yes x | head -c 200000')] },
    };
    const allowed = [...Object.keys(sources), 'nothing.example'];
    h = await startDirectBroker({
      policy: {
        version: 1,
        sheds: {
          alpha: { git: { allowed, sources } },
          gated: { git: { allowed, sources }, approval: { gate: 'command', command: [script('approve', `[ "$SHED_GIT_URL" = https://ok.example/acme/app.git ] && [ "$SHED_NAMESPACE" = git-credentials ]`)], policy: 'per-request', applies_to: ['git-credentials'] } },
          refused: { git: { allowed, sources }, approval: { gate: 'command', command: [script('refuse', 'exit 1')], policy: 'per-request', applies_to: ['git-credentials'] } },
        },
      },
      handlers: [createGitHandler({ log, env: gitEnv(home), timeoutMs: 3000 })],
      log,
    });
    client = new BusClient({ publishUrl: h.publishUrl('alpha'), deadlineMs: 10_000 });
  });

  after(async () => {
    client?.close();
    await h?.stop();
  });

  afterEach(() => {
    expect(log.lines.join('\n'), 'the host log').to.not.contain(TOKEN);
    expect(JSON.stringify((h.audit as MemoryAudit).entries), 'the audit').to.not.contain(TOKEN);
  });

  it('a source\'s one line, trimmed, is the password, with the default username', async () => {
    expect(await get('ok.example')).to.deep.equal({ username: 'x-access-token', password: TOKEN });
  });

  it('a source that prints two lines, nothing, fails, is missing or floods: HELPER_FAILED, and the why in the host log only', async () => {
    const cases: Array<[string, string]> = [
      ['two-lines.example', 'printed more than one line'],
      ['empty.example', 'printed nothing'],
      ['fails.example', 'exited 4: gh: not logged in; run gh auth login'],
      ['missing.example', 'was not found'],
      ['flood.example', 'printed more than 64 KiB and was killed'],
    ];
    for (const [host, why] of cases) {
      const err = await get(host);
      expect(err, host).to.be.instanceOf(BusError);
      expect(err).to.have.property('code', 'HELPER_FAILED');
      expect((err as BusError).message).to.contain(`the host's git.sources.${host} command failed`).and.contain('see the shed-host-agent log on the host');
      expect(log.lines.some((l) => l.includes(`git.sources.${host} command`) && l.includes(why)), `${host}: ${why}\n${log.lines.join('\n')}`).to.equal(true);
      expect((h.audit as MemoryAudit).entries.at(-1)).to.include({ result: 'error' });
    }
  });

  it('the host\'s git with no helper at all: CREDENTIALS_NOT_FOUND, at once', async () => {
    const started = Date.now();
    const err = await get('nothing.example');
    expect(err).to.have.property('code', 'CREDENTIALS_NOT_FOUND');
    expect(Date.now() - started).to.be.below(2000);
    expect((h.audit as MemoryAudit).entries.at(-1)).to.include({ result: 'error', detail: 'https://nothing.example/acme/app.git: no credentials (git credential fill)' });
  });

  it('malformed requests are INVALID_REQUEST, before any program runs', async () => {
    for (const payload of [{ protocol: 'https' }, { protocol: 'https', host: 42 }, { protocol: 'https', host: 'ok.example', path: 'a/../b' }, { protocol: 'https', host: 'ok..example' }]) {
      const err = await client.publish('git-credentials', { operation: 'get', ...payload }).then(() => undefined, (e: BusError) => e);
      expect(err, JSON.stringify(payload)).to.have.property('code', 'INVALID_REQUEST');
    }
    const unknown = await client.publish('git-credentials', { operation: 'store', protocol: 'https', host: 'ok.example' }).then(() => undefined, (e: BusError) => e);
    expect(unknown).to.have.property('code', 'UNKNOWN_OPERATION');
  });

  it('status counts the allowed entries and sources', async () => {
    expect(await client.publish('git-credentials', { operation: 'status' })).to.deep.equal({ connected: true, allowed_count: 7, source_count: 6 });
  });

  it('approval.applies_to git-credentials asks the gate, with the URL in SHED_GIT_URL', async () => {
    const gated = new BusClient({ publishUrl: h.publishUrl('gated'), deadlineMs: 10_000 });
    const refused = new BusClient({ publishUrl: h.publishUrl('refused'), deadlineMs: 10_000 });
    try {
      expect(await gated.publish('git-credentials', { operation: 'get', protocol: 'https', host: 'ok.example', path: 'acme/app.git' })).to.include({ password: TOKEN });
      expect((h.audit as MemoryAudit).entries.at(-1)).to.include({ shed: 'gated', approval: 'prompt', result: 'ok' });
      const err = await refused.publish('git-credentials', { operation: 'get', protocol: 'https', host: 'ok.example', path: 'acme/app.git' }).then(() => undefined, (e: BusError) => e);
      expect(err).to.have.property('code', 'APPROVAL_DENIED');
      expect((h.audit as MemoryAudit).entries.at(-1)).to.include({ shed: 'refused', approval: 'denied', result: 'denied' });
    } finally {
      gated.close();
      refused.close();
    }
  });

  it('host programs run with every prompt off and no repository of the broker\'s', () => {
    const env = quietEnvironment({ PATH: '/bin', GIT_ASKPASS: '/x', SSH_ASKPASS: '/y', GIT_DIR: '/repo/.git', GIT_TRACE: '1', GIT_TRACE_CURL: '1', HOME: '/h' });
    expect(env).to.deep.equal({ PATH: '/bin', HOME: '/h', GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: '', SSH_ASKPASS: '', SSH_ASKPASS_REQUIRE: 'never', GCM_INTERACTIVE: 'never', LC_ALL: 'C' });
    expect([...parseCredentialLines('protocol=https\nusername=a\npassword=b=c\n\nusername=z\n')]).to.deep.equal([['protocol', 'https'], ['username', 'a'], ['password', 'b=c']]);
  });
});
