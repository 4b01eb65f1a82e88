import fs from 'node:fs';
import { expect } from 'chai';
import { BrokerError, unknownOperation, type NamespaceHandler } from '../../host-broker/handler.js';
import { runHelper, USAGE } from '../../guest-services/docker-credential/helper.js';
import { VERSION } from '../../protocol/version.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { bundleDockerCredentialShed, guestBinDir } from '../support/registry.js';
import { runCaptured } from '../support/one-shot.js';
import { run, tempDir } from '../support/procs.js';

const NOT_FOUND = 'credentials not found in native keychain\n';

const helper = (argv: string[], options: Parameters<typeof runCaptured>[2] = {}) => runCaptured(runHelper, argv, options);

/** A docker-credentials host whose answer the server URL picks: `CODE.example` → that error; `empty.example` → empty credentials. */
const scripted: NamespaceHandler = {
  namespace: 'docker-credentials',
  async handle(operation, payload) {
    if (operation === 'list') return { registries: { 'ghcr.io': 'u' } };
    if (operation !== 'get') throw unknownOperation('docker-credentials', operation);
    const url = String(payload.server_url);
    if (url === 'ghcr.io') return { server_url: url, username: 'u', secret: 's3' };
    if (url === 'empty.example') return { server_url: url, username: '', secret: '' };
    if (url === 'weird.example') return { something: 'else' };
    throw new BrokerError(url.split('.')[0]!, `host says ${url}`);
  },
};

describe('docker-credential-shed (helper protocol)', () => {
  let h: Harness;
  let env: Record<string, string>;

  before(async () => {
    h = await startDirectBroker({
      policy: { version: 1, sheds: { alpha: {}, beta: { docker: { enabled: false } } } },
      handlers: [scripted],
    });
    env = { SHED_PUBLISH_URL: h.publishUrl('alpha') };
  });
  after(() => h.stop());

  it('get prints Docker\'s JSON for the URL it was given', async () => {
    const r = await helper(['get'], { stdin: 'ghcr.io\n', env });
    expect(r).to.deep.include({ code: 0, stderr: '' });
    expect(JSON.parse(r.stdout)).to.deep.equal({ ServerURL: 'ghcr.io', Username: 'u', Secret: 's3' });
  });

  for (const code of ['CREDENTIALS_NOT_FOUND', 'REGISTRY_NOT_ALLOWED']) {
    it(`${code} → exactly the not-found text on stdout, the code on stderr`, async () => {
      const r = await helper(['get'], { stdin: `${code}.example`, env });
      expect(r.code).to.equal(1);
      expect(r.stdout).to.equal(NOT_FOUND);
      expect(r.stderr).to.contain(code).and.contain(`host says ${code}.example`);
    });
  }

  it('a shed whose policy turns docker-credentials off goes anonymous too, saying why', async () => {
    const r = await helper(['get'], { stdin: 'ghcr.io', env: { SHED_PUBLISH_URL: h.publishUrl('beta') } });
    expect(r.code).to.equal(1);
    expect(r.stdout).to.equal(NOT_FOUND);
    expect(r.stderr).to.contain('NAMESPACE_DISABLED');
    const list = await helper(['list'], { env: { SHED_PUBLISH_URL: h.publishUrl('beta') } });
    expect(list).to.deep.include({ code: 0, stdout: '{}\n' });
  });

  it('empty credentials count as none', async () => {
    const r = await helper(['get'], { stdin: 'empty.example', env });
    expect(r).to.deep.include({ code: 1, stdout: NOT_FOUND });
  });

  for (const code of ['HELPER_FAILED', 'INTERNAL_ERROR']) {
    it(`${code} is a hard failure: the error on stdout, never the not-found text`, async () => {
      const r = await helper(['get'], { stdin: `${code}.example`, env });
      expect(r.code).to.equal(1);
      expect(r.stdout).to.not.equal(NOT_FOUND);
      expect(r.stdout).to.contain(code).and.match(/\n$/);
      expect(r.stdout.trim()).to.not.contain('\n');
      expect(r.stderr).to.contain(code);
    });
  }

  it('a payload that is not the protocol is a hard failure', async () => {
    const r = await helper(['get'], { stdin: 'weird.example', env });
    expect(r.code).to.equal(1);
    expect(r.stderr).to.contain('same version');
  });

  it('an unreachable host is a hard failure with what to do', async () => {
    const r = await helper(['get'], { stdin: 'ghcr.io', env: { SHED_PUBLISH_URL: `unix:${tempDir('shed-nope')}/none.sock` } });
    expect(r.code).to.equal(1);
    expect(r.stdout).to.contain('cannot reach the broker socket');
    expect(r.stderr).to.contain('shed-host-agent is running');
    const bad = await helper(['get'], { stdin: 'ghcr.io', env: { SHED_PUBLISH_URL: 'ftp://x' } });
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.contain('SHED_PUBLISH_URL');
  });

  it('get without a server URL says how to call it', async () => {
    for (const stdin of ['', '  \n', 'a\nb']) {
      const r = await helper(['get'], { stdin, env });
      expect(r).to.deep.include({ code: 1, stdout: 'no server URL on stdin\n' });
    }
  });

  it('list prints {"<url>":"<user>"}', async () => {
    const r = await helper(['list'], { env });
    expect(r).to.deep.include({ code: 0, stdout: '{"ghcr.io":"u"}\n' });
  });

  it('store and erase are refused without asking the host, taking stdin unless it is a terminal', async () => {
    for (const action of ['store', 'erase']) {
      const r = await helper([action], { stdin: '{"ServerURL":"ghcr.io","Username":"x","Secret":"y"}', env: { SHED_PUBLISH_URL: 'unix:/nonexistent.sock' } });
      expect(r.code).to.equal(1);
      expect(r.stdout).to.contain('read-only');
      expect(r.stderr).to.contain('read-only').and.contain(`docker ${action === 'store' ? 'login' : 'logout'}`);
      expect(r.stdinRead).to.equal(true);
      expect((await helper([action], { tty: true })).stdinRead).to.equal(false);
    }
  });

  it('version, help, no action, unknown action', async () => {
    expect(await helper(['version'])).to.deep.include({ code: 0, stdout: `docker-credential-shed (shed-extensions) ${VERSION}\n` });
    expect(await helper(['--help'])).to.deep.include({ code: 0, stdout: USAGE });
    expect(await helper([])).to.deep.include({ code: 1, stderr: USAGE });
    const unknown = await helper(['frob']);
    expect(unknown.code).to.equal(1);
    expect(unknown.stdout).to.equal('unknown action: frob\n');
  });

  it('bundles to one file that pulls in only the bus client (and its HTTP/1.1 client and guest.env reader) and zod/mini, and runs', async function () {
    this.timeout(20_000);
    const { file, inputs } = await bundleDockerCredentialShed();
    const own = inputs.filter((i) => !i.startsWith('node_modules/'));
    expect(own.sort()).to.deep.equal([
      'guest-services/bus-client.ts',
      'guest-services/docker-credential/helper.ts',
      'guest-services/docker-credential/main.ts',
      'guest-services/guest-env.ts',
      'guest-services/http1.ts',
      // The I/O and run the one-shot helpers share.
      'guest-services/one-shot.ts',
      'protocol/compiled.ts',
      'protocol/docker-credentials.ts',
      'protocol/envelope.ts',
      'protocol/http1.ts',
      'protocol/version.ts',
    ]);
    const packages = new Set(inputs.filter((i) => i.startsWith('node_modules/')).map((i) => i.split('/').slice(1, 3).join('/')));
    expect([...packages].every((p) => p === 'zod/v4' || p === 'zod/mini'), [...packages].join(', ')).to.equal(true);
    expect(inputs.some((i) => i.includes('zod/v4/classic'))).to.equal(false);
    // zod's schema compiler is for the long-running services; left in, it would double the file this one-shot program loads on every run.
    expect(fs.readFileSync(file, 'utf8')).not.to.include('ZodCompileUnsupportedError');
    const bin = guestBinDir(file);
    const r = await run(`${bin}/docker-credential-shed`, ['get'], { input: 'ghcr.io', env: { PATH: '/usr/bin:/bin', ...env } });
    expect(r.code, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout)).to.deep.equal({ ServerURL: 'ghcr.io', Username: 'u', Secret: 's3' });
  });
});
