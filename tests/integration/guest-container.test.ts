/**
 * Issue 16's "done when", for real: a guest root built offline here
 * (tests/support/guest-container.ts), the guest side installed into it from
 * the guest tarball by `install.sh` (`shed-ext install-guest
 * --publish-url unix:/run/shed-bus/bus.sock`), the shed's directory mounted
 * at /run/shed-bus, and a real `shed-host-agent run` on the host, as uid 1000
 * (the guest user's uid: the socket opens only for its owner), with a real
 * ssh-agent, the SigV4-checking test STS and a Docker config behind it.
 *
 * The containers use the host's network (`--network host`): the guest's ssh
 * reaches the test sshd and its AWS CLI the test STS on the host's loopback,
 * and the test reaches the guest's sshd there. Ports are picked free, so the
 * guest's AWS endpoint gets one too (`--aws-port`).
 *
 * In each guest, from a login shell and as a non-login command: `ssh-add
 * -l`, `ssh` to the test sshd through the agent, `aws sts
 * get-caller-identity`, a docker credential `get`, `shed-ext status`; then
 * the broker restarts and all of it works again, the guest untouched.
 *  - systemd as PID 1, the units with their hardening (the container may set
 *    up namespaces, as a VM does), sessions over the guest's sshd;
 *  - no systemd: `shed-ext serve` is the container's command (PID 1),
 *    sessions through `podman exec`, and SIGTERM stops it at once;
 *  - the Dev Container Feature: its install.sh and entrypoint, as the
 *    devcontainer CLI runs them, with its containerEnv.
 */
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { packageGuest, tarballName } from '../../guest-services/package-guest.js';
import { ROLE_DEV, startAwsHost, type AwsHostFixture } from '../support/aws-fixtures.js';
import {
  containerRuntime, guestRoot, parseSections, removeAllContainers, sectionScript, startContainer, systemState,
  type Container, type Runtime, type Section,
} from '../support/guest-container.js';
import { binCommand, capture, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';
import { freePort, makeKey, startSshd, type KeyPair, type Sshd } from '../support/sshd.js';

/** The uid shed-host-agent runs as here, and so the guest user's. */
const UID = 1000;
const SHED = 'dev';
const MOUNT = '/run/shed-bus';
const REGISTRY = 'registry.test:5000';
const REGISTRY_SECRET = 'reg-pw/DoNotLeak-5e1f';
const ASSUMED = new RegExp(`^arn:aws:sts::123456789012:assumed-role/dev/shed-${SHED}-\\d{10}$`);
const SSH_OPTS = '-F none -o BatchMode=yes -o LogLevel=ERROR -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10';

describe('a real guest, installed by install-guest --publish-url, against a running broker', function () {
  this.timeout(120_000);
  let rt: Runtime;
  let root: string;
  let guestDir: string;
  let setupDir: string;
  let hostDir: string;
  let aws: AwsHostFixture;
  let hostSshd: Sshd;
  let hostKey: KeyPair;
  let guestKey: KeyPair;
  let agent: ChildProcess;
  let broker: ChildProcess | undefined;
  let brokerOut: ReturnType<typeof capture>;
  const restarts = { count: 0 };

  const chownTree = (dir: string) => {
    for (const rel of ['', ...fs.readdirSync(dir, { recursive: true, encoding: 'utf8' })]) fs.lchownSync(path.join(dir, rel), UID, UID);
  };
  const asUser = (cmd: string, args: string[]): [string, string[]] => ['setpriv', [`--reuid=${UID}`, `--regid=${UID}`, '--clear-groups', '--', cmd, ...args]];

  async function startBroker(): Promise<void> {
    const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', path.join(hostDir, 'extensions.yaml')]);
    const [setpriv, argv] = asUser(cmd, args);
    broker = spawnTracked(setpriv, argv, {
      cwd: hostDir,
      env: {
        PATH: process.env.PATH, HOME: hostDir, LANG: 'C.UTF-8', SSH_AUTH_SOCK: path.join(hostDir, 'agent.sock'),
        AWS_CONFIG_FILE: path.join(hostDir, 'aws-config'), AWS_SHARED_CREDENTIALS_FILE: path.join(hostDir, 'aws-credentials'),
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      },
    });
    brokerOut = capture(broker);
    const b = broker;
    await waitFor(() => /shed-host-agent ready/.test(brokerOut.stderr()) || b.exitCode !== null, 60_000, 'shed-host-agent to start');
    expect(b.exitCode, brokerOut.stderr()).to.equal(null);
  }

  async function restartBroker(): Promise<void> {
    const code = await stopProcess(broker!, 10_000);
    expect(code, brokerOut.stderr()).to.equal(0);
    restarts.count += 1;
    await startBroker();
  }

  before(async function () {
    this.timeout(20 * 60_000);
    const runtime = await containerRuntime();
    if ('skip' in runtime) {
      process.stderr.write(`      skipped: ${runtime.skip}\n`);
      this.test!.parent!.title += ` (skipped: ${runtime.skip})`;
      this.skip();
    }
    rt = runtime as Runtime;
    root = await guestRoot((line) => process.stderr.write(`      ${line}\n`));

    // The guest tarball, unpacked as an image builder would.
    const pkg = await packageGuest({ outDir: tempDir('shed-gpkg') });
    guestDir = tempDir('shed-guest');
    const untar = await run('tar', ['-xzf', pkg.tarball, '-C', guestDir]);
    expect(untar.code, untar.stderr).to.equal(0);
    guestDir = path.join(guestDir, tarballName());

    // The host, as uid 1000: its policy, its ssh-agent with a key, AWS source keys, a Docker config.
    hostDir = tempDir('shed-ghost');
    hostKey = await makeKey(hostDir, 'id_ed25519', 'ed25519');
    aws = await startAwsHost();
    fs.copyFileSync(aws.configFile, path.join(hostDir, 'aws-config'));
    fs.copyFileSync(aws.credentialsFile, path.join(hostDir, 'aws-credentials'));
    fs.writeFileSync(path.join(hostDir, 'docker.json'), JSON.stringify({ auths: { [REGISTRY]: { auth: Buffer.from(`alice:${REGISTRY_SECRET}`).toString('base64') } } }), { mode: 0o600 });
    fs.writeFileSync(path.join(hostDir, 'extensions.yaml'), [
      'version: 1',
      `direct: { sockets_dir: ${path.join(hostDir, 'socks')} }`,
      `audit: { dir: ${path.join(hostDir, 'audit')} }`,
      'sheds:',
      `  ${SHED}:`,
      '    ssh: { mode: agent-forward }',
      `    aws: { role: '${ROLE_DEV}', sts_endpoint: '${aws.sts.url}', region: us-east-1 }`,
      `    docker: { registries: ['${REGISTRY}'], config_path: ${path.join(hostDir, 'docker.json')} }`,
      '',
    ].join('\n'), { mode: 0o600 });
    chownTree(hostDir);
    const [setpriv, argv] = asUser('ssh-agent', ['-D', '-a', path.join(hostDir, 'agent.sock')]);
    agent = spawnTracked(setpriv, argv, { env: { PATH: '/usr/bin:/bin' } });
    await waitFor(() => fs.existsSync(path.join(hostDir, 'agent.sock')), 10_000, 'the host ssh-agent');
    const added = await run(...asUser('ssh-add', [hostKey.file]), { env: { PATH: '/usr/bin:/bin', SSH_AUTH_SOCK: path.join(hostDir, 'agent.sock') } });
    expect(added.code, added.stderr).to.equal(0);
    await startBroker();
    expect(fs.statSync(path.join(hostDir, 'socks', SHED, 'bus.sock')).uid).to.equal(UID);

    // A server the guest logs in to with the host's key, through its agent.
    hostSshd = await startSshd(tempDir('shed-gsshd'), [hostKey.pubLine]);

    // What each container runs first: the install, as an image build would, then its own command.
    setupDir = tempDir('shed-gsetup');
    guestKey = await makeKey(setupDir, 'guest_key', 'ed25519');
    fs.chmodSync(guestKey.pubFile, 0o644);
    fs.writeFileSync(path.join(setupDir, 'setup.sh'), `#!/bin/sh
set -eu
mode=$1
/opt/shed-guest/install.sh --publish-url unix:${MOUNT}/bus.sock --uid ${UID} --aws-port "$AWS_PORT"
case "$mode" in
systemd)
  printf 'Port %s\\nListenAddress 127.0.0.1\\nPasswordAuthentication no\\n' "$GUEST_SSH_PORT" > /etc/ssh/sshd_config.d/10-test.conf
  install -d -o shed -g shed -m 0700 /home/shed/.ssh
  install -o shed -g shed -m 0600 /opt/shed-setup/pub/guest_key.pub /home/shed/.ssh/authorized_keys
  exec /sbin/init ;;
serve)
  exec setpriv --reuid=shed --regid=shed --init-groups /usr/local/bin/shed-ext serve --port "$AWS_PORT" ;;
esac
`, { mode: 0o755 });
  });

  after(async () => {
    await removeAllContainers();
    if (broker) await stopProcess(broker);
    if (agent) await stopProcess(agent);
    await hostSshd?.stop();
    await aws?.stop();
  });

  const mounts = () => [
    '-v', `${guestDir}:/opt/shed-guest:ro`, '-v', `${setupDir}:/opt/shed-setup:ro`, '-v', `${path.join(hostDir, 'socks', SHED)}:${MOUNT}`,
  ];

  /** What every session must be able to do, each command's output marked. */
  function commands(withAws = true): Record<string, string> {
    return {
      shell: 'shopt -q login_shell && echo login || echo non-login',
      'ssh-add': 'ssh-add -l',
      'ssh-host': `ssh ${SSH_OPTS} -p ${hostSshd.port} root@127.0.0.1 echo logged-in-through-the-shed-agent`,
      ...(withAws ? { aws: `aws sts get-caller-identity --endpoint-url ${aws.sts.url} --region us-east-1 --output json` } : {}),
      docker: `printf %s ${REGISTRY} | docker-credential-shed get`,
      status: 'shed-ext status',
    };
  }

  function checkSession(s: Record<string, Section>, shell: 'login' | 'non-login', withAws = true): void {
    const all = JSON.stringify(s, null, 1);
    expect(s.shell?.out.trim(), all).to.equal(shell);
    expect(s['ssh-add'], all).to.include({ code: 0 });
    expect(s['ssh-add']!.out).to.include(hostKey.fingerprint).and.include('id_ed25519@test');
    expect(s['ssh-host'], all).to.deep.equal({ code: 0, out: 'logged-in-through-the-shed-agent\n' });
    if (withAws) {
      expect(s.aws, all).to.include({ code: 0 });
      expect(JSON.parse(s.aws!.out).Arn).to.match(ASSUMED);
    }
    expect(s.docker, all).to.include({ code: 0 });
    expect(JSON.parse(s.docker!.out)).to.deep.equal({ ServerURL: REGISTRY, Username: 'alice', Secret: REGISTRY_SECRET });
    expect(s.status, all).to.include({ code: 0 });
    expect(s.status!.out).to.match(/^ssh-agent: ✓ connected \(agent-forward mode, 1 key available\)$/m)
      .and.match(/^aws-credentials: ✓ connected \(role arn:aws:iam::123456789012:role\/dev/m)
      .and.match(/^docker-credentials: ✓ connected \(1 registry\)$/m)
      .and.not.include('shed-agent');
  }

  /** Nothing the broker handed out is in what the guest logged. */
  function checkNoSecrets(text: string): void {
    for (const secret of [REGISTRY_SECRET, ...aws.sts.issued.flatMap((i) => [i.secretAccessKey, i.sessionToken])]) {
      expect(text.includes(secret), 'a secret in the guest\'s logs').to.equal(false);
    }
  }

  describe('systemd as PID 1', () => {
    let guest: Container;
    let sshPort: number;

    before(async function () {
      this.timeout(180_000);
      sshPort = await freePort();
      guest = await startContainer(rt, root, [
        '--systemd=always', '--network', 'host',
        // Mount namespaces, as a VM has: the units' PrivateTmp/ProtectHome/ProtectSystem take effect.
        '--cap-add', 'SYS_ADMIN',
        '-e', `AWS_PORT=${await freePort()}`, '-e', `GUEST_SSH_PORT=${sshPort}`, ...mounts(),
        // The same directory where PrivateTmp= and ProtectHome= hide it, for the drop-ins that bind it back.
        '-v', `${path.join(hostDir, 'socks', SHED)}:/tmp/shed-bus`, '-v', `${path.join(hostDir, 'socks', SHED)}:/home/shed-bus`,
      ], ['/bin/sh', '/opt/shed-setup/setup.sh', 'systemd']);
      const state = await systemState(guest);
      const failed = await guest.exec(['systemctl', '--failed', '--no-legend', '--plain']);
      expect(state, `${failed.stdout}\n${await guest.logs()}`).to.equal('running');
      await waitFor(async () => (await guest.exec(['test', '-S', '/run/shed-extensions/ssh-agent.sock'])).code === 0, 30_000, 'the guest ssh agent');
    });
    after(async () => {
      await guest?.remove();
    });

    const ssh = (script: string, login: boolean) => run('ssh', [
      ...SSH_OPTS.split(' '), '-i', guestKey.file, '-p', String(sshPort), `shed@127.0.0.1`, ...(login ? ['-T'] : ['bash -s']),
    ], { input: script, env: { PATH: '/usr/bin:/bin', HOME: setupDir }, timeoutMs: 90_000 });

    it('install-guest made the image whole: the user, the units with their hardening and drop-ins, journal names', async () => {
      const r = await guest.exec(['sh', '-c', [
        'id shed',
        'systemctl show -p ActiveState -p User -p PrivateTmp -p ProtectHome -p Environment shed-ext-ssh-agent shed-ext-aws-credentials',
        'systemctl show -p ActiveState shed-ext-aws-token',
        'journalctl -q --no-pager -t shed-ext-ssh-agent -t shed-ext-aws-credentials -t shed-ext-aws-token -o cat',
        'stat -c "%U %a" /run/shed-extensions.sshd.conf /run/shed-extensions/aws-token',
      ].join('; ')]);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.include(`uid=${UID}(shed) gid=${UID}(shed)`);
      expect(r.stdout.match(/^ActiveState=active$/gm)).to.have.length(3);
      expect(r.stdout.match(/^User=shed$/gm)).to.have.length(2);
      expect(r.stdout.match(/^PrivateTmp=yes$/gm)).to.have.length(2);
      expect(r.stdout.match(/^ProtectHome=yes$/gm)).to.have.length(2);
      expect(r.stdout.match(new RegExp(`^Environment=SHED_PUBLISH_URL=unix:${MOUNT}/bus.sock$`, 'gm'))).to.have.length(2);
      expect(r.stdout).to.include('serving SSH agent on /run/shed-extensions/ssh-agent.sock').and.include('serving AWS credentials at')
        .and.include('created AWS endpoint token').and.include('wrote sshd\'s environment for shed');
      expect(r.stdout).to.include('root 600\nshed 600\n');
    });

    it('a mount under /tmp or /home reaches the hardened units through the drop-in install-guest writes for it, and not without', async () => {
      // The agent unit as installed, under another name and socket, with the drop-in `install-guest --publish-url` makes for that path.
      const probe = (where: string, bind: boolean) => [
        `n=shed-ext-probe-${where}${bind ? '' : '-nobind'}`,
        `node /opt/shed-guest/shed-ext.mjs install-guest --root /tmp/probe-$n --publish-url unix:/${where}/shed-bus/bus.sock >/dev/null`,
        `sed -e "s#/run/shed-extensions/ssh-agent.sock#/run/$n/agent.sock#" -e "s#^RuntimeDirectory=.*#RuntimeDirectory=$n#" /usr/local/lib/systemd/system/shed-ext-ssh-agent.service > /etc/systemd/system/$n.service`,
        'mkdir -p /etc/systemd/system/$n.service.d',
        `grep -v ${bind ? "'^$'" : "-e BindReadOnlyPaths -e ProtectHome"} /tmp/probe-$n/etc/systemd/system/shed-ext-ssh-agent.service.d/50-shed-publish-url.conf > /etc/systemd/system/$n.service.d/50.conf`,
      ].join('\n');
      const setup = await guest.exec(['sh', '-euc', [probe('tmp', true), probe('home', true), probe('tmp', false), probe('home', false),
        'systemctl daemon-reload', 'systemctl start shed-ext-probe-tmp shed-ext-probe-home shed-ext-probe-tmp-nobind shed-ext-probe-home-nobind',
        'cat /etc/systemd/system/shed-ext-probe-home.service.d/50.conf'].join('\n')]);
      expect(setup.code, setup.stderr).to.equal(0);
      expect(setup.stdout).to.include('ProtectHome=tmpfs\nBindReadOnlyPaths=-/home/shed-bus\n');
      for (const name of ['tmp', 'home', 'tmp-nobind', 'home-nobind']) {
        const sock = `/run/shed-ext-probe-${name}/agent.sock`;
        await waitFor(async () => (await guest.exec(['test', '-S', sock])).code === 0, 30_000, `the ${name} probe agent`);
        const list = await guest.exec(['ssh-add', '-l'], { user: 'shed', env: { SSH_AUTH_SOCK: sock } });
        if (name.endsWith('nobind')) {
          // Hidden by the hardening: the agent cannot reach the broker, so it has nothing to list, and says why.
          expect(list.code, `${name}: ${list.stdout}`).not.to.equal(0);
          const status = await guest.exec(['cat', `/run/shed-ext-probe-${name}/ssh-agent.status`]);
          // PrivateTmp's /tmp has no such path; ProtectHome=yes leaves /home unreadable.
          expect(status.stdout, name).to.match(name.startsWith('tmp') ? /^not connected: cannot reach the broker socket \/tmp\/shed-bus\/bus\.sock \(ENOENT\)/
            : /^not connected: no permission to connect to \/home\/shed-bus\/bus\.sock/);
        } else {
          expect(list.code, `${name}: ${list.stderr}`).to.equal(0);
          expect(list.stdout).to.include(hostKey.fingerprint);
        }
      }
    });

    for (const login of [true, false]) {
      it(`${login ? 'a login shell' : 'a non-login `ssh vm cmd`'}: ssh-add -l, ssh, aws sts get-caller-identity, a docker credential, status`, async () => {
        const r = await ssh(sectionScript(commands()), login);
        expect(r.code, r.stderr).to.equal(0);
        checkSession(parseSections(r.stdout), login ? 'login' : 'non-login');
      });
    }

    it('after a broker restart the same commands work again, the guest untouched', async () => {
      await restartBroker();
      for (const login of [true, false]) {
        const r = await ssh(sectionScript(commands()), login);
        expect(r.code, r.stderr).to.equal(0);
        checkSession(parseSections(r.stdout), login ? 'login' : 'non-login');
      }
      const journal = await guest.exec(['journalctl', '-q', '--no-pager', '-o', 'cat']);
      checkNoSecrets(journal.stdout);
      const token = (await guest.exec(['cat', '/run/shed-extensions/aws-token'])).stdout;
      expect(token).to.match(/^[A-Za-z0-9_-]{43}$/);
      expect(journal.stdout).not.to.include(token);
    });
  });

  describe('without systemd: shed-ext serve as the container\'s command', () => {
    let guest: Container;
    /** What a Dockerfile ENV (or a Dev Container's containerEnv) gives every `docker exec`: guest.env's lines. */
    let execEnv: Record<string, string>;

    before(async function () {
      this.timeout(120_000);
      guest = await startContainer(rt, root, ['--network', 'host', '-e', `AWS_PORT=${await freePort()}`, ...mounts()], ['/bin/sh', '/opt/shed-setup/setup.sh', 'serve']);
      await waitFor(async () => /shed-ext-serve INFO shed-extensions .*: serving the SSH agent/.test(await guest.logs()), 60_000, 'shed-ext serve to start');
      const envFile = await guest.exec(['cat', '/etc/shed-extensions/guest.env']);
      execEnv = Object.fromEntries(envFile.stdout.split('\n').filter((l) => /^[A-Z_]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
      expect(Object.keys(execEnv)).to.deep.equal(['SSH_AUTH_SOCK', 'AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', 'SHED_PUBLISH_URL']);
    });
    after(async () => {
      await guest?.remove();
    });

    const session = (login: boolean) => guest.exec(['bash', ...(login ? ['-l'] : []), '-s'], {
      user: 'shed', input: sectionScript(commands(login)), env: login ? {} : execEnv, timeoutMs: 90_000,
    });

    it('PID 1 is shed-ext serve, as the guest user', async () => {
      const r = await guest.exec(['sh', '-c', 'tr "\\0" " " < /proc/1/cmdline; echo; stat -c %u /proc/1']);
      expect(r.stdout).to.match(new RegExp(`^node /usr/local/lib/shed-extensions/shed-ext\\.mjs serve --port \\d+ \n${UID}\n$`));
    });

    // Older AWS CLIs (Debian's 2.9) ignore AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: without a login
    // shell (which exports the token) `aws` needs a newer client, so the non-login session skips it.
    for (const login of [true, false]) {
      it(`${login ? 'a login shell' : 'a plain `podman exec` with the image\'s ENV'}: ssh-add -l, ssh${login ? ', aws' : ''}, a docker credential, status`, async () => {
        const r = await session(login);
        expect(r.code, r.stderr).to.equal(0);
        checkSession(parseSections(r.stdout), login ? 'login' : 'non-login', login);
      });
    }

    it('after a broker restart the same commands work again; SIGTERM stops serve as PID 1 at once', async () => {
      await restartBroker();
      for (const login of [true, false]) {
        const r = await session(login);
        expect(r.code, r.stderr).to.equal(0);
        checkSession(parseSections(r.stdout), login ? 'login' : 'non-login', login);
      }
      checkNoSecrets(await guest.logs());
      const stopped = await guest.stop(10);
      expect(stopped.exitCode, await guest.logs()).to.equal(0);
      expect(stopped.ms, 'podman stop of serve as PID 1 (10 s would be a SIGKILL)').to.be.below(5000);
      expect(await guest.logs()).to.match(/shed-ext-serve INFO SIGTERM: stopping/);
    });
  });

  describe('the Dev Container Feature', () => {
    let guest: Container;
    let feature: { containerEnv: Record<string, string>; entrypoint: string; options: Record<string, { default: string }> };

    before(async function () {
      this.timeout(120_000);
      feature = JSON.parse(fs.readFileSync(path.join(guestDir, 'devcontainer-feature.json'), 'utf8'));
      // As the devcontainer CLI does: install.sh as root with the options and _REMOTE_USER in the environment
      // (here a root remote user: the Feature makes its own user), then the Feature's entrypoint before the command.
      // Its own network, as Docker gives a dev container: Docker lets any uid bind port 499 there; podman needs the sysctl.
      guest = await startContainer(rt, root, [
        '--network', 'none', '--sysctl', 'net.ipv4.ip_unprivileged_port_start=0', '-e', '_REMOTE_USER=root', '-e', '_CONTAINER_USER=root',
        '-e', `PUBLISHURL=${feature.options.publishUrl!.default}`, '-e', `SERVICEUID=${UID}`,
        ...Object.entries(feature.containerEnv).flatMap(([k, v]) => ['-e', `${k}=${v}`]), ...mounts(),
      ], ['/bin/sh', '-c', `/opt/shed-guest/install.sh && exec ${feature.entrypoint} sleep infinity`]);
      await waitFor(async () => /shed-ext-serve INFO shed-extensions .*: serving the SSH agent .* and AWS credentials/.test(await guest.logs()), 60_000, 'the Feature\'s shed-ext serve');
    });
    after(async () => {
      await guest?.remove();
    });

    it('installs with its options, runs serve beside the command as the user, and sessions find it through containerEnv', async () => {
      const logs = await guest.logs();
      expect(logs).to.include(`Created the user shed (uid ${UID}`);
      const cmd = await guest.exec(['sh', '-c', 'tr "\\0" " " < /proc/1/cmdline']);
      expect(cmd.stdout.trim()).to.equal('sleep infinity');
      const r = await guest.exec(['bash', '-s'], {
        user: 'shed',
        input: sectionScript({
          'ssh-add': 'ssh-add -l',
          docker: `printf %s ${REGISTRY} | docker-credential-shed get`,
          status: 'shed-ext status',
          // The endpoint itself, as an SDK that reads the token file asks it (only the answer's field names are printed).
          creds: 'node -e "fetch(process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI, { headers: { authorization: require(\'fs\').readFileSync(process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, \'latin1\') } })'
            + '.then((r) => r.json()).then((j) => console.log(Object.keys(j).sort().join(\' \')))"',
        }),
      });
      const s = parseSections(r.stdout);
      expect(s['ssh-add'], r.stdout).to.include({ code: 0 });
      expect(s['ssh-add']!.out).to.include(hostKey.fingerprint);
      expect(JSON.parse(s.docker!.out)).to.include({ Username: 'alice' });
      expect(s.status, r.stdout).to.include({ code: 0 });
      expect(s.creds, r.stdout).to.include({ code: 0 });
      expect(s.creds!.out.trim().split(' ')).to.include.members(['AccessKeyId', 'Expiration', 'SecretAccessKey', 'Token']);
    });
  });
});
