/**
 * `shed-host-agent status` against the real daemon (`shed-host-agent run` in
 * its own process), subscribed to the shed-server stand-in and serving
 * direct sockets: what it reports, how the report follows a server that goes
 * away and comes back, a refused reload, a held connection; the not-running
 * and garbage answers; the socket's modes and stale-file handling.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { StatusAnswer, STATUS_SOCKET_NAME } from '../../host-broker/status/answer.js';
import { queryStatus } from '../../host-broker/status/client.js';
import { VERSION } from '../../protocol/version.js';
import { statusAnswer } from '../../host-broker/status/snapshot.js';
import { ShedServerEmulator, startShedBroker } from '../support/bus-emulator.js';
import { binCommand, capture, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

const NAMESPACES = ['ssh-agent', 'aws-credentials', 'docker-credentials', 'git-credentials'];

function statusSocketOf(home: string): string {
  return path.join(home, '.local/state/shed', STATUS_SOCKET_NAME);
}

/** `shed-host-agent status ARGS` as a user runs it, with HOME=home. */
function statusCli(home: string, args: string[] = []) {
  const [cmd, argv] = binCommand('shed-host-agent', ['status', ...args]);
  return run(cmd, argv, { env: { ...process.env, HOME: home }, timeoutMs: 30_000 });
}

interface Daemon {
  child: ReturnType<typeof spawnTracked>;
  out: ReturnType<typeof capture>;
  home: string;
  config: string;
}

async function startDaemon(home: string, policy: string, extraArgs: string[] = []): Promise<Daemon> {
  const config = path.join(home, 'extensions.yaml');
  fs.writeFileSync(config, policy, { mode: 0o600 });
  const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', config, ...extraArgs]);
  const child = spawnTracked(cmd, args, { env: { ...process.env, HOME: home, SSH_AUTH_SOCK: '' } });
  const out = capture(child);
  await waitFor(() => /shed-host-agent ready/.test(out.stderr()) || child.exitCode !== null, 30_000, 'the broker to start');
  if (child.exitCode !== null) throw new Error(`the broker did not start:\n${out.stderr()}`);
  return { child, out, home, config };
}

describe('shed-host-agent status', function () {
  this.timeout(90_000);

  it('reports what the running daemon loaded and how each connection fares, and follows a shed-server that goes away and comes back', async () => {
    const home = tempDir('shed-st');
    const server = new ShedServerEmulator();
    await server.start();
    const port = Number(new URL(server.url).port);
    const socks = path.join(home, 'socks');
    const auditDir = path.join(home, 'audit');
    const policy = [
      'version: 1',
      `server: { url: '${server.url}' }`,
      `direct: { sockets_dir: ${socks} }`,
      `audit: { dir: ${auditDir} }`,
      'sheds:',
      '  alpha:',
      '    approval: { gate: command, command: [/bin/true], policy: per-request, applies_to: [ssh-agent, aws-credentials] }',
      '  beta: {}',
      '  "*": {}',
      '',
    ].join('\n');
    let daemon: Daemon | undefined;
    let held: net.Socket | undefined;
    try {
      daemon = await startDaemon(home, policy);
      const socketPath = statusSocketOf(home);
      expect(fs.statSync(socketPath).mode & 0o777, 'status socket mode').to.equal(0o600);
      expect(fs.statSync(path.dirname(socketPath)).mode & 0o777, 'state directory mode').to.equal(0o700);

      await waitFor(async () => Object.values((await queryStatus(socketPath)).servers[0]!.namespaces).every((s) => s === 'connected'), 20_000, 'every namespace connected');

      const human = await statusCli(home);
      expect(human.code, human.stderr).to.equal(0);
      const text = human.stdout;
      expect(text).to.match(new RegExp(`^shed-host-agent ${VERSION}, pid ${daemon.child.pid}: running, up \\d+s \\(since `));
      expect(text).to.match(new RegExp(`^config +${daemon.config}$`, 'm'));
      expect(text).to.match(new RegExp(`^policy files +${daemon.config}$`, 'm'));
      expect(text).to.include(`server default  ${server.url}\n`);
      for (const ns of NAMESPACES) expect(text).to.match(new RegExp(`^  ${ns} +connected$`, 'm'));
      expect(text).to.include(`direct sockets  ${socks} (0 connections open of at most `);
      expect(text).to.match(/^ {2}alpha +serving, 0 connections$/m).and.match(/^ {2}beta +serving, 0 connections$/m);
      expect(text).to.match(/^ {2}alpha +command +per-request +for ssh-agent, aws-credentials$/m);
      expect(text).to.match(/^ {2}no gate +beta, "\*"$/m);
      expect(text).to.include(`audit  ${auditDir}\n`).and.match(/^ {2}last write error +none$/m).and.match(/^ {2}lines not written +0$/m);

      const json = await statusCli(home, ['--json']);
      expect(json.code, json.stderr).to.equal(0);
      const answer = StatusAnswer.parse(JSON.parse(json.stdout));
      expect(answer).to.deep.include({ format: 1, version: VERSION, pid: daemon.child.pid, phase: 'running' });
      expect(answer.config).to.deep.include({ path: daemon.config, files: [daemon.config] });
      expect(answer.config.last_reload).to.equal(undefined);
      expect(answer.servers).to.deep.equal([{ name: 'default', url: server.url, namespaces: Object.fromEntries(NAMESPACES.map((n) => [n, 'connected'])) }]);
      expect(answer.direct).to.deep.include({ enabled: true, sockets_dir: socks, connections: 0 });
      expect(answer.direct.sheds).to.deep.equal(['alpha', 'beta'].map((name) => ({ name, socket: path.join(socks, name, 'bus.sock'), state: 'serving, 0 connections', connections: 0 })));
      expect(answer.approvals).to.deep.equal([
        { shed: 'alpha', gate: 'command', policy: 'per-request', applies_to: ['ssh-agent', 'aws-credentials'] },
        { shed: 'beta', gate: 'none', policy: 'per-shed', applies_to: ['ssh-agent'] },
        { shed: '*', gate: 'none', policy: 'per-shed', applies_to: ['ssh-agent'] },
      ]);
      expect(answer.audit).to.deep.equal({ dir: auditDir, writable: true, failed_lines: 0, summarised_denials: 0, summary_lines: 0, required: false });

      // A connection held on alpha's socket shows.
      held = net.connect(path.join(socks, 'alpha', 'bus.sock'));
      await new Promise((resolve) => held!.once('connect', resolve));
      await waitFor(async () => (await queryStatus(socketPath)).direct.sheds[0]!.state === 'serving, 1 connection', 10_000, 'alpha\'s held connection');
      expect((await queryStatus(socketPath)).direct.connections).to.equal(1);

      // The shed-server goes away: every namespace is reconnecting, and says why.
      await server.stop();
      await waitFor(async () => Object.values((await queryStatus(socketPath)).servers[0]!.namespaces).every((s) => s.startsWith('reconnecting: ')), 20_000, 'every namespace reconnecting');
      const down = await statusCli(home);
      expect(down.code).to.equal(0);
      for (const ns of NAMESPACES) {
        expect(down.stdout).to.match(new RegExp(`^  ${ns} +reconnecting: .*(connection refused|refused the connection|closed)`, 'm'));
      }

      // It comes back on the same address: connected again.
      const again = new ShedServerEmulator();
      await again.start(port);
      try {
        await waitFor(async () => Object.values((await queryStatus(socketPath)).servers[0]!.namespaces).every((s) => s === 'connected'), 30_000, 'every namespace connected again');
      } finally {
        await again.stop();
      }
    } finally {
      held?.destroy();
      if (daemon) await stopProcess(daemon.child);
      await server.stop().catch(() => undefined);
    }
  });

  it('shows a refused reload with its reason (the policy before stays), then the next good one; goes away with the daemon', async () => {
    const home = tempDir('shed-st');
    const head = `version: 1\ndirect: { sockets_dir: ${path.join(home, 'socks')} }\naudit: { dir: ${path.join(home, 'audit')} }\n`;
    const daemon = await startDaemon(home, `${head}sheds:\n  alpha: {}\n`);
    const socketPath = statusSocketOf(home);
    try {
      expect((await queryStatus(socketPath)).servers).to.deep.equal([]);
      fs.writeFileSync(daemon.config, `${head}sheds:\n  Not_A_Name: {}\n`, { mode: 0o600 });
      daemon.child.kill('SIGHUP');
      const refused = await waitFor(async () => {
        const a = await queryStatus(socketPath);
        return a.config.last_reload?.result === 'refused' ? a : undefined;
      }, 15_000, 'the refused reload');
      expect(refused.config.last_reload!.reason).to.match(/extensions\.yaml:5:3: sheds\.Not_A_Name: .*is not a shed name/);
      expect(refused.direct.sheds.map((s) => s.name)).to.deep.equal(['alpha']);
      const human = await statusCli(home);
      expect(human.stdout).to.match(/^last reload +\S+ REFUSED \(the policy loaded before stays in force\):$/m);
      expect(human.stdout).to.match(/^ +.*extensions\.yaml:5:3: sheds\.Not_A_Name: /m);
      expect(human.stdout).to.include('servers: none (direct sockets only)');

      fs.writeFileSync(daemon.config, `${head}sheds:\n  alpha: {}\n  gamma: {}\n`, { mode: 0o600 });
      daemon.child.kill('SIGHUP');
      const applied = await waitFor(async () => {
        const a = await queryStatus(socketPath);
        return a.config.last_reload?.result === 'applied' ? a : undefined;
      }, 15_000, 'the applied reload');
      expect(applied.config.last_reload!.reason).to.equal(undefined);
      expect(applied.config.loaded_at).to.equal(applied.config.last_reload!.at);
      await waitFor(async () => (await queryStatus(socketPath)).direct.sheds.map((s) => s.name).join() === 'alpha,gamma', 10_000, 'gamma\'s socket');

      daemon.child.kill('SIGTERM');
      expect(await new Promise((resolve) => daemon.child.once('close', resolve))).to.equal(0);
      expect(fs.existsSync(socketPath), 'the status socket is removed').to.equal(false);
      const gone = await statusCli(home);
      expect(gone.code).to.equal(1);
      expect(gone.stdout).to.equal('');
      expect(gone.stderr).to.equal(`shed-host-agent is not running (no answer on ${socketPath}); start it with \`systemctl --user start shed-host-agent\` (or \`shed-host-agent run\`). A daemon run with --state-dir DIR answers \`shed-host-agent status --state-dir DIR\`\n`);
    } finally {
      await stopProcess(daemon.child);
    }
  });

  it('answers while the daemon is still starting: phase starting, each namespace connecting', async () => {
    const home = tempDir('shed-st');
    // A shed-server that accepts connections and never answers keeps the start waiting (up to 10 s).
    const silent = net.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
    const config = path.join(home, 'extensions.yaml');
    fs.writeFileSync(config, `version: 1\nserver: { url: '${url}' }\ndirect: { sockets_dir: ${path.join(home, 'socks')} }\naudit: { dir: ${path.join(home, 'audit')} }\nsheds:\n  alpha: {}\n`, { mode: 0o600 });
    const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', config]);
    const child = spawnTracked(cmd, args, { env: { ...process.env, HOME: home, SSH_AUTH_SOCK: '' } });
    const out = capture(child);
    try {
      await waitFor(() => /serving shed alpha/.test(out.stderr()), 20_000, 'the direct socket');
      const answer = await queryStatus(statusSocketOf(home));
      expect(out.stderr()).not.to.include('shed-host-agent ready');
      expect(answer.phase).to.equal('starting');
      expect(answer.servers).to.deep.equal([{ name: 'default', url, namespaces: Object.fromEntries(NAMESPACES.map((n) => [n, 'connecting'])) }]);
      expect(answer.direct.sheds.map((s) => [s.name, s.state])).to.deep.equal([['alpha', 'serving, 0 connections']]);
      const closed = new Promise((resolve) => child.once('close', resolve));
      child.kill('SIGTERM');
      expect(await closed, out.stderr()).to.equal(0);
      expect(fs.existsSync(statusSocketOf(home))).to.equal(false);
    } finally {
      await stopProcess(child);
      silent.close();
    }
  });

  it('each namespace\'s state in the broker: held by another listener (409), connected once it lets go, stopped with the broker', async () => {
    let other: http.ClientRequest | undefined;
    const h = await startShedBroker({
      policy: { version: 1, sheds: { alpha: {} } },
      beforeBroker: async (server) => {
        await new Promise<void>((resolve, reject) => {
          other = http.get(`${server.url}/api/plugins/listeners/ssh-agent/messages`, { headers: { accept: 'text/event-stream' } }, () => resolve());
          other.on('error', reject);
        });
      },
    });
    const meta = { configPath: '/x/extensions.yaml', startedAt: new Date().toISOString() };
    try {
      const held = statusAnswer(h.broker, meta);
      expect(held.phase).to.equal('running');
      expect(held.servers[0]!.namespaces['ssh-agent']).to.match(/^reconnecting: another listener holds .*ssh-agent.*409/);
      expect(held.servers[0]!.namespaces['aws-credentials']).to.equal('connected');
      expect(held.direct).to.deep.equal({ enabled: false, connections: 0, sheds: [] });
      other!.destroy();
      await waitFor(() => statusAnswer(h.broker, meta).servers[0]!.namespaces['ssh-agent'] === 'connected', 10_000, 'ssh-agent connected once the other listener left');
      await h.broker.stop();
      const stopped = statusAnswer(h.broker, meta);
      expect(stopped.phase).to.equal('stopping');
      expect(stopped.servers[0]!.namespaces).to.deep.equal(Object.fromEntries(NAMESPACES.map((n) => [n, 'stopped'])));
    } finally {
      other?.destroy();
      await h.stop();
    }
  });

  it('--state-dir: one daemon per state directory; a second one there is refused with the fix, another directory is fine', async () => {
    const home = tempDir('shed-st');
    const state = path.join(home, 'state-a');
    const policy = (n: string) => `version: 1\ndirect: { sockets_dir: ${path.join(home, `socks-${n}`)} }\naudit: { dir: ${path.join(home, 'audit')} }\nsheds:\n  alpha: {}\n`;
    const first = await startDaemon(home, policy('1'), ['--state-dir', state]);
    try {
      const config2 = path.join(home, 'second.yaml');
      fs.writeFileSync(config2, policy('2'), { mode: 0o600 });
      const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', config2, '--state-dir', state]);
      const second = await run(cmd, args, { env: { ...process.env, HOME: home, SSH_AUTH_SOCK: '' }, timeoutMs: 30_000 });
      expect(second.code).to.equal(1);
      expect(second.stderr).to.include(`not started: another shed-host-agent is running with state directory ${state}`)
        .and.include('give this one its own --state-dir');
      expect(fs.existsSync(path.join(home, 'socks-2', 'alpha', 'bus.sock')), 'the second one served nothing').to.equal(false);

      const asked = await statusCli(home, ['--state-dir', state, '--json']);
      expect(asked.code, asked.stderr).to.equal(0);
      expect(JSON.parse(asked.stdout).pid).to.equal(first.child.pid);
      // The default state directory has no daemon.
      const defaultDir = await statusCli(home);
      expect(defaultDir.code).to.equal(1);
      expect(defaultDir.stderr).to.include(`no answer on ${statusSocketOf(home)}`);

      const other = await startDaemon(tempDir('shed-st'), policy('3'), ['--state-dir', path.join(home, 'state-b')]);
      await stopProcess(other.child);
    } finally {
      await stopProcess(first.child);
    }
  });

  it('a stale status socket left by a daemon that died: status says not running; the next daemon removes it and starts', async () => {
    const home = tempDir('shed-st');
    const socketPath = statusSocketOf(home);
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
    // A socket file nobody listens on, as a killed daemon leaves it.
    const bound = spawnSync('/usr/bin/python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', socketPath]);
    expect(bound.status, String(bound.stderr)).to.equal(0);
    expect(fs.lstatSync(socketPath).isSocket()).to.equal(true);
    const stale = await statusCli(home);
    expect(stale.code).to.equal(1);
    expect(stale.stderr).to.match(/^shed-host-agent is not running \(no answer on /);

    const daemon = await startDaemon(home, `version: 1\ndirect: { sockets_dir: ${path.join(home, 'socks')} }\naudit: { dir: ${path.join(home, 'audit')} }\nsheds:\n  alpha: {}\n`);
    try {
      expect(daemon.out.stderr()).to.include(`removed stale status socket ${socketPath}`);
      const ok = await statusCli(home, ['--json']);
      expect(ok.code, ok.stderr).to.equal(0);
    } finally {
      await stopProcess(daemon.child);
    }
  });

  it('exit 2 when the socket answers something that is not a status, and what it says', async () => {
    const home = tempDir('shed-st');
    const socketPath = statusSocketOf(home);
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
    const cases: Array<{ reply: ((s: net.Socket) => void); expect: RegExp }> = [
      { reply: (s) => s.end('SSH-2.0-OpenSSH_9.2\r\n'), expect: /answered \d+ bytes that are not JSON/ },
      { reply: (s) => s.end('{"hello":"world"}\n'), expect: /answered JSON that is not a shed-host-agent status \(format: invalid/ },
      { reply: (s) => s.end('{"format":2,"version":"9.9.9"}\n'), expect: /\(shed-host-agent 9\.9\.9\) answers status format 2; this shed-host-agent reads format 1/ },
      { reply: (s) => s.end(), expect: /accepted the status request and closed without an answer/ },
    ];
    for (const c of cases) {
      const impostor = net.createServer((s) => s.once('data', () => c.reply(s)));
      await new Promise<void>((resolve) => impostor.listen(socketPath, resolve));
      try {
        const r = await statusCli(home);
        expect(r.code, r.stderr).to.equal(2);
        expect(r.stdout).to.equal('');
        expect(r.stderr).to.match(c.expect).and.match(/^shed-host-agent status: /);
      } finally {
        await new Promise((resolve) => impostor.close(resolve));
        fs.rmSync(socketPath, { force: true });
      }
    }
  });

  it('escapes what a shed-server wrote before it reaches the report, in both forms', async () => {
    const home = tempDir('shed-st');
    // A "shed-server" whose refusal carries terminal escapes and bidi controls.
    const evil = 'boom \x1b[2J\x1b]0;pwned\x07 \u202eevil\u202c\u2028next';
    const hostile = http.createServer((req, res) => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'X', message: evil } }));
    });
    await new Promise<void>((resolve) => hostile.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(hostile.address() as net.AddressInfo).port}`;
    const daemon = await startDaemon(home, `version: 1\nserver: { url: '${url}', namespaces: [ssh-agent] }\ndirect: { sockets_dir: ${path.join(home, 'socks')} }\naudit: { dir: ${path.join(home, 'audit')} }\nsheds:\n  alpha: {}\n`);
    try {
      await waitFor(async () => (await queryStatus(statusSocketOf(home))).servers[0]!.namespaces['ssh-agent']!.includes('boom'), 15_000, 'the refusal in the state');
      const [human, json] = await Promise.all([statusCli(home), statusCli(home, ['--json'])]);
      for (const out of [human.stdout, json.stdout]) {
        // eslint-disable-next-line no-control-regex -- the point: none may reach the terminal
        expect(out).not.to.match(/[\x1b\x07\u202e\u202c\u2028]/);
      }
      expect(human.stdout).to.match(/^ {2}ssh-agent +reconnecting: .*500 X: boom \\x1b\[2J\\x1b\]0;pwned\\x07 \\u\{202e\}evil\\u\{202c\}\\u\{2028\}next/m);
      // The JSON parses back to the daemon's (escaped) text.
      expect(JSON.parse(json.stdout).servers[0].namespaces['ssh-agent']).to.include('boom \\x1b[2J');
    } finally {
      await stopProcess(daemon.child);
      await new Promise((resolve) => hostile.close(resolve));
    }
  });
});
