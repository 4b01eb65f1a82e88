/**
 * install-guest's decisions that need no root: what the drop-ins, guest.env
 * and the sshd files say for given settings; which URLs and users it refuses;
 * the uid check; where guest programs find their publish URL.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { BusClient, BusError, DEFAULT_PUBLISH_URL, publishUrlFromEnv } from '../../guest-services/bus-client.js';
import { parseGuestEnv, readGuestEnv } from '../../guest-services/guest-env.js';
import {
  checkPublishUrl, guestEnvFile, hiddenBy, inspectSocket, planUser, publishDropIn, PUBLISH_MARKER, renderGuestFile, SetupError, socketOpensFor,
  socketRefusal, sshdDropIn, sshdRuntimeFile, writeSshdEnv,
} from '../../guest-services/status/guest-setup.js';
import { tempDir } from '../support/procs.js';

const S = { user: 'shed', awsPort: 499, publishUrl: 'unix:/run/shed-bus/bus.sock' };

describe('guest setup', () => {
  describe('--publish-url', () => {
    it('accepts a plain socket path or an http URL; refuses what config files cannot carry unquoted, and our own runtime dir', () => {
      for (const ok of ['unix:/run/shed-bus/bus.sock', 'unix:/mnt/shed@dev/bus.sock', 'http://127.0.0.1:498/v1/publish']) expect(() => checkPublishUrl(ok), ok).not.to.throw();
      const refused = (url: string) => {
        try {
          checkPublishUrl(url);
        } catch (err) {
          expect(err).to.be.instanceOf(SetupError);
          return (err as Error).message;
        }
        throw new Error(`accepted ${url}`);
      };
      expect(refused('unix:/run/shed bus/bus.sock')).to.include('may hold only letters').and.include('/run/shed-bus');
      expect(refused('unix:/run/a%h/bus.sock')).to.include('may hold only letters');
      expect(refused('unix:/run/../etc/bus.sock')).to.include('may hold only letters');
      expect(refused('unix:/run/shed-extensions/bus.sock')).to.include('the guest services\' own runtime directory');
      expect(refused('unix:relative.sock')).to.include('absolute socket path');
      expect(refused('ftp://x/')).to.include('must use http: or unix:');
    });

    it('the units\' drop-in sets the variable, waits for the mount, and binds back what PrivateTmp or ProtectHome hide', () => {
      const run = publishDropIn('unix:/run/shed-bus/bus.sock');
      expect(run.startsWith(`${PUBLISH_MARKER}\n`)).to.equal(true);
      expect(run).to.include('[Unit]\nRequiresMountsFor=/run/shed-bus\n').and.include('[Service]\nEnvironment=SHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock\n')
        .and.not.include('BindReadOnlyPaths').and.not.include('ProtectHome');
      const tmp = publishDropIn('unix:/tmp/shed/bus.sock');
      expect(tmp).to.include('BindReadOnlyPaths=-/tmp/shed\n').and.not.include('ProtectHome=');
      const home = publishDropIn('unix:/home/dev/.shed/bus.sock');
      expect(home).to.include('ProtectHome=tmpfs\nBindReadOnlyPaths=-/home/dev/.shed\n');
      expect(hiddenBy('/root/x')).to.equal('ProtectHome');
      expect(hiddenBy('/run/user/1000/shed')).to.equal('ProtectHome');
      expect(hiddenBy('/var/tmp/x')).to.equal('PrivateTmp');
      expect(hiddenBy('/run/shed-bus')).to.equal(undefined);
      expect(hiddenBy('/tmpfoo')).to.equal(undefined);
      expect(publishDropIn('http://127.0.0.1:4980/v1/publish')).to.include('Environment=SHED_PUBLISH_URL=http://127.0.0.1:4980/v1/publish\n').and.not.include('RequiresMountsFor');
    });

    it('environment.d and profile.d get the URL and the port; the units the user and the port', () => {
      const env = renderGuestFile('environment.d/shed-extensions.conf', 'AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:499/credentials\n', { ...S, awsPort: 4499 });
      expect(env).to.equal('AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:4499/credentials\n# install-guest --publish-url: where the guest programs reach the host broker\nSHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock\n');
      const profile = renderGuestFile('profile.d/shed-extensions.sh', 'x=1\n', S);
      expect(profile).to.include('if [ -z "${SHED_PUBLISH_URL-}" ]; then\n  SHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock\n  export SHED_PUBLISH_URL\nfi\n');
      expect(renderGuestFile('profile.d/shed-extensions.sh', 'x=1\n', { user: 'shed', awsPort: 499 })).to.equal('x=1\n');
      const unit = renderGuestFile('x.service', 'User=shed\nExecStart=/a --port 499 --x\nExecStartPost=+/b sshd-env --user shed\n', { user: 'dev', awsPort: 4499 });
      expect(unit).to.equal('User=dev\nExecStart=/a --port 4499 --x\nExecStartPost=+/b sshd-env --user dev\n');
    });

    it('guest.env lists what a session needs, and reads back; guest programs fall back to its URL', () => {
      const text = guestEnvFile(S);
      expect(parseGuestEnv(text)).to.deep.equal({
        SSH_AUTH_SOCK: '/run/shed-extensions/ssh-agent.sock',
        AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://127.0.0.1:499/credentials',
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: '/run/shed-extensions/aws-token',
        SHED_PUBLISH_URL: 'unix:/run/shed-bus/bus.sock',
      });
      const file = path.join(tempDir('shed-ge'), 'guest.env');
      fs.writeFileSync(file, text);
      expect(readGuestEnv(file).SHED_PUBLISH_URL).to.equal('unix:/run/shed-bus/bus.sock');
      expect(publishUrlFromEnv({}, file)).to.equal('unix:/run/shed-bus/bus.sock');
      expect(publishUrlFromEnv({ SHED_PUBLISH_URL: 'unix:/elsewhere.sock' }, file)).to.equal('unix:/elsewhere.sock');
      expect(publishUrlFromEnv({}, `${file}.absent`)).to.equal(DEFAULT_PUBLISH_URL);
      expect(readGuestEnv(path.dirname(file))).to.deep.equal({});
    });
  });

  describe('sshd', () => {
    it('the drop-in includes the boot-time file first and sets the environment for the user only', () => {
      const text = sshdDropIn(S);
      const lines = text.split('\n').filter((l) => l && !l.startsWith('#'));
      expect(lines).to.deep.equal([
        'Include /run/shed-extensions.sshd.conf',
        'Match User shed',
        '    SetEnv SSH_AUTH_SOCK=/run/shed-extensions/ssh-agent.sock AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:499/credentials '
          + 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/run/shed-extensions/aws-token SHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock',
      ]);
    });

    it('sshd-env writes guest.env and the token as root\'s 0600 file, only where the drop-in is installed; sshd takes it first', async () => {
      const dir = tempDir('shed-sshd');
      const token = 'Tok_abcdefghijklmnopqrstuvwxyz0123456789ABCD';
      fs.writeFileSync(path.join(dir, 'aws-token'), token, { mode: 0o600 });
      fs.writeFileSync(path.join(dir, 'guest.env'), guestEnvFile(S));
      const out = path.join(dir, 'runtime.conf');
      const dropIn = path.join(dir, 'drop-in.conf');
      const opts = { user: 'shed', tokenFile: path.join(dir, 'aws-token'), envFile: path.join(dir, 'guest.env'), out, dropIn };
      expect(writeSshdEnv(opts)).to.deep.include({ written: false });
      expect(fs.existsSync(out)).to.equal(false);
      fs.writeFileSync(dropIn, sshdDropIn(S).replace('/run/shed-extensions.sshd.conf', out));
      expect(writeSshdEnv(opts)).to.deep.include({ written: true, path: out });
      expect(fs.statSync(out).mode & 0o777).to.equal(0o600);
      expect(fs.readFileSync(out, 'utf8')).to.equal(sshdRuntimeFile('shed', parseGuestEnv(guestEnvFile(S)), token));
      expect(fs.readFileSync(out, 'utf8')).to.include(`SHED_PUBLISH_URL=unix:/run/shed-bus/bus.sock AWS_CONTAINER_AUTHORIZATION_TOKEN=${token}\n`);

      // sshd itself: the runtime file's SetEnv wins for shed; nothing for another user.
      const sshd = '/usr/sbin/sshd';
      if (fs.existsSync(sshd)) {
        const { run } = await import('../support/procs.js');
        const { makeKey } = await import('../support/sshd.js');
        const hostKey = await makeKey(dir, 'host', 'ed25519');
        const config = path.join(dir, 'sshd_config');
        fs.writeFileSync(config, `Include ${dropIn}\nHostKey ${hostKey.file}\nSubsystem sftp internal-sftp\n`);
        const shed = await run(sshd, ['-T', '-f', config, '-C', 'user=shed,host=x,addr=127.0.0.1']);
        expect(shed.code, shed.stderr).to.equal(0);
        expect(shed.stdout).to.include(`setenv AWS_CONTAINER_AUTHORIZATION_TOKEN=${token}\n`).and.include('setenv SSH_AUTH_SOCK=/run/shed-extensions/ssh-agent.sock\n')
          .and.include('subsystem sftp internal-sftp');
        fs.rmSync(out);
        const fallback = await run(sshd, ['-T', '-f', config, '-C', 'user=shed,host=x,addr=127.0.0.1']);
        expect(fallback.stdout).to.include('setenv AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/run/shed-extensions/aws-token\n').and.not.include('AWS_CONTAINER_AUTHORIZATION_TOKEN=');
        const other = await run(sshd, ['-T', '-f', config, '-C', 'user=alice,host=x,addr=127.0.0.1']);
        expect(other.stdout).not.to.match(/^setenv /m);
      }
    });

    it('sshd-env refuses a bad user name and a file that is not a token', () => {
      const dir = tempDir('shed-sshd');
      fs.writeFileSync(path.join(dir, 'drop'), '');
      fs.writeFileSync(path.join(dir, 'tok'), 'short\n');
      expect(() => writeSshdEnv({ user: 'x y', dropIn: path.join(dir, 'drop') })).to.throw('is not a valid user name');
      expect(() => writeSshdEnv({ user: 'shed', tokenFile: path.join(dir, 'tok'), dropIn: path.join(dir, 'drop'), out: path.join(dir, 'o') }))
        .to.throw('does not hold a token');
      expect(() => writeSshdEnv({ user: 'shed', tokenFile: path.join(dir, 'none'), dropIn: path.join(dir, 'drop'), out: path.join(dir, 'o') }))
        .to.throw('cannot read the AWS endpoint token');
      // Not through a link the guest user could point anywhere root may read.
      fs.writeFileSync(path.join(dir, 'real'), 'Tok_abcdefghijklmnopqrstuvwxyz0123456789ABCD');
      fs.symlinkSync(path.join(dir, 'real'), path.join(dir, 'link'));
      expect(() => writeSshdEnv({ user: 'shed', tokenFile: path.join(dir, 'link'), dropIn: path.join(dir, 'drop'), out: path.join(dir, 'o') }))
        .to.throw(/cannot read the AWS endpoint token .*ELOOP/);
      expect(fs.existsSync(path.join(dir, 'o'))).to.equal(false);
    });
  });

  describe('the user and the uid', () => {
    const rootWith = (passwd: string) => {
      const root = tempDir('shed-pw');
      fs.mkdirSync(path.join(root, 'etc'));
      fs.writeFileSync(path.join(root, 'etc/passwd'), passwd);
      return root;
    };

    it('an existing user is kept (its uid checked against --uid); a new one gets --uid, the socket owner\'s uid, or 1000, if free', () => {
      const root = rootWith('root:x:0:0:root:/root:/bin/bash\nnode:x:1000:1000::/home/node:/bin/bash\n');
      expect(planUser(root, 'node', undefined, undefined)).to.include({ uid: 1000, home: '/home/node' });
      expect(() => planUser(root, 'node', 1001, undefined)).to.throw('exists in this root with uid 1000, not --uid 1001');
      expect(() => planUser(root, 'shed', undefined, undefined)).to.throw(/uid 1000 already belongs to node.*--user node/);
      expect(planUser(root, 'shed', 1001, undefined)).to.include({ uid: 1001, home: '/home/shed' });
      expect(planUser(root, 'shed', undefined, 1500)).to.include({ uid: 1500 });
      // A root-owned socket does not make the guest user root: the default applies.
      expect(() => planUser(root, 'shed', undefined, 0)).to.throw('uid 1000 already belongs to node');
      expect(planUser(rootWith('root:x:0:0:root:/root:/bin/bash\n'), 'shed', undefined, 0)).to.include({ uid: 1000 });
    });

    it('the socket check: who may connect, and what to do when the guest user may not', () => {
      const sock = { path: '/run/shed-bus/bus.sock', uid: 1000, gid: 1000, mode: 0o600, isSocket: true };
      const dir = { path: '/run/shed-bus', uid: 1000, gid: 1000, mode: 0o700, isSocket: false };
      expect(socketOpensFor(sock, 1000, 1000)).to.equal(true);
      expect(socketOpensFor(sock, 1001, 1000)).to.equal(false);
      expect(socketOpensFor(sock, 0, 0)).to.equal(true);
      expect(socketOpensFor({ ...sock, mode: 0o660 }, 1001, 1000)).to.equal(true);
      expect(socketOpensFor(dir, 1001, 1001)).to.equal(false);
      expect(socketOpensFor({ ...dir, mode: 0o711 }, 1001, 1001)).to.equal(true);
      const text = socketRefusal(sock, { name: 'shed', uid: 1001, home: '/home/shed', shell: '/bin/sh' });
      expect(text).to.include('belongs to uid 1000 (mode 0600), but the guest user shed has uid 1001')
        .and.include('--uid 1000').and.include('usermod -u 1000 shed').and.include('run shed-host-agent as uid 1001');
    });

    it('inspects the socket inside the root, else its directory, else nothing', async () => {
      const root = tempDir('shed-sock');
      expect(inspectSocket(root, 'unix:/run/shed-bus/bus.sock')).to.equal(undefined);
      expect(inspectSocket(root, 'http://127.0.0.1:498/v1/publish')).to.equal(undefined);
      fs.mkdirSync(path.join(root, 'run/shed-bus'), { recursive: true, mode: 0o700 });
      expect(inspectSocket(root, 'unix:/run/shed-bus/bus.sock')).to.include({ path: '/run/shed-bus', isSocket: false, mode: 0o700 });
      const server = net.createServer();
      await new Promise<void>((r) => server.listen(path.join(root, 'run/shed-bus/bus.sock'), r));
      try {
        expect(inspectSocket(root, 'unix:/run/shed-bus/bus.sock')).to.include({ path: '/run/shed-bus/bus.sock', isSocket: true, uid: process.getuid!() });
      } finally {
        server.close();
      }
    });
  });

  describe('the bus client says what is wrong', () => {
    it('shed-agent\'s default address refusing: names the direct-socket setting too', async function () {
      // Only when nothing listens on 127.0.0.1:498 here.
      const probe = await new Promise<boolean>((resolve) => {
        const s = net.connect(498, '127.0.0.1');
        s.once('connect', () => { s.destroy(); resolve(true); });
        s.once('error', () => resolve(false));
      });
      if (probe) this.skip();
      const client = new BusClient({ publishUrl: DEFAULT_PUBLISH_URL, deadlineMs: 2000 });
      try {
        await client.ping('ssh-agent');
        throw new Error('expected a failure');
      } catch (err) {
        expect(err).to.be.instanceOf(BusError);
        expect((err as BusError).message).to.include('no other publish URL is configured here');
        expect((err as BusError).hint).to.include('SHED_PUBLISH_URL=unix:/mount/point/bus.sock').and.include('/etc/shed-extensions/guest.env');
      } finally {
        client.close();
      }
    });
  });
});
