import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { createGitHandler } from '../../host-broker/git/handler.js';
import { formatAnswer, parseQuery, runHelper, USAGE } from '../../guest-services/git-credential/helper.js';
import type { MemoryAudit } from '../../host-broker/audit/audit.js';
import { memoryLogger } from '../../protocol/log.js';
import { VERSION } from '../../protocol/version.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { bundleGitCredentialShed, gitGuestBinDir } from '../support/git-http.js';
import { runCaptured } from '../support/one-shot.js';
import { run, tempDir } from '../support/procs.js';

const helper = (argv: string[], options: Parameters<typeof runCaptured>[2] = {}) => runCaptured(runHelper, argv, options);

/** No answer for git: exit 0, nothing on stdout, exactly one line on stderr. */
function noAnswer(r: { code: number; stdout: string; stderr: string }, contains: string) {
  expect(r.code).to.equal(0);
  expect(r.stdout).to.equal('');
  expect(r.stderr).to.match(/^git-credential-shed: [^\n]+\n$/);
  expect(r.stderr).to.contain(contains);
}

describe('git-credential-shed: reading git\'s description', () => {
  it('takes protocol, host and path up to the blank line; a later key wins; other keys are ignored', () => {
    expect(parseQuery('protocol=https\nhost=github.com\npath=acme/app.git\nusername=bob\ncapability[]=authtype\n\nprotocol=http\n')).to.deep.equal({
      query: { protocol: 'https', host: 'github.com', path: 'acme/app.git' },
    });
    expect(parseQuery('protocol=http\nprotocol=https\nhost=a\nhost=b:8443')).to.deep.equal({ query: { protocol: 'https', host: 'b:8443' } });
    expect(parseQuery('protocol=https\r\nhost=h\r\n\r\n')).to.deep.equal({ query: { protocol: 'https', host: 'h' } });
    expect(parseQuery('protocol=https\nhost=h\npath=\n')).to.deep.equal({ query: { protocol: 'https', host: 'h' } });
    expect(parseQuery('protocol=https\nhost=h\npassword=a=b\n')).to.deep.equal({ query: { protocol: 'https', host: 'h' } });
  });

  it('says what is wrong with anything else', () => {
    const problem = (input: string) => (parseQuery(input) as { problem: string }).problem;
    expect(problem('')).to.equal('get needs protocol= and host= on stdin (git gives them); neither was there');
    expect(problem('host=h\n')).to.equal('get needs protocol= and host= on stdin (git gives them); no protocol');
    expect(problem('protocol=https\n\nhost=h\n')).to.contain('no host');
    expect(problem('protocol=https\nhost=h\nnonsense\n')).to.equal('a line of its input is not key=value: "nonsense"');
    expect(problem('=x\n')).to.contain('not key=value');
    expect(problem('protocol=https\nhost=h\0\n')).to.contain('NUL');
    expect(problem(`protocol=https\nhost=h\npath=${'a'.repeat(70_000)}\n`)).to.contain('over 64 KiB');
    expect(problem(`protocol=https\nhost=${'h'.repeat(300)}\n`)).to.contain('too long');
    expect(problem(`protocol=https\nhost=h\npath=${'p/'.repeat(1100)}\n`)).to.contain('over 2048');
  });

  it('answers only with values that cannot forge an attribute', () => {
    expect(formatAnswer({ username: 'u', password: 'p=q' })).to.equal('username=u\npassword=p=q\n');
    expect(formatAnswer({ username: 'u', password: 'p', password_expiry_utc: '1700000000', authtype: 'Bearer' })).to.equal('username=u\npassword=p\npassword_expiry_utc=1700000000\nauthtype=Bearer\n');
    expect(formatAnswer({ username: 'u', password: 'p\nusername=mallory' })).to.equal(undefined);
    expect(formatAnswer({ username: 'u\r', password: 'p' })).to.equal(undefined);
    expect(formatAnswer({ username: 'u', password: 'p\0' })).to.equal(undefined);
  });
});

describe('git-credential-shed (helper protocol, against the real git-credentials handler)', () => {
  let h: Harness;
  let env: Record<string, string>;
  const TOKEN = 'tok-SECRET-0d9a1c';

  before(async () => {
    const bin = tempDir('shed-ghb');
    const print = path.join(bin, 'print-token');
    fs.writeFileSync(print, `#!/bin/sh\necho '${TOKEN}'\n`, { mode: 0o755 });
    const sources = { 'git.example.com': { command: [print], username: 'ci' }, 'plain.example.com': { command: [print] } };
    h = await startDirectBroker({
      policy: { version: 1, sheds: { alpha: { git: { allowed: ['git.example.com/acme/*', 'plain.example.com'], sources } }, beta: { git: { enabled: false } } } },
      handlers: [createGitHandler({ log: memoryLogger('test'), env: { PATH: '/usr/bin:/bin' } })],
    });
    env = { SHED_PUBLISH_URL: h.publishUrl('alpha') };
  });
  after(() => h.stop());

  it('get prints username= and password= for an allowed repository', async () => {
    const r = await helper(['get'], { stdin: 'protocol=https\nhost=git.example.com\npath=acme/app.git\n\n', env });
    expect(r).to.deep.include({ code: 0, stdout: `username=ci\npassword=${TOKEN}\n`, stderr: '' });
    const plain = await helper(['get'], { stdin: 'protocol=https\nhost=plain.example.com\n\n', env });
    expect(plain.stdout).to.equal(`username=x-access-token\npassword=${TOKEN}\n`);
  });

  it('a repository the policy does not allow: no answer, the host\'s reason on one line', async () => {
    noAnswer(await helper(['get'], { stdin: 'protocol=https\nhost=git.example.com\npath=other/app.git\n', env }), 'git.allowed covers only git.example.com/acme/* on git.example.com, not other/app.git; change git.allowed in the host policy if it should have them (GIT_HOST_NOT_ALLOWED)');
    noAnswer(await helper(['get'], { stdin: 'protocol=http\nhost=plain.example.com\n', env }), 'plain http is refused');
    noAnswer(await helper(['get'], { stdin: 'protocol=https\nhost=git.example.com\npath=acme/../x\n', env }), 'INVALID_REQUEST');
    noAnswer(await helper(['get'], { stdin: 'protocol=https\nhost=git.example.com\npath=acme/app\n', env: { SHED_PUBLISH_URL: h.publishUrl('beta') } }), 'NAMESPACE_DISABLED');
  });

  it('input it cannot use: no answer, one line saying why, and the host is not asked', async () => {
    const audited = (h.audit as MemoryAudit).entries.length;
    noAnswer(await helper(['get'], { stdin: '', env }), 'get needs protocol= and host= on stdin');
    noAnswer(await helper(['get'], { stdin: 'protocol=https\n\x1b[2Jhost\n', env }), 'not key=value: "?[2Jhost"');
    expect((h.audit as MemoryAudit).entries.length).to.equal(audited);
  });

  it('no broker, or a bad publish URL: no answer and what to fix', async () => {
    noAnswer(await helper(['get'], { stdin: 'protocol=https\nhost=h\n', env: { SHED_PUBLISH_URL: `unix:${path.join(tempDir('shed-none'), 'gone.sock')}` } }), 'cannot reach');
    noAnswer(await helper(['get'], { stdin: 'protocol=https\nhost=h\n', env: { SHED_PUBLISH_URL: 'ftp://nowhere' } }), 'fix SHED_PUBLISH_URL');
  });

  it('store and erase read what git sends, do nothing and exit 0', async () => {
    for (const action of ['store', 'erase']) {
      const r = await helper([action], { stdin: `protocol=https\nhost=git.example.com\nusername=mallory\npassword=planted\n\n`, env });
      expect(r).to.deep.equal({ code: 0, stdout: '', stderr: '', stdinRead: true });
      expect((await helper([action], { tty: true, env })).stdinRead).to.equal(false);
    }
  });

  it('bundles to one file that pulls in only the bus client (with its HTTP/1.1 client and guest.env reader) and zod/mini, and runs', async function () {
    this.timeout(20_000);
    const { file, inputs } = await bundleGitCredentialShed();
    const own = inputs.filter((i) => !i.startsWith('node_modules/'));
    expect(own.sort()).to.deep.equal([
      'guest-services/bus-client.ts',
      'guest-services/git-credential/helper.ts',
      'guest-services/git-credential/main.ts',
      // The publish URL's fallback, /etc/shed-extensions/guest.env (the bus client reads it).
      'guest-services/guest-env.ts',
      'guest-services/http1.ts',
      // The I/O and run the one-shot helpers share.
      'guest-services/one-shot.ts',
      'protocol/compiled.ts',
      'protocol/envelope.ts',
      'protocol/git-credentials.ts',
      'protocol/http1.ts',
      'protocol/version.ts',
    ]);
    const packages = new Set(inputs.filter((i) => i.startsWith('node_modules/')).map((i) => i.split('/').slice(1, 3).join('/')));
    expect([...packages].every((p) => p === 'zod/v4' || p === 'zod/mini'), [...packages].join(', ')).to.equal(true);
    expect(inputs.some((i) => i.includes('zod/v4/classic'))).to.equal(false);
    expect(fs.readFileSync(file, 'utf8')).not.to.include('ZodCompileUnsupportedError');
    const bin = gitGuestBinDir(file);
    const r = await run(`${bin}/git-credential-shed`, ['get'], { input: 'protocol=https\nhost=git.example.com\npath=acme/app.git\n\n', env: { PATH: '/usr/bin:/bin', ...env } });
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal(`username=ci\npassword=${TOKEN}\n`);
  });

  it('an unknown or missing action: no answer, one line, exit 0; version and help', async () => {
    noAnswer(await helper(['capability'], { stdin: 'x=y\n' }), 'unknown action "capability"');
    noAnswer(await helper([]), 'no action given');
    expect(await helper(['version'])).to.deep.include({ code: 0, stdout: `git-credential-shed (shed-extensions) ${VERSION}\n` });
    expect(await helper(['--help'])).to.deep.include({ code: 0, stdout: USAGE });
  });
});
