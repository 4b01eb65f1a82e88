/**
 * The guest setup of issue 16 on this machine, without a container: what
 * `install-guest --publish-url` lays and takes back, the units with their
 * drop-ins through `systemd-analyze verify`, the user made with
 * systemd-sysusers or useradd, the uid check before anything is written, a
 * guest user the broker socket shuts out told why at run time, install-guest
 * from the package's own bin (dist/), the guest tarball installed into an
 * empty root, and `shed-ext serve` against a broker.
 */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { build } from 'esbuild';
import { bundleGuest, type BundleResult } from '../../guest-services/bundle.js';
import { featureJson, packageGuest, tarballName } from '../../guest-services/package-guest.js';
import { PUBLISH_MARKER } from '../../guest-services/status/guest-setup.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { capture, REPO_ROOT, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';
import { makeKey, startRealAgent, type RealAgent } from '../support/sshd.js';

const NODE = process.execPath;
const BARE_ENV = { PATH: `${path.dirname(NODE)}:/usr/bin:/bin:/usr/sbin:/sbin`, HOME: '/nonexistent', LANG: 'C.UTF-8' };
const IS_ROOT = process.getuid?.() === 0;
const DROP_INS = ['shed-ext-ssh-agent.service', 'shed-ext-aws-credentials.service'].map((u) => `etc/systemd/system/${u}.d/50-shed-publish-url.conf`);

/** Every path under `root`: type, mode, owner, content hash or link target. */
function tree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const rel of fs.readdirSync(root, { recursive: true, encoding: 'utf8' }).sort()) {
    const full = path.join(root, rel);
    const st = fs.lstatSync(full);
    const what = st.isSymbolicLink() ? `-> ${fs.readlinkSync(full)}` : st.isDirectory() ? 'dir' : !st.isFile() ? 'special'
      : createHash('sha256').update(fs.readFileSync(full)).digest('hex').slice(0, 16);
    out[rel] = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${what}`;
  }
  return out;
}

/** A root that has a passwd file (and, with `systemd`, a systemd binary), as a distribution's base image does. */
function baseRoot(options: { systemd?: boolean; passwd?: string } = {}): string {
  const root = path.join(tempDir('shed-base'), 'root');
  fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
  fs.mkdirSync(path.join(root, 'bin'));
  fs.writeFileSync(path.join(root, 'bin/bash'), '');
  fs.writeFileSync(path.join(root, 'etc/passwd'), options.passwd ?? 'root:x:0:0:root:/root:/bin/bash\n');
  fs.writeFileSync(path.join(root, 'etc/group'), 'root:x:0:\n');
  if (options.systemd) {
    fs.mkdirSync(path.join(root, 'usr/lib/systemd'), { recursive: true });
    fs.writeFileSync(path.join(root, 'usr/lib/systemd/systemd'), '', { mode: 0o755 });
  }
  return root;
}

describe('guest setup (install-guest, the tarball, serve)', function () {
  this.timeout(60_000);
  let bundles: BundleResult;
  const shedExt = (args: string[], env: Record<string, string> = {}) =>
    run(NODE, [path.join(bundles.outDir, 'shed-ext.mjs'), ...args], { env: { ...BARE_ENV, ...env }, cwd: '/' });

  before(async function () {
    this.timeout(60_000);
    const dir = tempDir('shed-gsb');
    // Readable by the other uids some tests run it as (bundles hold no secret).
    fs.chmodSync(dir, 0o755);
    bundles = await bundleGuest({ outDir: path.join(dir, 'guest') });
  });

  describe('install-guest --publish-url', () => {
    it('writes the drop-ins and the environment for every way in; without it again, takes back only its own drop-ins', async () => {
      const root = path.join(tempDir('shed-pub'), 'root');
      const first = await shedExt(['install-guest', '--root', root, '--publish-url', 'unix:/run/shed-bus/bus.sock']);
      expect(first.code, first.stderr).to.equal(0);
      for (const d of DROP_INS) {
        expect(fs.readFileSync(path.join(root, d), 'utf8')).to.include('Environment=SHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock\n');
      }
      expect(fs.readFileSync(path.join(root, 'etc/environment.d/shed-extensions.conf'), 'utf8')).to.include('SHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock\n');
      expect(fs.readFileSync(path.join(root, 'etc/profile.d/shed-extensions.sh'), 'utf8')).to.include('SHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock\n');
      expect(fs.readFileSync(path.join(root, 'etc/shed-extensions/guest.env'), 'utf8')).to.include('SHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock\n');
      // The login shell's snippet, run: the URL is exported, and one already set is kept.
      const profile = path.join(root, 'etc/profile.d/shed-extensions.sh');
      const shown = await run('/bin/sh', ['-c', `. ${profile}; echo "$SHED_PUBLISH_URL"`], { env: { PATH: '/usr/bin:/bin' } });
      expect(shown.stdout).to.equal('unix:/run/shed-bus/bus.sock\n');
      const kept = await run('/bin/sh', ['-c', `. ${profile}; echo "$SHED_PUBLISH_URL"`], { env: { PATH: '/usr/bin:/bin', SHED_PUBLISH_URL: 'unix:/x.sock' } });
      expect(kept.stdout).to.equal('unix:/x.sock\n');

      // Somebody's own drop-in in the same place is not ours to remove.
      const foreign = path.join(root, 'etc/systemd/system/shed-ext-ssh-agent.service.d/60-mine.conf');
      fs.writeFileSync(foreign, '[Service]\nEnvironment=X=1\n');
      const second = await shedExt(['install-guest', '--root', root]);
      expect(second.code, second.stderr).to.equal(0);
      expect(second.stdout).to.match(/, 2 removed\n/);
      for (const d of DROP_INS) expect(fs.existsSync(path.join(root, d)), d).to.equal(false);
      expect(fs.existsSync(foreign)).to.equal(true);
      expect(fs.readFileSync(path.join(root, 'etc/environment.d/shed-extensions.conf'), 'utf8')).not.to.include('SHED_PUBLISH_URL');
      expect(fs.readFileSync(path.join(root, 'etc/shed-extensions/guest.env'), 'utf8')).not.to.match(/^SHED_PUBLISH_URL=/m);
      // A file at a drop-in's place without our marker stays too.
      fs.writeFileSync(path.join(root, DROP_INS[0]!), '[Service]\n');
      expect((await shedExt(['install-guest', '--root', root])).stdout).not.to.include('removed');
      expect(PUBLISH_MARKER.startsWith('# shed-extensions')).to.equal(true);
    });

    it('the units with their drop-ins pass systemd-analyze verify, for a mount under /run, /tmp and /home', async () => {
      for (const [url, extra] of [
        ['unix:/run/shed-bus/bus.sock', undefined],
        ['unix:/tmp/shed-bus/bus.sock', 'BindReadOnlyPaths=-/tmp/shed-bus'],
        ['unix:/home/dev/shed/bus.sock', 'ProtectHome=tmpfs'],
      ] as const) {
        const root = path.join(tempDir('shed-ver'), 'root');
        const r = await shedExt(['install-guest', '--root', root, '--publish-url', url, '--aws-port', '4499']);
        expect(r.code, r.stderr).to.equal(0);
        if (extra) {
          expect(fs.readFileSync(path.join(root, DROP_INS[0]!), 'utf8')).to.include(extra);
          expect(r.stdout).to.include('Note: ').and.include('mount the shed\'s directory at /run/shed-bus instead');
        }
        fs.mkdirSync(path.join(root, 'usr/lib/systemd'), { recursive: true });
        fs.cpSync('/lib/systemd/system', path.join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
        for (const unit of ['shed-ext-ssh-agent.service', 'shed-ext-aws-credentials.service', 'shed-ext-aws-token.service']) {
          const v = await run('systemd-analyze', ['verify', '--man=no', `--root=${root}`, unit]);
          expect(`${v.stdout}${v.stderr}`, `${url} ${unit}`).to.equal('');
        }
        expect(fs.readFileSync(path.join(root, 'usr/local/lib/systemd/system/shed-ext-aws-credentials.service'), 'utf8')).to.include('--port 4499 ');
        expect(fs.readFileSync(path.join(root, 'etc/shed-extensions/guest.env'), 'utf8')).to.include('http://127.0.0.1:4499/credentials');
      }
    });

    it('refuses a URL the config files cannot carry, and bad --uid and --aws-port, writing nothing', async () => {
      const root = path.join(tempDir('shed-bad'), 'root');
      const [space, own, uid, port] = await Promise.all([
        shedExt(['install-guest', '--root', root, '--publish-url', 'unix:/run/my bus/bus.sock']),
        shedExt(['install-guest', '--root', root, '--publish-url', 'unix:/run/shed-extensions/bus.sock']),
        shedExt(['install-guest', '--root', root, '--uid', '0']),
        shedExt(['install-guest', '--root', root, '--aws-port', 'http']),
      ]);
      expect(space.code).to.equal(1);
      expect(space.stderr).to.include('may hold only letters');
      expect(own.code).to.equal(1);
      expect(own.stderr).to.include('own runtime directory');
      expect(uid.code).to.equal(2);
      expect(uid.stderr).to.include('--uid must be a number above 0');
      expect(port.code).to.equal(2);
      expect(fs.existsSync(root)).to.equal(false);
    });
  });

  describe('the user the units run as', () => {
    before(function () {
      if (!IS_ROOT) this.skip();
    });

    it('a root with systemd: the sysusers.d entry, and the user made now by systemd-sysusers, with a home', async () => {
      const root = baseRoot({ systemd: true });
      const r = await shedExt(['install-guest', '--root', root, '--uid', '1234']);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.include('Created the user shed (uid 1234, with systemd-sysusers)');
      expect(fs.readFileSync(path.join(root, 'usr/local/lib/sysusers.d/shed-extensions.conf'), 'utf8'))
        .to.include('u shed 1234 "shed-extensions guest user" /home/shed /bin/bash\n');
      expect(fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8')).to.include('shed:x:1234:1234:');
      expect(fs.statSync(path.join(root, 'home/shed'))).to.include({ uid: 1234, gid: 1234 });
      expect(fs.statSync(path.join(root, 'run/shed-extensions'))).to.include({ uid: 1234, gid: 1234 });
      const again = await shedExt(['install-guest', '--root', root, '--uid', '1234']);
      expect(again.stdout).to.include('0 created, 0 updated').and.include('The units run as shed (uid 1234)');
    });

    it('a root without systemd: useradd; an existing user with another uid, or a uid taken, is refused', async () => {
      const root = baseRoot();
      const r = await shedExt(['install-guest', '--root', root]);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.include('Created the user shed (uid 1000, with useradd)');
      expect(fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8')).to.match(/^shed:[^:]*:1000:1000:/m);
      expect(fs.statSync(path.join(root, 'home/shed'))).to.include({ uid: 1000 });
      const other = await shedExt(['install-guest', '--root', root, '--uid', '1001']);
      expect(other.code).to.equal(1);
      expect(other.stderr).to.include('the user shed exists in this root with uid 1000, not --uid 1001');
      const taken = await shedExt(['install-guest', '--root', root, '--user', 'dev']);
      expect(taken.code).to.equal(1);
      expect(taken.stderr).to.include('uid 1000 already belongs to shed').and.include('--user shed');
      const existing = await shedExt(['install-guest', '--root', root, '--user', 'shed']);
      expect(existing.stdout).to.include('The units run as shed (uid 1000)');
    });

    it('a broker socket the guest user could not open stops the install before it writes anything, and says what to do', async () => {
      const root = baseRoot({ systemd: true });
      const dir = path.join(root, 'run/shed-bus');
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const server = net.createServer();
      await new Promise<void>((r) => server.listen(path.join(dir, 'bus.sock'), r));
      try {
        fs.chmodSync(path.join(dir, 'bus.sock'), 0o600);
        fs.chownSync(path.join(dir, 'bus.sock'), 2000, 2000);
        fs.chownSync(dir, 2000, 2000);
        const before = tree(root);
        const refused = await shedExt(['install-guest', '--root', root, '--publish-url', 'unix:/run/shed-bus/bus.sock', '--uid', '1000']);
        expect(refused.code).to.equal(1);
        expect(refused.stderr).to.include('the broker socket at /run/shed-bus/bus.sock belongs to uid 2000 (mode 0600), but the guest user shed has uid 1000')
          .and.include('install with --uid 2000');
        expect(tree(root)).to.deep.equal(before);
        // Without --uid the new user takes the socket owner's uid.
        const ok = await shedExt(['install-guest', '--root', root, '--publish-url', 'unix:/run/shed-bus/bus.sock']);
        expect(ok.code, ok.stderr).to.equal(0);
        expect(ok.stdout).to.include('Created the user shed (uid 2000');
      } finally {
        server.close();
      }
    });

    it('at run time, a guest user the socket shuts out is told whose it is (shed-ext status as another uid)', async () => {
      const base = tempDir('shed-eacces');
      fs.chmodSync(base, 0o755);
      const dir = path.join(base, 'dev');
      fs.mkdirSync(dir, { mode: 0o700 });
      const server = net.createServer();
      await new Promise<void>((r) => server.listen(path.join(dir, 'bus.sock'), r));
      try {
        const r = await run('setpriv', ['--reuid=1001', '--regid=1001', '--clear-groups', NODE, path.join(bundles.outDir, 'shed-ext.mjs'), 'status', '--publish-url', `unix:${dir}/bus.sock`],
          { env: BARE_ENV, cwd: '/' });
        expect(r.code).to.equal(1);
        expect(r.stdout).to.include(`no permission to connect to ${dir}/bus.sock: its directory ${dir} belongs to uid 0 (mode 0700) and this process runs as uid 1001`)
          .and.include('the guest user\'s uid must be the broker\'s: run the guest programs as uid 0');
      } finally {
        server.close();
      }
    });
  });

  it('install-guest run from the package\'s own bin (dist/) finds the package\'s build/guest', async () => {
    const pkg = tempDir('shed-dist');
    fs.writeFileSync(path.join(pkg, 'package.json'), JSON.stringify({ name: 'shed-extensions', version: '0.0.0' }));
    const main = path.join(pkg, 'dist/guest-services/status/main.js');
    await build({
      entryPoints: [path.join(REPO_ROOT, 'guest-services/status/main.ts')], outfile: main, bundle: true, platform: 'node', format: 'esm', target: 'node20',
      banner: { js: "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);" }, logLevel: 'error',
    });
    const missing = await run(NODE, [main, 'install-guest', '--root', path.join(pkg, 'root')], { env: BARE_ENV, cwd: '/' });
    expect(missing.code).to.equal(1);
    expect(missing.stderr).to.include(`run \`npm run bundle\` in ${pkg} first`);
    fs.cpSync(bundles.outDir, path.join(pkg, 'build/guest'), { recursive: true });
    const found = await run(NODE, [main, 'install-guest', '--root', path.join(pkg, 'root')], { env: BARE_ENV, cwd: '/' });
    expect(found.code, found.stderr).to.equal(0);
    expect(found.stdout).to.include('installed shed-extensions');
    expect(fs.existsSync(path.join(pkg, 'root/usr/local/lib/shed-extensions/shed-ext.mjs'))).to.equal(true);
  });

  describe('the guest tarball', () => {
    it('is the same bytes for the same inputs, and lists the bundles, launchers, units, config, install.sh and the Feature', async () => {
      const a = await packageGuest({ outDir: tempDir('shed-tga'), mtime: 1_780_000_000 });
      const b = await packageGuest({ outDir: tempDir('shed-tgb'), mtime: 1_780_000_000 });
      expect(fs.readFileSync(a.tarball).equals(fs.readFileSync(b.tarball))).to.equal(true);
      const list = await run('tar', ['-tvzf', a.tarball]);
      expect(list.code, list.stderr).to.equal(0);
      const top = tarballName();
      for (const f of ['shed-ext.mjs', 'shed-ext-ssh-agent.mjs', 'shed-ext-aws-credentials.mjs', 'docker-credential-shed.cjs', 'bin/shed-ext',
        'bin/docker-credential-shed', 'systemd/guest/shed-ext-ssh-agent.service', 'systemd/guest/profile.d/shed-extensions.sh', 'install.sh',
        'devcontainer-feature.json', 'VERSION']) {
        expect(list.stdout, f).to.match(new RegExp(` ${top}/${f.replace(/[.]/g, '\\.')}\n`));
      }
      expect(list.stdout).to.match(new RegExp(`^-rwxr-xr-x root/root .* ${top}/install\\.sh$`, 'm'));
      expect(JSON.parse(featureJson())).to.include({ id: 'shed-extensions', entrypoint: '/usr/local/lib/shed-extensions/entrypoint.sh' });
    });

    it('installs into an empty root without this repository: the same tree as install-guest from the bundles', async () => {
      const pkg = await packageGuest({ outDir: tempDir('shed-tgi') });
      const unpacked = tempDir('shed-tgu');
      expect((await run('tar', ['-xzf', pkg.tarball, '-C', unpacked])).code).to.equal(0);
      // Nothing of this checkout: the tarball's own directory, node, and /usr/bin.
      fs.rmSync(pkg.dir, { recursive: true });
      const root = path.join(tempDir('shed-tge'), 'root');
      const r = await run('/bin/sh', [path.join(unpacked, tarballName(), 'install.sh'), '--root', root, '--publish-url', 'unix:/run/shed-bus/bus.sock'],
        { env: BARE_ENV, cwd: '/' });
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.include('installed shed-extensions');
      const viaBundles = path.join(tempDir('shed-tgb'), 'root');
      expect((await shedExt(['install-guest', '--root', viaBundles, '--publish-url', 'unix:/run/shed-bus/bus.sock'])).code).to.equal(0);
      expect(tree(root)).to.deep.equal(tree(viaBundles));
      expect(fs.existsSync(path.join(root, 'usr/local/lib/shed-extensions/entrypoint.sh'))).to.equal(true);

      const noNode = await run('/bin/sh', [path.join(unpacked, tarballName(), 'install.sh'), '--root', root], { env: { PATH: '/usr/bin:/bin' }, cwd: '/' });
      if (!fs.existsSync('/usr/bin/node') && !fs.existsSync('/bin/node')) {
        expect(noNode.code).to.equal(1);
        expect(noNode.stderr).to.include('node (Node.js 20 or newer) is not installed in this image');
      }
    });
  });

  describe('shed-ext serve', () => {
    let h: Harness;
    let agent: RealAgent;
    let fingerprint: string;

    before(async () => {
      const dir = tempDir('shed-srv');
      const key = await makeKey(dir, 'id_ed25519', 'ed25519');
      fingerprint = key.fingerprint;
      agent = await startRealAgent(path.join(dir, 'host.sock'), [key]);
      h = await startDirectBroker({ policy: { version: 1, sheds: { dev: { ssh: { mode: 'agent-forward', agent_socket: agent.sock } } } } });
    });
    after(async () => {
      await h?.stop();
      await agent?.stop();
    });

    const serve = (args: string[]) => {
      const child = spawnTracked(NODE, [path.join(bundles.outDir, 'shed-ext.mjs'), 'serve', ...args], { env: BARE_ENV, cwd: '/' });
      return { child, out: capture(child) };
    };

    it('serves the agent and the endpoint in one process, makes the token (0600, no newline), and stops on SIGTERM', async () => {
      const dir = path.join(tempDir('shed-srv'), 'run');
      const sock = path.join(dir, 'ssh-agent.sock');
      const token = path.join(dir, 'aws-token');
      const { child, out } = serve(['--sock', sock, '--port', '0', '--auth-token-file', token, '--publish-url', h.publishUrl('dev')]);
      const url = (await waitFor(() => /serving AWS credentials at (\S+)/.exec(out.stderr()), 20_000, 'serve'))[1]!;
      await waitFor(() => /shed-ext-serve INFO shed-extensions .*: serving the SSH agent/.test(out.stderr()), 20_000, 'serve ready');
      expect(fs.statSync(dir).mode & 0o777).to.equal(0o755);
      expect(fs.statSync(token).mode & 0o777).to.equal(0o600);
      const tokenText = fs.readFileSync(token, 'latin1');
      expect(tokenText).to.match(/^[A-Za-z0-9_-]{43}$/);
      const list = await run('ssh-add', ['-l'], { env: { PATH: '/usr/bin:/bin', SSH_AUTH_SOCK: sock } });
      expect(list.code, list.stderr).to.equal(0);
      expect(list.stdout).to.include(fingerprint);
      const status = await new Promise<number>((resolve, reject) => {
        http.get(url, { headers: { authorization: 'wrong-token-0123456789' } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        }).on('error', reject);
      });
      expect(status).to.equal(403);
      expect(out.stderr()).not.to.include(tokenText);
      child.kill('SIGTERM');
      const code = await new Promise((resolve) => child.once('close', resolve));
      expect(code, out.stderr()).to.equal(0);
      expect(out.stderr()).to.include('shed-ext-serve INFO SIGTERM: stopping');
      expect(fs.existsSync(sock)).to.equal(false);
    });

    it('one service that cannot start leaves the other serving; neither, and bad flags, are errors', async () => {
      const blocker = net.createServer();
      await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
      const port = String((blocker.address() as net.AddressInfo).port);
      try {
        const dir = tempDir('shed-srv');
        const { child, out } = serve(['--sock', path.join(dir, 'a.sock'), '--port', port, '--auth-token-file', path.join(dir, 'tok'), '--publish-url', h.publishUrl('dev')]);
        await waitFor(() => /serving the SSH agent/.test(out.stderr()), 20_000, 'serve with the agent only');
        expect(out.stderr()).to.include(`cannot listen on 127.0.0.1:${port}: the port is in use`).and.include('serving the rest');
        expect(await stopProcess(child)).to.equal(0);

        const none = await run(NODE, [path.join(bundles.outDir, 'shed-ext.mjs'), 'serve', '--no-ssh-agent', '--port', port, '--auth-token-file', path.join(dir, 'tok2'),
          '--publish-url', h.publishUrl('dev')], { env: BARE_ENV });
        expect(none.code).to.equal(1);
        expect(none.stderr).to.include('the port is in use');
      } finally {
        blocker.close();
      }
      const [both, relative, loud, help] = await Promise.all([
        shedExt(['serve', '--no-ssh-agent', '--no-aws']),
        shedExt(['serve', '--sock', 'agent.sock']),
        shedExt(['serve', '--host', '0.0.0.0']),
        shedExt(['serve', '--help']),
      ]);
      expect(both.code).to.equal(2);
      expect(both.stderr).to.include('leave nothing to serve');
      expect(relative.code).to.equal(2);
      expect(loud.code).to.equal(2);
      expect(loud.stderr).to.include('not a loopback address');
      expect(help.stdout).to.include('Usage: shed-ext serve').and.include('--auth-token-file');
    });

    it('cannot make its runtime directory: says how to fix it', async function () {
      if (!IS_ROOT) this.skip();
      const base = tempDir('shed-srv');
      fs.chmodSync(base, 0o755);
      const r = await run('setpriv', ['--reuid=1001', '--regid=1001', '--clear-groups', NODE, path.join(bundles.outDir, 'shed-ext.mjs'), 'serve',
        '--sock', path.join(base, 'run/a.sock'), '--auth-token-file', path.join(base, 'run/tok'), '--port', '0', '--publish-url', h.publishUrl('dev')],
      { env: BARE_ENV, cwd: '/' });
      expect(r.code).to.equal(1);
      expect(r.stderr).to.include(`cannot create ${path.join(base, 'run')} (EACCES): create it owned by the guest user`);
    });
  });
});
