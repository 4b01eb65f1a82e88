/** shed-ext-ssh-agent as a program: help, version, bad arguments, and a clean stop that removes its socket. */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { VERSION } from '../../protocol/version.js';
import { binCommand, capture, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

const bin = (args: string[]) => {
  const [cmd, argv] = binCommand('shed-ext-ssh-agent', args);
  return run(cmd, argv, { timeoutMs: 20_000 });
};

describe('shed-ext-ssh-agent CLI', function () {
  this.timeout(30_000);

  it('--help and version', async () => {
    const [help, version] = await Promise.all([bin(['--help']), bin(['version'])]);
    expect(help.code).to.equal(0);
    expect(help.stdout).to.include('--sock PATH').and.include('--publish-url URL').and.include('/run/shed-extensions/ssh-agent.sock');
    expect(version.code).to.equal(0);
    expect(version.stdout.trim()).to.equal(`shed-ext-ssh-agent ${VERSION}`);
  });

  it('refuses bad arguments with exit 2 and says why', async () => {
    const [flag, relative, url] = await Promise.all([
      bin(['--bogus']),
      bin(['--sock', 'agent.sock']),
      bin(['--sock', '/tmp/x.sock', '--publish-url', 'ftp://host/']),
    ]);
    expect(flag.code).to.equal(2);
    expect(flag.stderr).to.include('bogus');
    expect(relative.code).to.equal(2);
    expect(relative.stderr).to.include('absolute path');
    expect(url.code).to.equal(2);
    expect(url.stderr).to.include('http: or unix:');
  });

  it('serves without a host, says so, and removes its socket and status file on SIGTERM', async () => {
    const dir = tempDir('shed-gc');
    const sock = path.join(dir, 'run', 'ssh-agent.sock');
    // The publish URL from SHED_PUBLISH_URL, as environment.d sets it for a direct socket.
    const [cmd, argv] = binCommand('shed-ext-ssh-agent', ['--sock', sock]);
    const child = spawnTracked(cmd, argv, { env: { ...process.env, SHED_PUBLISH_URL: `unix:${path.join(dir, 'absent.sock')}` } });
    const out = capture(child);
    const status = path.join(dir, 'run', 'ssh-agent.status');
    await waitFor(() => fs.existsSync(status), 15_000, 'status file');
    expect(fs.readFileSync(status, 'utf8')).to.match(/^not connected: .*absent\.sock/);
    expect(fs.statSync(path.dirname(sock)).mode & 0o777).to.equal(0o700);
    expect(fs.statSync(sock).mode & 0o777).to.equal(0o600);
    expect(out.stderr()).to.include('WARN').and.include('until shed-host-agent runs on the host');
    expect(await stopProcess(child)).to.equal(0);
    expect(fs.existsSync(sock)).to.equal(false);
    expect(fs.existsSync(status)).to.equal(false);
  });
});
