/**
 * docker-credentials end to end with real tools: docker-registry with
 * htpasswd auth on loopback, skopeo in a "guest" whose Docker config holds
 * only {"credsStore":"shed"}, docker-credential-shed (bundled as a guest ships
 * it), the broker, and the host's own Docker config: inline auths, or the real
 * docker-credential-pass with a throwaway GPG key.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { createDockerHandler } from '../../host-broker/docker/handler.js';
import type { MemoryAudit } from '../../host-broker/audit/audit.js';
import { BusClient } from '../../guest-services/bus-client.js';
import { memoryLogger } from '../../protocol/log.js';
import { startShedBroker } from '../support/bus-emulator.js';
import { startDirectBroker, type Harness, type TransportKind } from '../support/harness.js';
import { run, tempDir, waitFor } from '../support/procs.js';
import {
  buildOciLayout, bundleDockerCredentialShed, guestBinDir, isolatedEnv, pushImage, startPassStore, startRegistry,
  type PassStore, type Registry,
} from '../support/registry.js';

const SECRET = 'reg-SECRET-51f0c2e8a9';
const OTHER_SECRET = 'open-SECRET-77d1b3';
const NOT_FOUND = 'credentials not found in native keychain\n';
const TRANSPORTS: TransportKind[] = ['direct', 'shed'];

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('docker-credentials end to end (docker-registry, skopeo, docker-credential-pass)', function () {
  this.timeout(60_000);
  let authReg: Registry;
  let openReg: Registry;
  let pass: PassStore;
  let guestBin: string;

  before(async function () {
    this.timeout(60_000);
    const layout = buildOciLayout();
    [authReg, openReg, pass] = await Promise.all([startRegistry({ users: { alice: SECRET } }), startRegistry(), startPassStore()]);
    await Promise.all([
      pushImage(layout, authReg, 'test/hello', `alice:${SECRET}`),
      pushImage(layout, openReg, 'public/hello'),
      pass.store(authReg.host, 'alice', SECRET),
    ]);
    guestBin = guestBinDir((await bundleDockerCredentialShed()).file);
  });

  after(async () => {
    await Promise.all([authReg?.stop(), openReg?.stop(), pass?.stop()]);
  });

  for (const kind of TRANSPORTS) {
    describe(`over the ${kind} transport`, () => {
      let h: Harness;
      let hostConfig: string;
      let hostBin: string;
      let guestHome: string;
      let guestEnv: Record<string, string>;
      let registriesConf: string;
      const log = memoryLogger('shed-host-agent');

      const setHostConfig = (config: Record<string, unknown>) => fs.writeFileSync(hostConfig, JSON.stringify(config, null, 2));
      const guest = (args: string[], input = '', env = guestEnv) => run('docker-credential-shed', args, { env, input, timeoutMs: 15_000 });
      const skopeo = (args: string[], env = guestEnv) =>
        run('skopeo', ['--insecure-policy', '--registries-conf', registriesConf, ...args], { env, timeoutMs: 30_000 });
      const auditText = () => JSON.stringify((h.audit as MemoryAudit).entries);
      const noSecretsAnywhere = () => {
        const all = `${log.lines.join('\n')}\n${auditText()}`;
        expect(all).to.not.contain(SECRET);
        expect(all).to.not.contain(OTHER_SECRET);
      };

      before(async () => {
        const hostDir = tempDir('shed-dhost');
        fs.mkdirSync(path.join(hostDir, 'docker'));
        hostConfig = path.join(hostDir, 'docker', 'config.json');
        hostBin = path.join(hostDir, 'bin');
        fs.mkdirSync(hostBin);
        fs.writeFileSync(path.join(hostBin, 'docker-credential-hang'), `#!/bin/sh\nsleep 60 &\nwait\n`, { mode: 0o755 });
        const hostEnv = { ...pass.env, PATH: `${hostBin}:/usr/bin:/bin`, DOCKER_CONFIG: path.join(hostDir, 'docker') };
        const handler = createDockerHandler({ log, env: hostEnv });
        const policy = { version: 1, sheds: { alpha: { docker: { registries: [authReg.host] } } } };
        h = await (kind === 'direct' ? startDirectBroker : startShedBroker)({ policy, handlers: [handler], log });

        guestHome = tempDir('shed-guest');
        fs.mkdirSync(path.join(guestHome, '.docker'));
        fs.writeFileSync(path.join(guestHome, '.docker', 'config.json'), '{"credsStore":"shed"}\n');
        // skopeo ignores credsStore; containers' registries.conf names the helper for every registry.
        registriesConf = path.join(guestHome, 'registries.conf');
        fs.writeFileSync(registriesConf, 'credential-helpers = ["shed"]\n');
        guestEnv = isolatedEnv(guestHome, { PATH: `${guestBin}:/usr/bin:/bin`, SHED_PUBLISH_URL: h.publishUrl('alpha') });
      });

      after(async () => {
        await h?.stop();
      });

      beforeEach(() => {
        (h.audit as MemoryAudit).entries.length = 0;
      });

      it('without host credentials the authenticated registry refuses the guest (the control)', async () => {
        setHostConfig({});
        const r = await skopeo(['inspect', '--tls-verify=false', `docker://${authReg.host}/test/hello:v1`]);
        expect(r.code).to.equal(1);
        expect(r.stderr).to.match(/unauthorized|authentication required/i);
        expect((h.audit as MemoryAudit).entries.map((e) => [e.op, e.detail])).to.deep.include(['get', `${authReg.host}: no credentials`]);
      });

      it('skopeo inspect and copy succeed with credentials that live only in the host\'s inline auths', async () => {
        setHostConfig({ auths: { [`https://${authReg.host}`]: { auth: b64(`alice:${SECRET}`) } } });
        const inspect = await skopeo(['inspect', '--tls-verify=false', `docker://${authReg.host}/test/hello:v1`]);
        expect(inspect.code, inspect.stderr).to.equal(0);
        expect(JSON.parse(inspect.stdout).Name).to.equal(`${authReg.host}/test/hello`);

        const out = path.join(guestHome, 'copied');
        const copy = await skopeo(['copy', '--src-tls-verify=false', `docker://${authReg.host}/test/hello:v1`, `dir:${out}`]);
        expect(copy.code, copy.stderr).to.equal(0);
        expect(fs.existsSync(path.join(out, 'manifest.json'))).to.equal(true);

        const entries = (h.audit as MemoryAudit).entries;
        expect(entries.length).to.be.greaterThan(0);
        for (const e of entries) expect(e).to.include({ shed: 'alpha', ns: 'docker-credentials', op: 'get', result: 'ok', detail: `${authReg.host} via auths` });
        expect(fs.readFileSync(path.join(guestHome, '.docker', 'config.json'), 'utf8')).to.equal('{"credsStore":"shed"}\n');
        noSecretsAnywhere();
      });

      it('the guest helper speaks Docker\'s protocol: get prints ServerURL, Username, Secret', async () => {
        setHostConfig({ auths: { [authReg.host]: { auth: b64(`alice:${SECRET}`) } } });
        const r = await guest(['get'], authReg.host);
        expect(r.code, r.stderr).to.equal(0);
        expect(JSON.parse(r.stdout)).to.deep.equal({ ServerURL: authReg.host, Username: 'alice', Secret: SECRET });
        expect(r.stderr).to.equal('');
      });

      it('skopeo works through a real host helper (docker-credential-pass), by credsStore and by credHelpers on the guest', async () => {
        setHostConfig({ credsStore: 'pass' });
        const inspect = await skopeo(['inspect', '--tls-verify=false', `docker://${authReg.host}/test/hello:v1`]);
        expect(inspect.code, inspect.stderr).to.equal(0);
        const entries = (h.audit as MemoryAudit).entries;
        expect(entries.map((e) => e.detail)).to.include(`${authReg.host} via credsStore pass`);

        // The other form skopeo honours: a per-registry credHelpers entry in the guest's Docker config.
        const home = tempDir('shed-guest2');
        fs.mkdirSync(path.join(home, '.docker'));
        fs.writeFileSync(path.join(home, '.docker', 'config.json'), JSON.stringify({ credHelpers: { [authReg.host]: 'shed' } }));
        const env = isolatedEnv(home, { PATH: guestEnv.PATH!, SHED_PUBLISH_URL: guestEnv.SHED_PUBLISH_URL! });
        const viaCredHelpers = await run('skopeo', ['--insecure-policy', 'inspect', '--tls-verify=false', `docker://${authReg.host}/test/hello:v1`], { env, timeoutMs: 30_000 });
        expect(viaCredHelpers.code, viaCredHelpers.stderr).to.equal(0);
        noSecretsAnywhere();
      });

      it('a registry outside the allowlist gets the not-found answer, its code on stderr, and anonymous pulls still work', async () => {
        // The host has credentials for the open registry too: the policy must keep them from the shed.
        setHostConfig({ auths: { [authReg.host]: { auth: b64(`alice:${SECRET}`) }, [openReg.host]: { auth: b64(`bob:${OTHER_SECRET}`) } } });
        const r = await guest(['get'], openReg.host);
        expect(r.code).to.equal(1);
        expect(r.stdout).to.equal(NOT_FOUND);
        expect(r.stderr).to.contain('REGISTRY_NOT_ALLOWED').and.contain(openReg.host);
        expect(r.stderr).to.not.contain(OTHER_SECRET);
        const denied = (h.audit as MemoryAudit).entries.at(-1)!;
        expect(denied).to.include({ op: 'get', result: 'denied' });
        expect(denied.detail).to.contain(openReg.host);

        const inspect = await skopeo(['inspect', '--tls-verify=false', `docker://${openReg.host}/public/hello:v1`]);
        expect(inspect.code, inspect.stderr).to.equal(0);
        expect(JSON.parse(inspect.stdout).Name).to.equal(`${openReg.host}/public/hello`);
        noSecretsAnywhere();
      });

      it('list shows only the registries the shed may use', async () => {
        setHostConfig({ auths: { [authReg.host]: { auth: b64(`alice:${SECRET}`) }, [openReg.host]: { auth: b64(`bob:${OTHER_SECRET}`) } } });
        const r = await guest(['list']);
        expect(r.code, r.stderr).to.equal(0);
        expect(JSON.parse(r.stdout)).to.deep.equal({ [authReg.host]: 'alice' });
        expect((h.audit as MemoryAudit).entries.at(-1)).to.include({ op: 'list', result: 'ok', detail: authReg.host });
      });

      it('store and erase exit 1 and change nothing on the host', async () => {
        setHostConfig({ credsStore: 'pass', auths: { [authReg.host]: {} } });
        const before = fs.readFileSync(hostConfig, 'utf8');
        const passBefore = await run('docker-credential-pass', ['list'], { env: pass.env });
        const store = await guest(['store'], JSON.stringify({ ServerURL: authReg.host, Username: 'mallory', Secret: 'planted' }));
        const erase = await guest(['erase'], authReg.host);
        for (const r of [store, erase]) {
          expect(r.code).to.equal(1);
          expect(r.stdout).to.not.equal('');
          expect(r.stderr).to.contain('read-only');
        }
        // Straight onto the bus too: the host refuses on its own.
        const client = new BusClient({ publishUrl: h.publishUrl('alpha'), deadlineMs: 5000 });
        try {
          for (const operation of ['store', 'erase']) {
            const err = await client.publish('docker-credentials', { operation, server_url: authReg.host, username: 'mallory', secret: 'planted' }).then(() => undefined, (e: Error) => e);
            expect(err).to.have.property('code', 'READ_ONLY');
          }
        } finally {
          client.close();
        }
        expect(fs.readFileSync(hostConfig, 'utf8')).to.equal(before);
        const passAfter = await run('docker-credential-pass', ['list'], { env: pass.env });
        expect(passAfter.stdout).to.equal(passBefore.stdout);
        // Still alice's, not the planted ones.
        const got = await guest(['get'], authReg.host);
        expect(JSON.parse(got.stdout)).to.include({ Username: 'alice' });
      });

      it('a host helper that hangs is cut off at 5 s and the guest fails hard, not anonymous', async function () {
        this.timeout(20_000);
        setHostConfig({ credHelpers: { [authReg.host]: 'hang' }, auths: { [authReg.host]: { auth: b64(`alice:${SECRET}`) } } });
        const started = Date.now();
        const r = await guest(['get'], authReg.host);
        const elapsed = Date.now() - started;
        expect(r.code).to.equal(1);
        expect(r.stdout).to.not.equal(NOT_FOUND).and.not.equal('');
        // Guest deadline and host cut-off are both 5 s: whichever wins, the user learns a helper may hang.
        expect(`${r.stdout}${r.stderr}`).to.match(/credential helper .*hang|docker-credential-hang did not answer/);
        expect(r.stdout).to.not.contain(SECRET);
        expect(elapsed).to.be.within(4500, 7000);
        await waitFor(() => log.lines.some((l) => l.includes('docker-credential-hang get did not finish within 5000 ms; killed it')), 3000, 'the host to kill the helper');
      });
    });
  }
});
