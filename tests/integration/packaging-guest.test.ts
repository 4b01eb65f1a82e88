/**
 * Guest packaging: the esbuild bundles run with only node; `shed-ext
 * install-guest` lays an image root that is the same tree every time; the
 * units pass `systemd-analyze verify` inside that root; the token, the shell
 * snippet and the docker/containers config do what real clients need.
 */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { builtinModules } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { build } from 'esbuild';
import { bundleGuest, ENTRY_POINTS, type BundleResult } from '../../guest-services/bundle.js';
import { runCli } from '../../guest-services/status/cli.js';
import { bundleFile, EXTENSION_NAMESPACES, GUEST_BINARIES, LIB_DIR, MANIFEST_DIR } from '../../guest-services/status/install.js';
import { NAMESPACES } from '../../protocol/envelope.js';
import type { MemoryAudit } from '../../host-broker/audit/audit.js';
import { VERSION } from '../../protocol/version.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { REPO_ROOT, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';
import { readAsShedAgent } from '../support/shed-agent.js';

const NODE = process.execPath;
const NODE_DIR = path.dirname(NODE);
/** A guest's environment: no NODE_OPTIONS (no tsx), no NODE_PATH, nothing of this checkout. */
const BARE_ENV = { PATH: `${NODE_DIR}:/usr/bin:/bin`, HOME: '/nonexistent', LANG: 'C.UTF-8' };

const UNITS = ['shed-ext-ssh-agent.service', 'shed-ext-aws-token.service', 'shed-ext-aws-credentials.service', 'shed-ext-docker-credentials.service', 'shed-ext-git-credentials.service'];
/** The units that share /run/shed-extensions (the docker and git checks need no runtime directory). */
const RUNTIME_UNITS = UNITS.filter((u) => u !== 'shed-ext-docker-credentials.service' && u !== 'shed-ext-git-credentials.service');

interface Node {
  type: 'dir' | 'file' | 'link';
  mode: number;
  sha256?: string;
  target?: string;
  mtimeMs?: number;
}

/** Every path under `root` with its type, mode, content hash or link target (and mtime when asked). */
function snapshot(root: string, withMtime = false): Record<string, Node> {
  const out: Record<string, Node> = {};
  const walk = (dir: string) => {
    for (const name of fs.readdirSync(dir).sort()) {
      const full = path.join(dir, name);
      const rel = path.relative(root, full);
      const st = fs.lstatSync(full);
      const mode = st.mode & 0o7777;
      if (st.isSymbolicLink()) out[rel] = { type: 'link', mode: 0, target: fs.readlinkSync(full) };
      else if (st.isDirectory()) {
        out[rel] = { type: 'dir', mode };
        walk(full);
      } else {
        out[rel] = { type: 'file', mode, sha256: createHash('sha256').update(fs.readFileSync(full)).digest('hex') };
        if (withMtime) out[rel].mtimeMs = st.mtimeMs;
      }
    }
  };
  walk(root);
  return out;
}

describe('guest packaging', function () {
  this.timeout(60_000);
  let bundles: BundleResult;
  /** shed-ext.mjs in the bundle dir: install-guest finds the bundles beside itself. */
  let shedExtBundle: string;

  before(async function () {
    this.timeout(60_000);
    bundles = await bundleGuest({ outDir: path.join(tempDir('shed-pk'), 'guest') });
    shedExtBundle = path.join(bundles.outDir, 'shed-ext.mjs');
  });

  async function shedExt(args: string[], options: { env?: Record<string, string>; cwd?: string } = {}) {
    return run(NODE, [shedExtBundle, ...args], { env: { ...BARE_ENV, ...options.env }, cwd: options.cwd ?? '/' });
  }

  async function install(root: string, extra: string[] = []) {
    const r = await shedExt(['install-guest', '--root', root, ...extra]);
    expect(r.code, r.stderr).to.equal(0);
    return r;
  }

  describe('bundles', () => {
    it('are single files that import nothing but node built-ins', async () => {
      const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
      for (const name of GUEST_BINARIES) {
        const built = await build({
          entryPoints: [path.join(REPO_ROOT, ENTRY_POINTS[name])], bundle: true, platform: 'node', target: 'node20',
          format: bundleFile(name).endsWith('.cjs') ? 'cjs' : 'esm',
          write: false, metafile: true, logLevel: 'silent', outfile: path.join('/tmp', bundleFile(name)),
        });
        const externals = Object.values(built.metafile.outputs).flatMap((o) => o.imports.filter((i) => i.external).map((i) => i.path));
        const unexpected = externals.filter((p) => !builtins.has(p));
        expect(unexpected, name).to.deep.equal([]);
      }
    });

    it('are small: the ssh agent is a codec of its own, not ssh2 (at most 150 KiB)', () => {
      const agent = bundles.bundles.find((b) => b.name === 'shed-ext-ssh-agent')!;
      expect(agent.bytes, 'shed-ext-ssh-agent bundle bytes').to.be.at.most(150 * 1024);
      expect(agent.inputs.some((i) => i.includes('node_modules/ssh2'))).to.equal(false);
    });

    it('run from a bare directory with only node (no node_modules, no tsx)', async () => {
      const bare = tempDir('shed-bare');
      for (const name of GUEST_BINARIES) fs.copyFileSync(path.join(bundles.outDir, bundleFile(name)), path.join(bare, bundleFile(name)));
      expect(fs.existsSync('/tmp/node_modules') || fs.existsSync('/node_modules')).to.equal(false);
      const results = await Promise.all(GUEST_BINARIES.map((name) =>
        run(NODE, [path.join(bare, bundleFile(name)), '--help'], { env: BARE_ENV, cwd: bare })));
      GUEST_BINARIES.forEach((name, i) => {
        const r = results[i]!;
        expect(r.code, `${name}: ${r.stderr}`).to.equal(0);
        expect(r.stdout, name).to.match(new RegExp(`^Usage: ${name} `));
      });
      const version = await run(NODE, [path.join(bare, 'shed-ext.mjs'), 'version'], { env: BARE_ENV, cwd: bare });
      expect(version.stdout).to.equal(`shed-ext (shed-extensions) ${VERSION}\n`);
    });

    it('work for real: the bundled ssh agent serves ssh-add and the bundled shed-ext reports status', async () => {
      const dir = tempDir('shed-pk');
      const hostSock = path.join(dir, 'host-agent.sock');
      const hostAgent = spawnTracked('ssh-agent', ['-D', '-a', hostSock]);
      let h: Harness | undefined;
      let guestAgent: ReturnType<typeof spawnTracked> | undefined;
      try {
        await waitFor(() => fs.existsSync(hostSock), 5000, 'host ssh-agent');
        const key = path.join(dir, 'id_ed25519');
        expect((await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'bundle-test', '-f', key])).code).to.equal(0);
        expect((await run('ssh-add', [key], { env: { ...process.env, SSH_AUTH_SOCK: hostSock } })).code).to.equal(0);
        const fingerprint = (await run('ssh-keygen', ['-lf', `${key}.pub`])).stdout.split(' ')[1];
        h = await startDirectBroker({ policy: { version: 1, sheds: { dev: { ssh: { mode: 'agent-forward', agent_socket: hostSock } } } } });

        const guestSock = path.join(dir, 'guest-agent.sock');
        guestAgent = spawnTracked(NODE, [path.join(bundles.outDir, 'shed-ext-ssh-agent.mjs'), '--sock', guestSock, '--publish-url', h.publishUrl('dev')],
          { env: BARE_ENV, cwd: dir });
        await waitFor(() => fs.existsSync(guestSock), 10_000, 'bundled guest agent socket');
        const list = await run('ssh-add', ['-l'], { env: { PATH: '/usr/bin:/bin', SSH_AUTH_SOCK: guestSock } });
        expect(list.code, list.stderr).to.equal(0);
        expect(list.stdout).to.include(fingerprint).and.include('bundle-test');

        const status = await shedExt(['status', '--publish-url', h.publishUrl('dev')]);
        expect(status.stdout).to.include('ssh-agent: ✓ connected (agent-forward mode, 1 key available)\n');
      } finally {
        if (guestAgent) await stopProcess(guestAgent);
        await h?.stop();
        await stopProcess(hostAgent);
      }
    });
  });

  describe('install-guest', () => {
    it('twice into the same root gives the same tree, byte for byte, same modes, nothing rewritten', async () => {
      const root = path.join(tempDir('shed-root'), 'image');
      const first = await install(root);
      expect(first.stdout).to.match(/: 45 created, 0 updated, 0 unchanged\n/);
      const before = snapshot(root, true);
      const second = await install(root);
      expect(second.stdout).to.match(/: 0 created, 0 updated, 45 unchanged\n/);
      expect(snapshot(root, true)).to.deep.equal(before);

      // A fresh root gets the very same tree, and so does the CLI run from source with --from.
      const other = path.join(tempDir('shed-root'), 'image');
      await install(other);
      expect(snapshot(other)).to.deep.equal(snapshot(root));
      const fromSource = tempDir('shed-root');
      let err = '';
      const code = await runCli(['install-guest', '--root', fromSource, '--from', bundles.outDir], { stdout: () => undefined, stderr: (t) => (err += t), env: {} });
      expect(code, err).to.equal(0);
      expect(snapshot(fromSource)).to.deep.equal(snapshot(root));
    });

    it('lays the bundles, launchers, units, wants links and config with the right modes', async () => {
      const root = tempDir('shed-root');
      await install(root);
      const tree = snapshot(root);
      for (const name of GUEST_BINARIES) {
        expect(tree[`usr/local/lib/shed-extensions/${bundleFile(name)}`]).to.include({ type: 'file', mode: 0o644 });
        expect(tree[`usr/local/bin/${name}`]).to.include({ type: 'file', mode: 0o755 });
      }
      for (const unit of UNITS) {
        expect(tree[`usr/local/lib/systemd/system/${unit}`]).to.include({ type: 'file', mode: 0o644 });
        expect(tree[`etc/systemd/system/multi-user.target.wants/${unit}`]).to.deep.equal({ type: 'link', mode: 0, target: `/usr/local/lib/systemd/system/${unit}` });
      }
      for (const file of ['etc/environment.d/shed-extensions.conf', 'etc/profile.d/shed-extensions.sh', 'etc/skel/.docker/config.json',
        'etc/containers/registries.conf.d/50-shed-extensions.conf']) {
        expect(tree[file], file).to.include({ type: 'file', mode: 0o644 });
      }
      for (const [rel, node] of Object.entries(tree)) if (node.type === 'dir') expect(node.mode, rel).to.equal(0o755);
      expect(JSON.parse(fs.readFileSync(path.join(root, 'etc/skel/.docker/config.json'), 'utf8'))).to.deep.equal({ credsStore: 'shed' });
      const env = fs.readFileSync(path.join(root, 'etc/environment.d/shed-extensions.conf'), 'utf8');
      expect(env).to.include('SSH_AUTH_SOCK=/run/shed-extensions/ssh-agent.sock\n')
        .and.include('AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:499/credentials\n')
        .and.include('AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/run/shed-extensions/aws-token\n');
    });

    it('puts back what was changed, and nothing else', async () => {
      const root = tempDir('shed-root');
      await install(root);
      const pristine = snapshot(root);
      fs.appendFileSync(path.join(root, 'usr/local/lib/systemd/system/shed-ext-ssh-agent.service'), 'ExecStartPre=/bin/false\n');
      fs.chmodSync(path.join(root, 'usr/local/bin/shed-ext'), 0o777);
      fs.rmSync(path.join(root, 'etc/systemd/system/multi-user.target.wants/shed-ext-aws-token.service'));
      const r = await install(root);
      expect(r.stdout).to.match(/: 1 created, 2 updated, 42 unchanged\n/);
      expect(snapshot(root)).to.deep.equal(pristine);
    });

    it('--user sets the units\' user; refuses a bad user, a missing --root and a directory without bundles', async () => {
      const root = tempDir('shed-root');
      await install(root, ['--user', 'dev']);
      for (const unit of UNITS) {
        const text = fs.readFileSync(path.join(root, 'usr/local/lib/systemd/system', unit), 'utf8');
        expect(text, unit).to.match(/^User=dev$/m).and.not.match(/^User=shed$/m);
      }
      const [badUser, noRoot, noBundles] = await Promise.all([
        shedExt(['install-guest', '--root', root, '--user', 'Robert; rm -rf /']),
        shedExt(['install-guest']),
        shedExt(['install-guest', '--root', root, '--from', tempDir('shed-empty')]),
      ]);
      expect(badUser.code).to.equal(1);
      expect(badUser.stderr).to.include('is not a valid user name');
      expect(noRoot.code).to.equal(2);
      expect(noRoot.stderr).to.include('install-guest needs --root DIR');
      expect(noBundles.code).to.equal(1);
      expect(noBundles.stderr).to.include('does not hold the guest bundles').and.include('npm run bundle');
    });

    it('launchers exec the bundle with node, and say so when node is missing', async () => {
      const root = tempDir('shed-root');
      await install(root);
      const launcher = fs.readFileSync(path.join(root, 'usr/local/bin/shed-ext'), 'utf8');
      expect(launcher).to.match(/^#!\/bin\/sh\n/).and.include(`exec node ${LIB_DIR}/shed-ext.mjs "$@"\n`);
      // Point it at the bundle inside this root (it names the image's absolute path) and run it.
      const local = path.join(root, 'shed-ext-local');
      fs.writeFileSync(local, launcher.replaceAll(LIB_DIR, path.join(root, LIB_DIR)), { mode: 0o755 });
      const ok = await run(local, ['version'], { env: BARE_ENV });
      expect(ok.code, ok.stderr).to.equal(0);
      expect(ok.stdout).to.equal(`shed-ext (shed-extensions) ${VERSION}\n`);
      const noNode = await run('/bin/sh', [local, 'version'], { env: { PATH: '/nonexistent' } });
      expect(noNode.code).to.equal(127);
      expect(noNode.stderr).to.include('shed-ext: node (Node.js 20 or newer) is not installed or not on PATH');
    });
  });

  describe('systemd', () => {
    it('systemd-analyze verify passes on every guest unit inside an installed root', async () => {
      const root = tempDir('shed-root');
      await install(root);
      // The targets and units the guest units order against, as the image's systemd ships them.
      fs.mkdirSync(path.join(root, 'usr/lib/systemd'), { recursive: true });
      fs.cpSync('/lib/systemd/system', path.join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
      for (const unit of UNITS) {
        const r = await run('systemd-analyze', ['verify', '--man=no', `--root=${root}`, unit]);
        expect(`${r.stdout}${r.stderr}`, unit).to.equal('');
        expect(r.code, unit).to.equal(0);
      }
      // And verify fails when a launcher is missing: the check is real.
      fs.rmSync(path.join(root, 'usr/local/bin/shed-ext-ssh-agent'));
      const missing = await run('systemd-analyze', ['verify', '--man=no', `--root=${root}`, 'shed-ext-ssh-agent.service']);
      expect(missing.code).to.equal(1);
      expect(missing.stderr).to.include('/usr/local/bin/shed-ext-ssh-agent is not executable');
    });

    it('the units run as the service user, hardened, with port 499 allowed and ordered after shed-agent', () => {
      const unit = (name: string) => fs.readFileSync(path.join(REPO_ROOT, 'systemd/guest', name), 'utf8');
      for (const name of UNITS) {
        const text = unit(name);
        const lines = ['User=shed', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes', 'UMask=0077',
          ...(RUNTIME_UNITS.includes(name) ? ['RuntimeDirectory=shed-extensions', 'RuntimeDirectoryPreserve=yes'] : [])];
        for (const line of lines) {
          expect(text, `${name}: ${line}`).to.match(new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
        }
        // Journal lines under the program's name, not the launcher's node or env.
        expect(text, name).to.match(new RegExp(`^SyslogIdentifier=${name.replace('.service', '')}$`, 'm'));
      }
      // The docker helper's unit only checks, once per boot, that the helper runs; it stays active for shed-agent.
      expect(unit('shed-ext-docker-credentials.service')).to.match(/^Type=oneshot$/m).and.match(/^RemainAfterExit=yes$/m)
        .and.match(/^ExecStart=\/usr\/local\/bin\/docker-credential-shed version$/m).and.match(/^PrivateNetwork=yes$/m);
      // So does the git helper's.
      expect(unit('shed-ext-git-credentials.service')).to.match(/^Type=oneshot$/m).and.match(/^RemainAfterExit=yes$/m)
        .and.match(/^ExecStart=\/usr\/local\/bin\/git-credential-shed version$/m).and.match(/^PrivateNetwork=yes$/m);
      for (const name of ['shed-ext-ssh-agent.service', 'shed-ext-aws-credentials.service']) {
        expect(unit(name)).to.match(/^Restart=always$/m).and.match(/^After=shed-agent\.service/m).and.match(/^Wants=shed-agent\.service$/m)
          .and.match(/^RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6$/m);
      }
      expect(unit('shed-ext-aws-credentials.service')).to.match(/^AmbientCapabilities=CAP_NET_BIND_SERVICE$/m)
        .and.match(/^Requires=shed-ext-aws-token\.service$/m).and.include('--port 499').and.include('--auth-token-file /run/shed-extensions/aws-token');
      expect(unit('shed-ext-ssh-agent.service')).to.match(/^CapabilityBoundingSet=$/m);
    });

    it('the host user unit verifies, and the launchd plist parses', async () => {
      const runtime = tempDir('shed-xdg');
      const r = await run('systemd-analyze', ['verify', '--user', '--man=no', path.join(REPO_ROOT, 'systemd/host/shed-host-agent.service')],
        { env: { ...process.env, XDG_RUNTIME_DIR: runtime, HOME: runtime } });
      expect(`${r.stdout}${r.stderr}`).to.equal('');
      expect(r.code).to.equal(0);
      const plist = await run('/usr/bin/python3', ['-c', 'import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], "rb"))))',
        path.join(REPO_ROOT, 'systemd/host/dev.shed.host-agent.plist')]);
      expect(plist.code, plist.stderr).to.equal(0);
      const doc = JSON.parse(plist.stdout);
      expect(doc.Label).to.equal('dev.shed.host-agent');
      expect(doc.ProgramArguments[2]).to.match(/^exec shed-host-agent run /);
      expect(doc).to.include({ RunAtLoad: true, Umask: 0o077 });
    });
  });

  describe('extension manifests, read as shed-agent reads them', () => {
    const ALL = [...EXTENSION_NAMESPACES];
    const expected = {
      'ssh-agent': 'shed-ext-ssh-agent.service',
      'aws-credentials': 'shed-ext-aws-credentials.service',
      'docker-credentials': 'shed-ext-docker-credentials.service',
      'git-credentials': 'shed-ext-git-credentials.service',
    };

    it('install-guest (bundled and from source) writes one per namespace that shed-agent accepts and enables, with nothing to warn about', async () => {
      expect(ALL).to.deep.equal([...NAMESPACES]);
      const bundled = tempDir('shed-root');
      await install(bundled);
      const fromSource = tempDir('shed-root');
      let err = '';
      expect(await runCli(['install-guest', '--root', fromSource, '--from', bundles.outDir], { stdout: () => undefined, stderr: (t) => (err += t), env: {} }), err).to.equal(0);
      for (const root of [bundled, fromSource]) {
        const dir = path.join(root, MANIFEST_DIR);
        expect(fs.statSync(dir).mode & 0o7777).to.equal(0o755);
        // shed-server's doctor looks for <name>.yaml; shed-agent keys by the namespace inside: both agree.
        expect(fs.readdirSync(dir).sort()).to.deep.equal(ALL.map((ns) => `${ns}.yaml`).sort());
        const seen = await readAsShedAgent(dir, ALL);
        expect(seen.warnings).to.deep.equal([]);
        expect(seen.missing).to.deep.equal([]);
        for (const ns of ALL) {
          expect(seen.manifests[ns], ns).to.deep.include({ file: `${ns}.yaml`, namespace: ns, systemd_unit: expected[ns] });
          expect(seen.manifests[ns]!.description, ns).to.match(/host/);
          const file = path.join(dir, `${ns}.yaml`);
          expect(fs.statSync(file).mode & 0o7777).to.equal(0o644);
          expect(fs.readFileSync(file)).to.deep.equal(fs.readFileSync(path.join(REPO_ROOT, 'systemd/guest/shed-extensions.d', `${ns}.yaml`)));
        }
        expect(seen.enable).to.deep.equal(ALL.map((ns) => ({ namespace: ns, command: ['systemctl', 'enable', '--now', expected[ns]] })));
        // A server that enables only some: only those.
        const some = await readAsShedAgent(dir, ['ssh-agent', 'op']);
        expect(some.enable.map((e) => e.namespace)).to.deep.equal(['ssh-agent']);
        expect(some.missing).to.deep.equal(['op']);
      }
    });

    it('each unit a manifest names exists in the root and `systemctl enable` makes exactly the links install-guest laid', async () => {
      const root = tempDir('shed-root');
      await install(root);
      fs.mkdirSync(path.join(root, 'usr/lib/systemd'), { recursive: true });
      fs.cpSync('/lib/systemd/system', path.join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
      const wants = path.join(root, 'etc/systemd/system/multi-user.target.wants');
      const laid = snapshot(wants);
      fs.rmSync(wants, { recursive: true });
      const seen = await readAsShedAgent(path.join(root, MANIFEST_DIR), ALL);
      for (const { command } of seen.enable) {
        // shed-agent's `systemctl enable --now UNIT`, without --now (no systemd runs here), on the image root.
        const r = await run('systemctl', [`--root=${root}`, 'enable', command[3]!]);
        expect(r.code, `${command.join(' ')}: ${r.stderr}`).to.equal(0);
        expect(r.stderr, command.join(' ')).not.to.match(/non-existent|not found|Failed/);
      }
      // The token unit comes in through the AWS unit's Requires= when started; install-guest enables it too.
      const r = await run('systemctl', [`--root=${root}`, 'enable', 'shed-ext-aws-token.service']);
      expect(r.code, r.stderr).to.equal(0);
      expect(snapshot(wants)).to.deep.equal(laid);
    });

    it('the docker helper\'s check runs as its unit runs it: `docker-credential-shed version` through the installed launcher', async () => {
      const root = tempDir('shed-root');
      await install(root);
      const launcher = fs.readFileSync(path.join(root, 'usr/local/bin/docker-credential-shed'), 'utf8');
      const local = path.join(root, 'docker-credential-shed-local');
      fs.writeFileSync(local, launcher.replaceAll(LIB_DIR, path.join(root, LIB_DIR)), { mode: 0o755 });
      const ok = await run(local, ['version'], { env: BARE_ENV });
      expect(ok.code, ok.stderr).to.equal(0);
      expect(ok.stdout).to.include(VERSION);
      // No node: the unit fails, and shed-agent reports the extension's guest side as failed.
      const noNode = await run('/bin/sh', [local, 'version'], { env: { PATH: '/nonexistent' } });
      expect(noNode.code).to.equal(127);
    });

    it('the reader holds shed-agent\'s rules: what it skips, and how (so the checks above can fail)', async () => {
      const dir = tempDir('shed-man');
      const write = (name: string, text: string) => fs.writeFileSync(path.join(dir, name), text);
      // The original shed-extensions' docker manifest: no systemd_unit. shed-agent skips it.
      write('docker-credentials.yaml', 'namespace: docker-credentials\ndescription: Docker registry credential brokering via shed message bus\n');
      write('ssh-agent.yml', 'namespace: ssh-agent\nsystemd_unit: a.service\n'); // not .yaml: never read
      write('aws-credentials.yaml', 'namespace: aws-credentials\nnamespace: again\nsystemd_unit: b.service\n'); // duplicate key: yaml.v3 refuses
      write('a-first.yaml', 'namespace: ssh-agent\nsystemd_unit: first.service\nunknown_key: ignored\n');
      write('b-second.yaml', 'namespace: ssh-agent\nsystemd_unit: second.service\n'); // same namespace later: skipped
      write('list.yaml', '- namespace: x\n');
      write('empty.yaml', '');
      write('typed.yaml', 'namespace: 42\nsystemd_unit: yes\n'); // scalars are taken as their text
      fs.mkdirSync(path.join(dir, 'sub.yaml'));
      fs.symlinkSync(path.join(dir, 'a-first.yaml'), path.join(dir, 'z-link.yaml'));
      const seen = await readAsShedAgent(dir, ['docker-credentials', 'ssh-agent', 'aws-credentials', '42']);
      expect(Object.keys(seen.manifests).sort()).to.deep.equal(['42', 'ssh-agent']);
      expect(seen.manifests['ssh-agent']).to.deep.include({ file: 'a-first.yaml', systemd_unit: 'first.service' });
      expect(seen.manifests['42']).to.deep.include({ systemd_unit: 'yes' });
      expect(seen.missing).to.deep.equal(['docker-credentials', 'aws-credentials']);
      const warned = (file: string) => seen.warnings.filter((w) => w.startsWith(`${file}: `));
      expect(warned('docker-credentials.yaml')).to.deep.equal(['docker-credentials.yaml: empty systemd_unit, skipped']);
      expect(warned('aws-credentials.yaml')[0]).to.match(/mapping key "namespace" already defined/);
      expect(warned('b-second.yaml')[0]).to.match(/namespace "ssh-agent" already has a manifest/);
      expect(warned('z-link.yaml')[0]).to.match(/already has a manifest/);
      expect(warned('list.yaml')[0]).to.match(/cannot unmarshal !!seq/);
      expect(warned('empty.yaml')).to.deep.equal(['empty.yaml: empty namespace, skipped']);
      expect(seen.warnings.some((w) => w.includes('ssh-agent.yml') || w.includes('sub.yaml'))).to.equal(false);
      // No directory at all is no manifest, not an error.
      const none = await readAsShedAgent(path.join(dir, 'nope'), ['ssh-agent']);
      expect(none).to.deep.equal({ manifests: {}, warnings: ['no extension manifests found'], enable: [], missing: ['ssh-agent'] });
    });
  });

  describe('the AWS token and the shell snippet', () => {
    it('init-token writes a 0600 token without a newline, keeps a good one, replaces a bad one, refuses a symlink', async () => {
      const dir = tempDir('shed-tok');
      const file = path.join(dir, 'aws-token');
      const first = await shedExt(['init-token', file]);
      expect(first.code, first.stderr).to.equal(0);
      const token = fs.readFileSync(file, 'latin1');
      expect(token).to.match(/^[A-Za-z0-9_-]{43}$/);
      expect(fs.statSync(file).mode & 0o777).to.equal(0o600);
      expect(first.stderr).not.to.include(token);

      expect((await shedExt(['init-token', file])).code).to.equal(0);
      expect(fs.readFileSync(file, 'latin1')).to.equal(token);

      fs.writeFileSync(file, `${token}\n`);
      expect((await shedExt(['init-token', file])).code).to.equal(0);
      const replaced = fs.readFileSync(file, 'latin1');
      expect(replaced).to.match(/^[A-Za-z0-9_-]{43}$/).and.not.equal(token);

      const link = path.join(dir, 'link-token');
      fs.symlinkSync(file, link);
      const refused = await shedExt(['init-token', link]);
      expect(refused.code).to.equal(1);
      expect(refused.stderr).to.include('is not a regular file');
      expect(fs.readFileSync(file, 'latin1')).to.equal(replaced);
      expect((await shedExt(['init-token', 'relative/token'])).code).to.equal(1);
    });

    it('profile.d exports the socket, the endpoint and the token itself for older AWS clients, keeping what is set', async () => {
      const root = tempDir('shed-root');
      await install(root);
      const runDir = tempDir('shed-run');
      expect((await shedExt(['init-token', path.join(runDir, 'aws-token')])).code).to.equal(0);
      const snippet = fs.readFileSync(path.join(root, 'etc/profile.d/shed-extensions.sh'), 'utf8');
      expect(snippet).to.include('shed_ext_run=/run/shed-extensions\n');
      const local = path.join(runDir, 'snippet.sh');
      fs.writeFileSync(local, snippet.replace('shed_ext_run=/run/shed-extensions', `shed_ext_run=${runDir}`));
      const show = `. ${local}; for v in SSH_AUTH_SOCK AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE AWS_CONTAINER_AUTHORIZATION_TOKEN shed_ext_run; `
        + 'do printf "%s=%s|\\n" "$v" "$(printenv "$v")"; done';
      const fresh = await run('/bin/sh', ['-euc', show], { env: { PATH: '/usr/bin:/bin' } });
      expect(fresh.code, fresh.stderr).to.equal(0);
      expect(fresh.stdout).to.equal([
        `SSH_AUTH_SOCK=${runDir}/ssh-agent.sock|`,
        'AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:499/credentials|',
        `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=${runDir}/aws-token|`,
        `AWS_CONTAINER_AUTHORIZATION_TOKEN=${fs.readFileSync(path.join(runDir, 'aws-token'), 'latin1')}|`,
        'shed_ext_run=|',
        '',
      ].join('\n'));
      const kept = await run('/bin/sh', ['-euc', show], { env: { PATH: '/usr/bin:/bin', SSH_AUTH_SOCK: '/tmp/forwarded.sock', AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://127.0.0.1:9/x' } });
      expect(kept.stdout).to.include('SSH_AUTH_SOCK=/tmp/forwarded.sock|').and.include('AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9/x|')
        .and.include('AWS_CONTAINER_AUTHORIZATION_TOKEN=|');
    });
  });

  describe('the guest registry config drives real clients to docker-credential-shed', () => {
    let h: Harness;
    let guest: string;
    const registry = '127.0.0.1:9';

    before(async () => {
      const dir = tempDir('shed-pk');
      const hostConfig = path.join(dir, 'host-docker.json');
      fs.writeFileSync(hostConfig, JSON.stringify({ auths: { [registry]: { auth: Buffer.from('alice:pk-SECRET-3f9e').toString('base64') } } }), { mode: 0o600 });
      h = await startDirectBroker({ policy: { version: 1, sheds: { dev: { docker: { registries: [registry], config_path: hostConfig } } } } });
      const root = tempDir('shed-root');
      await install(root);
      // The installed launcher, pointed at this root's bundle, as docker-credential-shed on PATH.
      guest = path.join(dir, 'bin');
      fs.mkdirSync(guest);
      const launcher = fs.readFileSync(path.join(root, 'usr/local/bin/docker-credential-shed'), 'utf8');
      fs.writeFileSync(path.join(guest, 'docker-credential-shed'), launcher.replaceAll(LIB_DIR, path.join(root, LIB_DIR)), { mode: 0o755 });
      fs.cpSync(path.join(root, 'etc'), path.join(dir, 'etc'), { recursive: true });
      guest = dir;
    });
    after(async () => {
      await h?.stop();
    });

    function guestEnv(): Record<string, string> {
      return {
        PATH: `${path.join(guest, 'bin')}:${NODE_DIR}:/usr/bin:/bin:/usr/local/bin`, HOME: path.join(guest, 'home'),
        SHED_PUBLISH_URL: h.publishUrl('dev'), REGISTRY_AUTH_FILE: path.join(guest, 'auth.json'),
      };
    }
    const gets = () => (h.audit as MemoryAudit).entries.filter((e) => e.ns === 'docker-credentials' && e.op === 'get' && e.shed === 'dev');

    it('skopeo, through registries.conf.d/50-shed-extensions.conf', async () => {
      const before = gets().length;
      const r = await run('skopeo', ['--registries-conf', path.join(guest, 'etc/containers/registries.conf.d/50-shed-extensions.conf'),
        '--insecure-policy', 'inspect', '--tls-verify=false', `docker://${registry}/test/hello:v1`], { env: { ...guestEnv(), DOCKER_CONFIG: path.join(guest, 'nodocker') } });
      expect(r.code).to.equal(1);
      // It got the credentials and went on to the (closed) registry.
      expect(r.stderr).to.include('connection refused').and.not.include('pk-SECRET');
      expect(gets().length).to.be.above(before);
      expect(gets().at(-1)).to.include({ result: 'ok' });
    });

    it('the docker CLI, through /etc/skel/.docker/config.json (credsStore)', async function () {
      const docker = ['/usr/local/bin/docker', '/usr/bin/docker'].find((p) => fs.existsSync(p));
      if (!docker) this.skip();
      const before = gets().length;
      const r = await run(docker!, ['--config', path.join(guest, 'etc/skel/.docker'), 'manifest', 'inspect', '--insecure', `${registry}/test/hello:v1`], { env: guestEnv() });
      expect(r.code).to.equal(1);
      expect(r.stderr).to.include('connection refused').and.not.include('pk-SECRET');
      expect(gets().length).to.be.above(before);
      expect(gets().at(-1)).to.include({ result: 'ok' });
    });
  });
});
