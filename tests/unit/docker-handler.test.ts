import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { createDockerHandler } from '../../host-broker/docker/handler.js';
import { BrokerError, type RequestContext } from '../../host-broker/handler.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import type { Payload } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { tempDir, waitFor } from '../support/procs.js';

/** Running (a zombie waiting for a reaper counts as gone). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const SECRET = 'hunter2-SECRET-7f3a9c';
const TOKEN = 'idtoken-SECRET-c0ffee';

/** A fake host with its own PATH of docker-credential-* scripts and a Docker config. */
function host(config: Record<string, unknown> | string | undefined, dockerPolicy: Record<string, unknown> = { registries: ['ghcr.io', 'quay.io', 'docker.io', '*.example.com', '127.0.0.1:5000'] }) {
  const dir = tempDir('shed-dh');
  const bin = path.join(dir, 'bin');
  const cfgDir = path.join(dir, 'docker');
  fs.mkdirSync(bin);
  fs.mkdirSync(cfgDir);
  if (config !== undefined) fs.writeFileSync(path.join(cfgDir, 'config.json'), typeof config === 'string' ? config : JSON.stringify(config));
  const helper = (name: string, script: string) => {
    fs.writeFileSync(path.join(bin, `docker-credential-${name}`), `#!/bin/sh\n${script}\n`, { mode: 0o755 });
  };
  const log = memoryLogger('shed-host-agent');
  const env = { PATH: `${bin}:/usr/bin:/bin`, DOCKER_CONFIG: cfgDir, CALLS: path.join(dir, 'calls') };
  const handler = createDockerHandler({ log, env, homedir: dir });
  const policy = policyFromDocument({ version: 1, sheds: { alpha: { docker: dockerPolicy } } }).resolve('alpha')!;
  const call = async (operation: string, payload: Payload = {}) => {
    const ctx: RequestContext = {
      shed: 'alpha', requestId: 'r1', namespace: 'docker-credentials', operation, policy, log,
      signal: new AbortController().signal, approval: 'none', approve: async () => undefined,
    };
    try {
      return { answer: await handler.handle(operation, { operation, ...payload }, ctx), ctx };
    } catch (err) {
      if (err instanceof BrokerError) return { error: err, ctx };
      throw err;
    }
  };
  const calls = () => (fs.existsSync(env.CALLS) ? fs.readFileSync(env.CALLS, 'utf8') : '');
  return { dir, bin, cfgDir, helper, log, call, calls };
}

const b64 = (s: string) => Buffer.from(s).toString('base64');

/** A helper that records `<action> <stdin>` and answers from a fixed table. */
const TABLE_HELPER = `read -r url
echo "$1 $url" >> "$CALLS"
case "$1" in
  get)
    case "$url" in
      ghcr.io) echo '{"ServerURL":"ghcr.io","Username":"gh-user","Secret":"${SECRET}"}' ;;
      https://index.docker.io/v1/) echo '{"ServerURL":"https://index.docker.io/v1/","Username":"hub-user","Secret":"${SECRET}"}' ;;
      *) echo '{"ServerURL":"","Username":"","Secret":""}' ;;
    esac ;;
  list) echo '{"ghcr.io":"gh-user","https://index.docker.io/v1/":"hub-user","forbidden.io":"x"}' ;;
esac`;

describe('docker-credentials handler', () => {
  it('answers from inline auths (user:pass and identitytoken), matching any spelling of the registry', async () => {
    const h = host({ auths: {
      'https://ghcr.io': { auth: b64(`gh-user:${SECRET}`) },
      'https://index.docker.io/v1/': { auth: b64(`hub-user:${SECRET}`) },
      'quay.io': { identitytoken: TOKEN, auth: b64(`ignored:${SECRET}`) },
      'legacy.example.com': { username: 'leg', password: SECRET },
    } });
    const gh = await h.call('get', { server_url: 'ghcr.io' });
    expect(gh.answer).to.deep.equal({ server_url: 'ghcr.io', username: 'gh-user', secret: SECRET });
    expect(gh.ctx.detail).to.equal('ghcr.io via auths');
    expect((await h.call('get', { server_url: 'registry-1.docker.io' })).answer).to.include({ username: 'hub-user', server_url: 'registry-1.docker.io' });
    expect((await h.call('get', { server_url: 'https://index.docker.io/v1/' })).answer).to.include({ username: 'hub-user' });
    expect((await h.call('get', { server_url: 'quay.io' })).answer).to.deep.equal({ server_url: 'quay.io', username: '<token>', secret: TOKEN });
    expect((await h.call('get', { server_url: 'https://legacy.example.com/v2/' })).answer).to.include({ username: 'leg', secret: SECRET });
  });

  it('refuses a registry outside the allowlist before reading anything, even when the host has credentials', async () => {
    const h = host({ credsStore: 'table', auths: { 'forbidden.io': { auth: b64(`u:${SECRET}`) } } });
    h.helper('table', TABLE_HELPER);
    const { error, ctx } = await h.call('get', { server_url: 'https://forbidden.io/v2/' });
    expect(error?.code).to.equal('REGISTRY_NOT_ALLOWED');
    expect(error?.message).to.contain('forbidden.io').and.contain('docker.registries');
    expect(error?.options.detail).to.contain('forbidden.io');
    expect(ctx.detail).to.equal('forbidden.io');
    expect(h.calls()).to.equal('');
  });

  it('asks the credHelpers helper first, then credsStore, with the address Docker stores', async () => {
    const h = host({ credsStore: 'table', credHelpers: { 'https://quay.io': 'quayhelper' } });
    h.helper('table', TABLE_HELPER);
    h.helper('quayhelper', `read -r url; echo "quay $url" >> "$CALLS"; echo '{"Username":"q-user","Secret":"${SECRET}"}'`);
    const q = await h.call('get', { server_url: 'quay.io' });
    expect(q.answer).to.include({ username: 'q-user' });
    expect(q.ctx.detail).to.equal('quay.io via credHelpers quayhelper');
    const hub = await h.call('get', { server_url: 'docker.io' });
    expect(hub.answer).to.include({ username: 'hub-user', server_url: 'docker.io' });
    expect(hub.ctx.detail).to.equal('docker.io via credsStore table');
    expect(h.calls()).to.equal('quay quay.io\nget https://index.docker.io/v1/\n');
  });

  it('treats empty Username and Secret (docker-credential-pass) and the not-found text as no credentials, then falls back to auths', async () => {
    const h = host({ credsStore: 'table', credHelpers: { 'registry.example.com': 'nf' }, auths: { 'registry.example.com': { auth: b64(`inline:${SECRET}`) } } });
    h.helper('table', TABLE_HELPER);
    h.helper('nf', 'echo "credentials not found in native keychain"; exit 1');
    expect((await h.call('get', { server_url: 'registry.example.com' })).answer).to.include({ username: 'inline' });
    const none = await h.call('get', { server_url: 'a.example.com' });
    expect(none.error?.code).to.equal('CREDENTIALS_NOT_FOUND');
    expect(none.error?.message).to.contain('docker login a.example.com');
  });

  it('reports a failing or missing helper as HELPER_FAILED, keeping its output on the host', async () => {
    const h = host({ credHelpers: { 'ghcr.io': 'broken', 'quay.io': 'absent' } });
    h.helper('broken', `echo "keychain locked ${SECRET}"; echo "helper stderr line" >&2; exit 3`);
    const broken = await h.call('get', { server_url: 'ghcr.io' });
    expect(broken.error?.code).to.equal('HELPER_FAILED');
    expect(broken.error?.message).to.contain('docker-credential-broken').and.contain('exit 3').and.not.contain(SECRET);
    expect(h.log.lines.join('\n')).to.contain('helper stderr line');
    const absent = await h.call('get', { server_url: 'quay.io' });
    expect(absent.error?.code).to.equal('HELPER_FAILED');
    expect(absent.error?.message).to.contain('docker-credential-absent is not installed on the host');
  });

  it('never runs a helper name that is a path', async () => {
    const h = host({ credsStore: '../../bin/sh', auths: { 'ghcr.io': { auth: b64(`gh:${SECRET}`) } } });
    expect((await h.call('get', { server_url: 'ghcr.io' })).answer).to.include({ username: 'gh' });
    expect(h.log.lines.join('\n')).to.contain('credsStore is not a helper name');
  });

  it('reads the config fresh on every request', async () => {
    const h = host(undefined);
    expect((await h.call('get', { server_url: 'ghcr.io' })).error?.code).to.equal('CREDENTIALS_NOT_FOUND');
    fs.writeFileSync(path.join(h.cfgDir, 'config.json'), JSON.stringify({ auths: { 'ghcr.io': { auth: b64(`new:${SECRET}`) } } }));
    expect((await h.call('get', { server_url: 'ghcr.io' })).answer).to.include({ username: 'new' });
  });

  it('uses config_path from the policy over DOCKER_CONFIG', async () => {
    const other = tempDir('shed-dc');
    fs.writeFileSync(path.join(other, 'c.json'), JSON.stringify({ auths: { 'ghcr.io': { auth: b64(`from-policy:${SECRET}`) } } }));
    const h2 = host({ auths: { 'ghcr.io': { auth: b64(`from-env:${SECRET}`) } } }, { registries: ['ghcr.io'], config_path: path.join(other, 'c.json') });
    expect((await h2.call('get', { server_url: 'ghcr.io' })).answer).to.include({ username: 'from-policy' });
  });

  it('says a broken config is broken without echoing it to the guest', async () => {
    const h = host(`{"auths": {"ghcr.io": {"auth": "${b64(`u:${SECRET}`)}"`);
    const { error } = await h.call('get', { server_url: 'ghcr.io' });
    expect(error?.code).to.equal('INTERNAL_ERROR');
    expect(error?.message).to.contain('shed-host-agent log').and.not.contain(SECRET);
    expect(h.log.lines.join('\n')).to.contain('not valid JSON').and.not.contain(SECRET);
  });

  it('rejects a get without a server URL or with garbage', async () => {
    const h = host({});
    expect((await h.call('get', {})).error?.code).to.equal('INVALID_REQUEST');
    expect((await h.call('get', { server_url: 'user:pw@ghcr.io' })).error?.code).to.equal('INVALID_REQUEST');
  });

  it('lists only allowed registries, helpers and auths together, first source winning', async () => {
    const h = host({ credsStore: 'table', auths: { 'ghcr.io': { auth: b64(`inline-gh:${SECRET}`) }, 'quay.io': { identitytoken: TOKEN }, 'other.io': { auth: b64(`o:${SECRET}`) } } });
    h.helper('table', TABLE_HELPER);
    const { answer, ctx } = await h.call('list');
    expect(answer).to.deep.equal({ registries: { 'ghcr.io': 'gh-user', 'https://index.docker.io/v1/': 'hub-user', 'quay.io': '<token>' } });
    expect(ctx.detail).to.equal('ghcr.io,docker.io,quay.io');
    expect(JSON.stringify(answer)).to.not.contain(SECRET);
  });

  it('is read-only: store and erase are READ_ONLY and touch nothing', async () => {
    const h = host({ credsStore: 'table' });
    h.helper('table', TABLE_HELPER);
    const before = fs.readFileSync(path.join(h.cfgDir, 'config.json'), 'utf8');
    for (const op of ['store', 'erase']) {
      const { error } = await h.call(op, { server_url: 'ghcr.io', username: 'x', secret: SECRET });
      expect(error?.code).to.equal('READ_ONLY');
      expect(error?.message).to.contain('read-only').and.not.contain(SECRET);
    }
    expect(h.calls()).to.equal('');
    expect(fs.readFileSync(path.join(h.cfgDir, 'config.json'), 'utf8')).to.equal(before);
  });

  it('answers status and refuses unknown operations', async () => {
    const h = host({}, { registries: ['ghcr.io', '*.example.com'], allow_all: false });
    expect((await h.call('status')).answer).to.deep.equal({ connected: true, allow_all: false, registry_count: 2 });
    expect((await h.call('frobnicate')).error?.code).to.equal('UNKNOWN_OPERATION');
    const none = host(undefined, { allow_all: true });
    expect((await none.call('status')).answer).to.deep.equal({ connected: false, allow_all: true, registry_count: 0 });
  });

  it('cuts off a hung helper at 5 s, with whatever it started', async function () {
    this.timeout(15_000);
    const h = host({ credsStore: 'hang' });
    const pidFile = path.join(h.dir, 'child.pid');
    h.helper('hang', `sleep 60 & echo $! > ${pidFile}; wait`);
    const started = Date.now();
    const { error } = await h.call('get', { server_url: 'ghcr.io' });
    const elapsed = Date.now() - started;
    expect(error?.code).to.equal('HELPER_FAILED');
    expect(error?.message).to.contain('did not answer within 5 s');
    expect(elapsed).to.be.within(4900, 6500);
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    await waitFor(() => !alive(pid), 2000, 'the helper\'s child to be gone');
  });

  it('never logs a secret', async () => {
    const h = host({ credsStore: 'table', auths: { 'quay.io': { identitytoken: TOKEN } } });
    h.helper('table', TABLE_HELPER);
    await h.call('get', { server_url: 'ghcr.io' });
    await h.call('get', { server_url: 'quay.io' });
    await h.call('list');
    const logged = h.log.lines.join('\n');
    expect(logged).to.not.contain(SECRET);
    expect(logged).to.not.contain(TOKEN);
  });
});
