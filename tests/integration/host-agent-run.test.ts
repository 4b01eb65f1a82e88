import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { BusClient } from '../../guest-services/bus-client.js';
import { VERSION } from '../../protocol/version.js';
import { binCommand, capture, REPO_ROOT, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

/** A policy with direct sockets in `dir/socks` and the audit log in `dir/audit`, then `lines`. */
function directPolicy(dir: string, lines: string[]): string {
  return writePolicy(dir, ['version: 1', `direct: { sockets_dir: ${path.join(dir, 'socks')} }`, `audit: { dir: ${path.join(dir, 'audit')} }`, ...lines, ''].join('\n'));
}

function writePolicy(dir: string, body: string): string {
  const file = path.join(dir, 'extensions.yaml');
  fs.writeFileSync(file, body, { mode: 0o600 });
  return file;
}

/** Sockets and links left in a sockets directory (the sheds' own directories stay, for what mounts them). */
function socketsLeft(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((name) => !fs.lstatSync(path.join(dir, name)).isDirectory());
}

describe('shed-host-agent run', () => {
  it('serves a socket per shed, answers guests, and stops cleanly on SIGTERM and SIGINT', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const dir = tempDir('shed-r');
      const socks = path.join(dir, 'socks');
      const config = directPolicy(dir, ['sheds:', '  alpha: {}', '  beta: {}']);
      const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', config]);
      const child = spawnTracked(cmd, args, { env: { ...process.env, HOME: dir, SSH_AUTH_SOCK: '' } });
      const out = capture(child);
      await waitFor(() => /shed-host-agent ready/.test(out.stderr()), 20_000, 'the broker to start');
      expect(out.stderr()).to.match(/serving shed alpha on .*alpha\/bus\.sock/);
      expect(out.stderr()).to.match(/serving shed beta on .*beta\/bus\.sock/);

      const client = new BusClient({ publishUrl: `unix:${path.join(socks, 'alpha.sock')}` });
      try {
        await client.ping('ssh-agent');
      } finally {
        client.close();
      }

      child.kill(signal);
      const code = await new Promise((resolve) => child.once('close', resolve));
      expect(code, out.stderr()).to.equal(0);
      expect(out.stderr()).to.match(new RegExp(`${signal}: stopping`));
      expect(socketsLeft(socks)).to.deep.equal([]);
      await stopProcess(child);
    }
  });

  it('starts all or nothing: a part that fails stops what had started, removes its sockets, and exits 1 with the reason', async () => {
    const dir = tempDir('shed-r');
    const socks = path.join(dir, 'socks');
    // The direct sockets start first; the shed-server transport then fails on its token file.
    const config = directPolicy(dir, [`server: { url: http://127.0.0.1:9, token_file: ${path.join(dir, 'missing-token')} }`, 'sheds:', '  alpha: {}']);
    const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', config]);
    const res = await run(cmd, args, { env: { ...process.env, HOME: dir, SSH_AUTH_SOCK: '' }, timeoutMs: 20_000 });
    expect(res.code, res.stderr).to.equal(1);
    expect(res.stderr).to.match(/serving shed alpha on/);
    expect(res.stderr).to.match(/not started: cannot read server\.token_file .*missing-token: ENOENT/);
    expect(res.stderr).to.match(/closed the socket of shed alpha/);
    expect(socketsLeft(socks)).to.deep.equal([]);
  });

  it('stops at once on SIGTERM while it is still starting', async () => {
    const dir = tempDir('shed-r');
    const socks = path.join(dir, 'socks');
    // A shed-server that accepts connections and never answers keeps the start waiting (up to 10 s).
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    try {
      const config = directPolicy(dir, [`server: { url: 'http://127.0.0.1:${(silent.address() as net.AddressInfo).port}' }`, 'sheds:', '  alpha: {}']);
      const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', config]);
      const child = spawnTracked(cmd, args, { env: { ...process.env, HOME: dir, SSH_AUTH_SOCK: '' } });
      const out = capture(child);
      await waitFor(() => /serving shed alpha/.test(out.stderr()), 20_000, 'the direct socket');
      const closed = new Promise((resolve) => child.once('close', resolve));
      child.kill('SIGTERM');
      expect(await closed, out.stderr()).to.equal(0);
      expect(out.stderr()).to.match(/SIGTERM during start-up: stopping/);
      expect(socketsLeft(socks)).to.deep.equal([]);
    } finally {
      silent.close();
    }
  });

  it('refuses a broken policy with exit 1 and says what is wrong', async () => {
    const dir = tempDir('shed-r');
    const config = writePolicy(dir, 'version: 1\nsheds:\n  Not_A_Name: {}\n');
    const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', config]);
    const res = await run(cmd, args, { env: { ...process.env, HOME: dir } });
    expect(res.code).to.equal(1);
    expect(res.stderr).to.match(/extensions\.yaml:3:3: sheds\.Not_A_Name: .*is not a shed name/);
    expect(res.stderr).to.match(/lowercase letters/);
  });

  it('names a missing policy file and how to create one', async () => {
    const dir = tempDir('shed-r');
    const [cmd, args] = binCommand('shed-host-agent', ['--config', path.join(dir, 'nope.yaml')]);
    const res = await run(cmd, args, { env: { ...process.env, HOME: dir } });
    expect(res.code).to.equal(1);
    expect(res.stderr).to.match(/nope\.yaml/);
    expect(res.stderr).to.match(/config-examples/);
  });

  it('prints help and version; an unknown command is a usage error', async () => {
    const [cmd, help] = binCommand('shed-host-agent', ['--help']);
    const h = await run(cmd, help);
    expect(h.code).to.equal(0);
    expect(h.stdout).to.match(/Usage: shed-host-agent/);
    const [, version] = binCommand('shed-host-agent', ['version']);
    expect((await run(cmd, version)).stdout.trim()).to.equal(`shed-host-agent ${VERSION}`);
    const [, bogus] = binCommand('shed-host-agent', ['bogus']);
    expect((await run(cmd, bogus)).code).to.equal(2);
  });

  it('VERSION matches package.json', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(VERSION).to.equal(pkg.version);
  });
});
