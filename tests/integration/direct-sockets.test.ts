import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { BusClient } from '../../guest-services/bus-client.js';
import type { NamespaceHandler } from '../../host-broker/handler.js';
import { connectionBudget, DirectSockets, openFileLimit } from '../../host-broker/transports/direct-sockets.js';
import type { RequestSink } from '../../host-broker/transports/transport.js';
import { Envelope } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { spawnTracked, tempDir, waitFor } from '../support/procs.js';

/** Raw HTTP over a unix socket, to check the publish API byte for byte. */
function post(socketPath: string, body: string | Buffer, options: { method?: string; path?: string } = {}): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method: options.method ?? 'POST', path: options.path ?? '/v1/publish', headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const echo: NamespaceHandler = {
  namespace: 'ssh-agent',
  async handle(operation, payload, ctx) {
    if (operation === 'hang') return new Promise(() => undefined);
    return { operation, shed: ctx.shed, echo: payload.echo ?? null };
  },
};

function mode(p: string): number {
  return fs.statSync(p).mode & 0o777;
}

describe('direct sockets transport', () => {
  let h: Harness;
  afterEach(async () => h?.stop());

  it('serves one 0600 socket per named shed, each in its own 0700 directory, none for "*"; the old flat path links to it', async () => {
    h = await startDirectBroker({ policy: { version: 1, sheds: { alpha: {}, beta: {}, '*': {} } }, handlers: [echo] });
    const dir = path.join(h.dir, 'socks');
    expect(fs.readdirSync(dir).sort()).to.deep.equal(['alpha', 'alpha.sock', 'beta', 'beta.sock']);
    expect(mode(dir)).to.equal(0o700);
    expect(mode(path.join(dir, 'alpha'))).to.equal(0o700);
    expect(fs.readdirSync(path.join(dir, 'alpha'))).to.deep.equal(['bus.sock']);
    expect(mode(path.join(dir, 'alpha', 'bus.sock'))).to.equal(0o600);
    expect(fs.statSync(path.join(dir, 'alpha', 'bus.sock')).isSocket()).to.equal(true);
    expect(fs.readlinkSync(path.join(dir, 'alpha.sock'))).to.equal(path.join('alpha', 'bus.sock'));
    expect(h.log.lines.join('\n')).to.match(/serving shed alpha on .*alpha\/bus\.sock/);
    // The link serves guests set up by earlier versions.
    const old = new BusClient({ publishUrl: `unix:${path.join(dir, 'alpha.sock')}` });
    try {
      expect(await old.publish('ssh-agent', { operation: 'list' })).to.include({ shed: 'alpha' });
    } finally {
      old.close();
    }
  });

  it('keeps each shed\'s directory across a restart, so a mount of the directory reaches the new socket', async () => {
    const dir = path.join(tempDir('shed-d'), 's');
    const first = new DirectSockets({ socketsDir: dir, sheds: ['alpha'], log: memoryLogger() });
    await first.start(() => undefined);
    // What a bind mount holds: the directory's inode, opened before the restart.
    const held = fs.openSync(path.join(dir, 'alpha'), 'r');
    const ino = fs.fstatSync(held).ino;
    await first.stop();
    expect(fs.readdirSync(path.join(dir, 'alpha'))).to.deep.equal([]);
    expect(fs.existsSync(path.join(dir, 'alpha.sock'))).to.equal(false);
    const second = new DirectSockets({ socketsDir: dir, sheds: ['alpha'], log: memoryLogger() });
    await second.start((incoming, shed, reply) => void reply({ shed }));
    try {
      expect(fs.statSync(path.join(dir, 'alpha')).ino).to.equal(ino);
      // Through /proc/self/fd, the path a process in another mount namespace would see through its mount.
      const viaMount = path.join(`/proc/self/fd/${held}`, 'bus.sock');
      const res = await post(viaMount, '{"namespace":"ssh-agent","payload":{"operation":"list"}}');
      expect(res.status).to.equal(200);
    } finally {
      fs.closeSync(held);
      await second.stop();
    }
  });

  it('each socket is its shed: two sheds at once, no cross-talk', async () => {
    h = await startDirectBroker({ policy: { version: 1, sheds: { alpha: {}, beta: {} } }, handlers: [echo] });
    const clients = ['alpha', 'beta'].map((shed) => ({ shed, client: new BusClient({ publishUrl: h.publishUrl(shed) }) }));
    try {
      const answers = await Promise.all(
        Array.from({ length: 40 }, (_, i) => clients[i % 2]!).map(({ shed, client }, i) =>
          client.publish('ssh-agent', { operation: 'list', echo: `${shed}-${i}`, shed: 'mallory' }).then((a) => ({ shed, i, a }))),
      );
      for (const { shed, i, a } of answers) expect(a).to.deep.equal({ operation: 'list', shed, echo: `${shed}-${i}` });
    } finally {
      for (const { client } of clients) client.close();
    }
  });

  it('speaks the publish API: 400 codes, 404, 405, 202 for events, 413 over 1 MiB', async () => {
    h = await startDirectBroker({ policy: { version: 1, sheds: { alpha: {} } }, handlers: [echo] });
    const sock = h.publishUrl('alpha').slice('unix:'.length);
    const cases: Array<[string, number, string]> = [
      ['not json', 400, 'INVALID_BODY'],
      ['[1,2]', 400, 'INVALID_BODY'],
      ['{"payload":{}}', 400, 'MISSING_NAMESPACE'],
      ['{"namespace":""}', 400, 'MISSING_NAMESPACE'],
      [`{"namespace":"${'n'.repeat(129)}"}`, 400, 'INVALID_BODY'],
      ['{"namespace":"ssh-agent","type":"response"}', 400, 'INVALID_TYPE'],
      ['{"namespace":"ssh-agent","payload":"x"}', 400, 'INVALID_BODY'],
    ];
    for (const [body, status, code] of cases) {
      const res = await post(sock, body);
      expect(res.status, body).to.equal(status);
      expect(res.json).to.have.nested.property('error.code', code);
      expect(res.json).to.have.nested.property('error.message').that.is.a('string');
    }
    expect((await post(sock, '{}', { path: '/v2/other' })).status).to.equal(404);
    expect((await post(sock, '', { method: 'GET' })).status).to.equal(405);
    expect((await post(sock, '{"namespace":"ssh-agent","type":"event","payload":{"operation":"x"}}')).status).to.equal(202);

    const big = Buffer.alloc(1024 * 1024 + 10, 0x20);
    const tooBig = await post(sock, big);
    expect(tooBig.status).to.equal(413);
    expect(tooBig.json).to.have.nested.property('error.code', 'BODY_TOO_LARGE');

    // A request answers 200 with the whole response envelope.
    const ok = await post(sock, '{"namespace":"ssh-agent","payload":{"operation":"list"}}');
    expect(ok.status).to.equal(200);
    const envelope = Envelope.parse(ok.json);
    expect(envelope).to.include({ type: 'response', namespace: 'ssh-agent' });
    expect(envelope.in_reply_to).to.match(/^[0-9a-f-]{36}$/);
    expect(envelope.shed?.name).to.equal('alpha');
  });

  it('answers 504 TIMEOUT when no response comes within the wait limit', async () => {
    const dir = tempDir('shed-d');
    const transport = new DirectSockets({ socketsDir: path.join(dir, 's'), sheds: ['alpha'], log: memoryLogger(), waitLimitMs: 150 });
    const sink: RequestSink = () => undefined; // never replies
    await transport.start(sink);
    try {
      const res = await post(transport.socketPath('alpha'), '{"namespace":"ssh-agent","payload":{"operation":"list"}}');
      expect(res.status).to.equal(504);
      expect(res.json).to.have.nested.property('error.code', 'TIMEOUT');
    } finally {
      await transport.stop();
    }
  });

  it('answers SHUTTING_DOWN to requests waiting when it stops, and removes its sockets', async () => {
    h = await startDirectBroker({ policy: { version: 1, sheds: { alpha: {} } }, handlers: [echo] });
    const sock = h.publishUrl('alpha').slice('unix:'.length);
    const waiting = post(sock, '{"namespace":"ssh-agent","payload":{"operation":"hang"}}');
    await new Promise((r) => setTimeout(r, 100));
    await h.stop();
    const res = await waiting;
    expect(res.status).to.equal(503);
    expect(res.json).to.have.nested.property('error.code', 'SHUTTING_DOWN');
    expect(fs.existsSync(sock)).to.equal(false);
  });

  it('replaces a stale socket file, refuses a live one and a non-socket', async () => {
    const dir = path.join(tempDir('shed-d'), 's');
    fs.mkdirSync(dir, { mode: 0o755 });
    // A stale socket, as a crashed broker leaves it: bound by a process that was SIGKILLed.
    fs.mkdirSync(path.join(dir, 'alpha'), { mode: 0o700 });
    const stalePath = path.join(dir, 'alpha', 'bus.sock');
    const crashed = spawnTracked(process.execPath, ['-e', 'require("net").createServer().listen(process.argv[1], () => console.log("up"))', stalePath]);
    await new Promise((r) => crashed.stdout!.once('data', r));
    crashed.kill('SIGKILL');
    await new Promise((r) => crashed.once('exit', r));
    expect(fs.lstatSync(stalePath).isSocket()).to.equal(true);

    const log = memoryLogger();
    const transport = new DirectSockets({ socketsDir: dir, sheds: ['alpha'], log });
    await transport.start(() => undefined);
    try {
      expect(log.lines.join('\n')).to.match(/removed stale socket .*alpha\/bus\.sock/);
      expect(log.lines.join('\n')).to.match(/tightened .* to mode 0700/);
      expect(mode(dir)).to.equal(0o700);
      expect(mode(stalePath)).to.equal(0o600);

      // A second broker for the same shed must not steal the live socket.
      const second = new DirectSockets({ socketsDir: dir, sheds: ['alpha'], log: memoryLogger() });
      let error: Error | undefined;
      await second.start(() => undefined).catch((e: Error) => (error = e));
      expect(error?.message).to.match(/another process is serving .*alpha\/bus\.sock/);
      expect(fs.lstatSync(stalePath).isSocket()).to.equal(true);
    } finally {
      await transport.stop();
    }

    fs.mkdirSync(path.join(dir, 'beta'), { mode: 0o700 });
    fs.writeFileSync(path.join(dir, 'beta', 'bus.sock'), 'not a socket');
    const third = new DirectSockets({ socketsDir: dir, sheds: ['beta'], log: memoryLogger() });
    let error: Error | undefined;
    await third.start(() => undefined).catch((e: Error) => (error = e));
    expect(error?.message).to.match(/beta\/bus\.sock exists and is not a socket; move it away/);
    expect(fs.readFileSync(path.join(dir, 'beta', 'bus.sock'), 'utf8')).to.equal('not a socket');
  });

  it('replaces the socket an earlier version left at <shed>.sock with the link, and leaves a live one or another file alone', async () => {
    const dir = path.join(tempDir('shed-d'), 's');
    fs.mkdirSync(dir, { mode: 0o700 });
    const flat = (shed: string) => path.join(dir, `${shed}.sock`);
    const crashed = spawnTracked(process.execPath, ['-e', 'require("net").createServer().listen(process.argv[1], () => console.log("up"))', flat('alpha')]);
    await new Promise((r) => crashed.stdout!.once('data', r));
    crashed.kill('SIGKILL');
    await new Promise((r) => crashed.once('exit', r));
    const live = net.createServer().listen(flat('beta'));
    await new Promise((r) => live.once('listening', r));
    fs.writeFileSync(flat('gamma'), 'a note');
    const log = memoryLogger();
    const transport = new DirectSockets({ socketsDir: dir, sheds: ['alpha', 'beta', 'gamma'], log });
    await transport.start(() => undefined);
    try {
      expect(fs.readlinkSync(flat('alpha'))).to.equal(path.join('alpha', 'bus.sock'));
      expect(fs.lstatSync(flat('beta')).isSocket()).to.equal(true);
      expect(fs.readFileSync(flat('gamma'), 'utf8')).to.equal('a note');
      expect(log.lines.join('\n')).to.match(/beta\.sock is served by another process/).and.match(/gamma\.sock exists and is not a socket or a link/);
      for (const shed of ['alpha', 'beta', 'gamma']) expect(fs.statSync(transport.socketPath(shed)).isSocket(), shed).to.equal(true);
    } finally {
      await transport.stop();
      await new Promise((r) => live.close(r));
    }
  });

  it('refuses a socket path too long for sun_path, naming the setting to change', async () => {
    const dir = path.join(tempDir('shed-d'), 'x'.repeat(100));
    const transport = new DirectSockets({ socketsDir: dir, sheds: ['alpha'], log: memoryLogger() });
    let error: Error | undefined;
    await transport.start(() => undefined).catch((e: Error) => (error = e));
    expect(error?.message).to.match(/longer than .* bytes.*direct\.sockets_dir/);
  });

  it('follows the policy: a new shed gets a socket, a removed shed loses its socket', async () => {
    h = await startDirectBroker({ policy: { version: 1, sheds: { alpha: {} } }, handlers: [echo] });
    const dir = path.join(h.dir, 'socks');
    expect(await h.setPolicy({ version: 1, sheds: { beta: {} } })).to.equal(undefined);
    // alpha's directory stays (a container may mount it), empty.
    expect(fs.readdirSync(dir).sort()).to.deep.equal(['alpha', 'beta', 'beta.sock']);
    expect(fs.readdirSync(path.join(dir, 'alpha'))).to.deep.equal([]);
    const client = new BusClient({ publishUrl: h.publishUrl('beta') });
    try {
      expect(await client.publish('ssh-agent', { operation: 'list' })).to.include({ shed: 'beta' });
    } finally {
      client.close();
    }
    // An invalid policy is refused and the old one stays.
    const err = await h.setPolicy({ version: 2 });
    expect(err?.message).to.match(/version/);
    expect(fs.existsSync(path.join(dir, 'beta', 'bus.sock'))).to.equal(true);
  });

  it('caps each shed\'s connections (limits.max_connections) and all of them together: a shed at its cap delays no other', async () => {
    h = await startDirectBroker({ policy: { version: 1, defaults: { limits: { max_connections: 4 } }, sheds: { alpha: {}, beta: { limits: { max_connections: 8 } } } }, handlers: [echo] });
    const connect = (shed: string) => new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(h.publishUrl(shed).slice('unix:'.length), () => resolve(s));
      s.on('error', reject);
    });
    const held = await Promise.all(Array.from({ length: 4 }, () => connect('alpha')));
    try {
      const direct = h.broker.directSockets!;
      await waitFor(() => direct.connections.sheds.alpha === 4, 2000, 'alpha\'s connections');
      // A fifth is closed at once, without an answer.
      const extra = await connect('alpha');
      await new Promise((r) => extra.once('close', r));
      expect(direct.connections.sheds.alpha).to.equal(4);
      expect(h.log.lines.join('\n')).to.match(/shed alpha holds its 4 connections \(limits\.max_connections\)/);
      // beta has a cap of its own and answers as ever.
      const client = new BusClient({ publishUrl: h.publishUrl('beta') });
      try {
        expect(await client.publish('ssh-agent', { operation: 'list' })).to.include({ shed: 'beta' });
      } finally {
        client.close();
      }
      // A reload applies the new cap to the running socket.
      expect(await h.setPolicy({ version: 1, defaults: { limits: { max_connections: 5 } }, sheds: { alpha: {}, beta: {} } })).to.equal(undefined);
      const fifth = await connect('alpha');
      await waitFor(() => direct.connections.sheds.alpha === 5, 2000, 'the fifth connection');
      held.push(fifth);
    } finally {
      for (const s of held) s.destroy();
    }
  });

  it('closes new connections past the total it takes across sheds, and says so once', async () => {
    const dir = path.join(tempDir('shed-d'), 's');
    const log = memoryLogger();
    const transport = new DirectSockets({ socketsDir: dir, sheds: ['alpha', 'beta'], log, maxConnections: 3 });
    await transport.start(() => undefined);
    const held: net.Socket[] = [];
    try {
      for (const shed of ['alpha', 'alpha', 'beta']) {
        held.push(await new Promise<net.Socket>((r) => {
          const s = net.connect(transport.socketPath(shed), () => r(s));
        }));
      }
      await waitFor(() => transport.connections.total === 3, 2000, 'three connections');
      for (let i = 0; i < 5; i++) {
        const s = net.connect(transport.socketPath('beta'));
        s.on('error', () => undefined);
        await new Promise((r) => s.once('close', r));
      }
      expect(transport.connections).to.deep.equal({ total: 3, sheds: { alpha: 2, beta: 1 } });
      expect(log.lines.filter((l) => /the most this broker takes/.test(l))).to.have.length(1);
    } finally {
      for (const s of held) s.destroy();
      await transport.stop();
    }
  });

  it('draws its total from the open-file limit, leaving the broker room of its own', () => {
    const shell = Number(execFileSync('/bin/sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim());
    expect(openFileLimit()).to.equal(shell);
    expect(connectionBudget(512)).to.equal(128);
    expect(connectionBudget(20_000)).to.equal(9872);
    expect(connectionBudget(256)).to.equal(64);
  });
});
