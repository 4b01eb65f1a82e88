/**
 * The ssh-agent handler's backends and refusals, called directly; and the
 * guest agent's protocol edges over its real socket, with a real broker on
 * direct sockets and a real OpenSSH ssh-agent behind it.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startSshAgent, type RunningAgent } from '../../guest-services/ssh-agent/agent.js';
import { BrokerError, type ApprovalSubject, type NamespaceHandler, type RequestContext } from '../../host-broker/handler.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import { createSshHandler } from '../../host-broker/ssh/handler.js';
import { LocalKeys, signWithLocalKey, type LocalKey } from '../../host-broker/ssh/local-keys.js';
import { keyLineBlob } from '../../host-broker/ssh/rules.js';
import { encodeSignature, HOSTBOUND_METHOD, sshString } from '../../host-broker/ssh/wire.js';
import { memoryLogger } from '../../protocol/log.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { run, tempDir } from '../support/procs.js';
import { cleanEnv, makeKey, startRealAgent, type KeyPair, type RealAgent } from '../support/sshd.js';

interface Ctx extends RequestContext {
  approvals: ApprovalSubject[];
}

function ctxFor(ssh: Record<string, unknown>, log = memoryLogger(), approve?: (s: ApprovalSubject) => Promise<void>): Ctx {
  const policy = policyFromDocument({ version: 1, sheds: { dev: { ssh } } }).resolve('dev')!;
  const approvals: ApprovalSubject[] = [];
  return {
    shed: 'dev', requestId: crypto.randomUUID(), namespace: 'ssh-agent', operation: 'op', policy, log,
    signal: new AbortController().signal, approval: 'none', approvals,
    async approve(subject) {
      approvals.push(subject);
      await approve?.(subject);
    },
  };
}

async function refusal(p: Promise<unknown>): Promise<BrokerError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err, 'expected a refusal').to.be.instanceOf(BrokerError);
  return err as BrokerError;
}

describe('ssh-agent handler', function () {
  this.timeout(20_000);
  let dir: string;
  let home: string;
  let ed: KeyPair;
  let rsa: KeyPair;
  let stranger: KeyPair;
  let host: LocalKey;
  let agent: RealAgent;

  before(async () => {
    dir = tempDir('shed-sh');
    home = path.join(dir, 'home');
    const ssh = path.join(home, '.ssh');
    fs.mkdirSync(ssh, { recursive: true, mode: 0o700 });
    const other = path.join(dir, 'other');
    fs.mkdirSync(other, { mode: 0o700 });
    [ed, rsa, stranger] = await Promise.all([
      makeKey(ssh, 'id_ed25519', 'ed25519'),
      makeKey(ssh, 'id_rsa', 'rsa'),
      makeKey(other, 'stranger', 'ed25519'),
      makeKey(ssh, 'id_ecdsa', 'ecdsa', 'a passphrase'),
      makeKey(other, 'host', 'ed25519'),
    ]);
    host = new LocalKeys(memoryLogger()).load(home, [path.join(other, 'host')]).find((k) => k.file.endsWith('host'))!;
    agent = await startRealAgent(path.join(dir, 'agent.sock'), [ed]);
  });

  after(async () => {
    await agent?.stop();
  });

  const handler = (env: NodeJS.ProcessEnv = {}, log = memoryLogger()): NamespaceHandler => createSshHandler({ log, env, homedir: () => home });

  it('local-keys: skips a passphrase-protected key and a key others can read, saying which file and what to do', async () => {
    const loose = path.join(dir, 'other', 'loose');
    fs.copyFileSync(ed.file, loose);
    fs.chmodSync(loose, 0o644);
    const log = memoryLogger();
    const h = handler({}, log);
    const listed = await h.handle('list', {}, ctxFor({ mode: 'local-keys', keys: [loose, path.join(dir, 'nope')] }, log));
    const fps = (listed.keys as Array<{ blob: string }>).map((k) => keyLineBlob(`x ${k.blob}`)!);
    expect(fps.map((b) => b.toString('base64'))).to.have.members([ed, rsa].map((k) => k.pubLine.split(' ')[1]));
    const text = log.lines.join('\n');
    expect(text).to.include(`skipping ssh key ${path.join(home, '.ssh', 'id_ecdsa')}: it is protected by a passphrase`).and.include('ssh-add');
    expect(text).to.include(`skipping ssh key ${loose}: its mode 644`).and.include(`chmod 600 ${loose}`);
    expect(text).to.include(`${path.join(dir, 'nope')} listed in the policy's ssh.keys cannot be read (ENOENT)`);
    // Once per file, not once per request.
    await h.handle('list', {}, ctxFor({ mode: 'local-keys', keys: [loose] }, log));
    expect(log.lines.filter((l) => l.includes(`skipping ssh key ${loose}`))).to.have.length(1);
  });

  it('auto picks agent-forward when the agent answers, else local-keys; status says which', async () => {
    const h = handler({ SSH_AUTH_SOCK: agent.sock });
    expect(await h.handle('status', {}, ctxFor({}))).to.deep.equal({ connected: true, mode: 'agent-forward', key_count: 1 });
    expect(await handler({}).handle('status', {}, ctxFor({}))).to.deep.equal({ connected: true, mode: 'local-keys', key_count: 2 });
    const gone = handler({ SSH_AUTH_SOCK: path.join(dir, 'no-agent.sock') });
    expect(await gone.handle('status', {}, ctxFor({}))).to.deep.include({ mode: 'local-keys', key_count: 2 });
    expect(await h.handle('status', {}, ctxFor({ allowed_keys: [rsa.fingerprint] }))).to.deep.include({ key_count: 0 });
    await h.close?.();
  });

  it('agent-forward without an agent is AGENT_UNAVAILABLE, with the fix in the host log', async () => {
    const log = memoryLogger();
    const h = handler({}, log);
    const err = await refusal(h.handle('list', {}, ctxFor({ mode: 'agent-forward', agent_socket: path.join(dir, 'none.sock') }, log)));
    expect(err.code).to.equal('AGENT_UNAVAILABLE');
    expect(log.lines.join('\n')).to.include('none.sock').and.include('ssh-add');
    expect(await h.handle('status', {}, ctxFor({ mode: 'agent-forward' }))).to.deep.include({ connected: false });
  });

  it('a key the backend lacks is KEY_NOT_FOUND; one outside allowed_keys is KEY_NOT_ALLOWED before any backend', async () => {
    const blob = keyLineBlob(stranger.pubLine)!.toString('base64');
    const sign = { operation: 'sign', public_key: blob, data: Buffer.from('x').toString('base64'), flags: 0 };
    for (const [env, ssh] of [[{}, { mode: 'local-keys' }], [{ SSH_AUTH_SOCK: agent.sock }, { mode: 'agent-forward' }]] as const) {
      const h = handler(env);
      expect((await refusal(h.handle('sign', sign, ctxFor(ssh)))).code).to.equal('KEY_NOT_FOUND');
      const ctx = ctxFor({ ...ssh, allowed_keys: [ed.fingerprint] });
      expect((await refusal(h.handle('sign', sign, ctx))).code).to.equal('KEY_NOT_ALLOWED');
      expect(ctx.approvals).to.have.length(0);
      await h.close?.();
    }
  });

  it('asks the approval gate with the fingerprint before signing, and a refusal stops the sign', async () => {
    const h = handler({ SSH_AUTH_SOCK: agent.sock });
    const payload = { operation: 'sign', public_key: keyLineBlob(ed.pubLine)!.toString('base64'), data: Buffer.from('x').toString('base64'), flags: 0 };
    const ok = ctxFor({});
    const sig = await h.handle('sign', payload, ok);
    expect(sig.format).to.equal('ssh-ed25519');
    expect(ok.approvals).to.deep.equal([{ subject: ed.fingerprint, description: `sign with ${ed.fingerprint} (ED25519) for arbitrary data` }]);
    expect(ok.detail).to.equal(ed.fingerprint);
    const no = ctxFor({}, memoryLogger(), async () => { throw new BrokerError('APPROVAL_DENIED', 'no'); });
    expect((await refusal(h.handle('sign', payload, no))).code).to.equal('APPROVAL_DENIED');
    await h.close?.();
  });

  describe('destination restriction', () => {
    const sid = crypto.randomBytes(32);
    const userKey = () => keyLineBlob(ed.pubLine)!;
    const userauth = (hostkey?: Buffer, session = sid) => Buffer.concat([
      sshString(session), Buffer.from([50]), sshString('git'), sshString('ssh-connection'),
      sshString(hostkey ? HOSTBOUND_METHOD : 'publickey'), Buffer.from([1]), sshString('ssh-ed25519'), sshString(userKey()),
      ...(hostkey ? [sshString(hostkey)] : []),
    ]);
    const signReq = (data: Buffer) => ({ operation: 'sign', public_key: userKey().toString('base64'), data: data.toString('base64'), flags: 0 });
    const bindReq = (session: Buffer, sig: Buffer, forwarding = false) => ({
      operation: 'bind', hostkey: host.blob.toString('base64'), session_id: session.toString('base64'), signature: sig.toString('base64'), is_forwarding: forwarding,
    });
    const restricted = () => ({ mode: 'local-keys', allowed_hosts: [{ host: 'git.example', key: `ssh-ed25519 ${host.blob.toString('base64')}` }] });

    it('refuses a bind whose server signature does not verify', async () => {
      const h = handler();
      const wrong = encodeSignature(signWithLocalKey(host, crypto.randomBytes(32), 0));
      const err = await refusal(h.handle('bind', bindReq(sid, wrong), ctxFor({})));
      expect(err.code).to.equal('BIND_FAILED');
      expect(err.options.detail).to.include('signature does not verify');
    });

    it('signs a login only for a session bound to an allowed host key, and refuses other data', async () => {
      const h = handler();
      const ctx = () => ctxFor(restricted());
      expect((await refusal(h.handle('sign', signReq(userauth()), ctx()))).message).to.include('not bound');
      const good = encodeSignature(signWithLocalKey(host, sid, 0));
      const bound = ctxFor(restricted());
      expect(await h.handle('bind', bindReq(sid, good), bound)).to.deep.equal({ bound: true });
      expect(bound.detail).to.include(host.fingerprint).and.include('in allowed_hosts');
      expect((await h.handle('sign', signReq(userauth(host.blob)), ctx())).format).to.equal('ssh-ed25519');
      expect((await h.handle('sign', signReq(userauth()), ctx())).format).to.equal('ssh-ed25519');
      // The host key appended by the hostbound method must be the bound one.
      const other = keyLineBlob(stranger.pubLine)!;
      expect((await refusal(h.handle('sign', signReq(userauth(other)), ctx()))).code).to.equal('HOST_NOT_ALLOWED');
      // The same session bound by another shed proves nothing for this one.
      const elsewhere = ctxFor(restricted());
      (elsewhere as { shed: string }).shed = 'other';
      expect((await refusal(h.handle('sign', signReq(userauth()), elsewhere))).code).to.equal('HOST_NOT_ALLOWED');
      expect((await refusal(h.handle('sign', signReq(Buffer.from('arbitrary')), ctx()))).code).to.equal('HOST_NOT_ALLOWED');
      // A server key not listed.
      const sid2 = crypto.randomBytes(32);
      await h.handle('bind', bindReq(sid2, encodeSignature(signWithLocalKey(host, sid2, 0))), ctxFor({}));
      const notListed = ctxFor({ mode: 'local-keys', allowed_hosts: [{ host: 'x', key: stranger.pubLine }] });
      const err = await refusal(h.handle('sign', signReq(userauth(undefined, sid2)), notListed));
      expect(err.code).to.equal('HOST_NOT_ALLOWED');
      expect(err.message).to.include(host.fingerprint).and.include('allowed_hosts');
      // A session bound for forwarding is not a login.
      const sid3 = crypto.randomBytes(32);
      await h.handle('bind', bindReq(sid3, encodeSignature(signWithLocalKey(host, sid3, 0)), true), ctxFor({}));
      expect((await refusal(h.handle('sign', signReq(userauth(undefined, sid3)), ctx()))).message).to.include('forwarding');
    });
  });
});

/** One agent-protocol exchange on a fresh connection: write `parts` (with a pause between), read one reply frame. */
function exchange(sock: string, parts: Buffer[], pauseMs = 30): Promise<Buffer | 'closed'> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(sock);
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        s.destroy();
        resolve(buf.subarray(4, 4 + buf.readUInt32BE(0)));
      }
    });
    s.on('close', () => resolve('closed'));
    s.on('error', reject);
    s.on('connect', async () => {
      for (const [i, p] of parts.entries()) {
        if (i) await new Promise((r) => setTimeout(r, pauseMs));
        s.write(p);
      }
    });
  });
}

function frame(type: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1);
  head[4] = type;
  return Buffer.concat([head, body]);
}

describe('shed-ext-ssh-agent (guest) protocol edges', function () {
  this.timeout(20_000);
  let dir: string;
  let key: KeyPair;
  let realAgent: RealAgent;
  let harness: Harness;
  let guest: RunningAgent;
  let guestLog: ReturnType<typeof memoryLogger>;

  before(async () => {
    dir = tempDir('shed-ge');
    key = await makeKey(dir, 'k', 'ed25519');
    realAgent = await startRealAgent(path.join(dir, 'host.sock'), [key]);
    harness = await startDirectBroker({
      policy: { version: 1, sheds: { dev: { ssh: { mode: 'agent-forward', agent_socket: realAgent.sock } } } },
      handlers: [createSshHandler({ log: memoryLogger(), env: {} })],
    });
    guestLog = memoryLogger('guest');
    guest = await startSshAgent({ sockPath: path.join(dir, 'g', 'agent.sock'), publishUrl: harness.publishUrl('dev'), log: guestLog });
  });

  after(async () => {
    await guest?.close();
    await harness?.stop();
    await realAgent?.stop();
  });

  it('answers a frame whose length and body arrive in separate writes', async () => {
    const f = frame(11);
    const reply = await exchange(guest.sockPath, [f.subarray(0, 2), f.subarray(2, 4), f.subarray(4)]);
    expect(Buffer.isBuffer(reply) && reply[0]).to.equal(12);
    expect((reply as Buffer).readUInt32BE(1)).to.equal(1);
  });

  it('answers FAILURE to add, remove, lock, unknown and malformed messages and extensions, and keeps the connection', async () => {
    const s = net.createConnection(guest.sockPath);
    await new Promise((r) => s.once('connect', r));
    const replies: number[] = [];
    const done = new Promise<void>((resolve) => {
      let buf = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
          replies.push(buf[4]!);
          buf = buf.subarray(4 + buf.readUInt32BE(0));
        }
        if (replies.length === 10) resolve();
      });
    });
    // All at once, in one write: the answers come in order.
    s.write(Buffer.concat([
      frame(17, Buffer.concat([sshString('ssh-ed25519'), sshString(Buffer.alloc(32)), sshString(Buffer.alloc(64)), sshString('c')])),
      frame(19),
      frame(22, sshString('passphrase')),
      frame(99),
      frame(27, sshString('query')),
      Buffer.from([0, 0, 0, 0]),
      frame(13, Buffer.concat([sshString(keyLineBlob(key.pubLine)!), sshString('data')])),
      frame(13, Buffer.concat([sshString(''), sshString('data'), Buffer.alloc(4)])),
      frame(11, Buffer.from('trailing')),
      frame(11),
    ]));
    await done;
    s.destroy();
    // `query` is the one extension answered with SUCCESS (and the names of those served).
    expect(replies).to.deep.equal([5, 5, 5, 5, 6, 5, 5, 5, 5, 12]);
  });

  it('real ssh-add cannot add or remove keys through it', async () => {
    const env = { ...cleanEnv(dir), SSH_AUTH_SOCK: guest.sockPath };
    const add = await run('ssh-add', [key.file], { env });
    expect(add.code).not.to.equal(0);
    const del = await run('ssh-add', ['-D'], { env });
    expect(del.code).not.to.equal(0);
    const list = await run('ssh-add', ['-l'], { env });
    expect(list.stdout).to.include(key.fingerprint);
  });

  it('closes a connection that announces an oversized message', async () => {
    const big = Buffer.alloc(4);
    big.writeUInt32BE(300 * 1024);
    expect(await exchange(guest.sockPath, [big])).to.equal('closed');
    expect(guestLog.lines.join('\n')).to.include('the limit is 262144');
  });

  it('without a host: warns how to fix it, says "not connected", keeps serving and fails fast', async () => {
    const log = memoryLogger('guest');
    const sock = path.join(dir, 'lonely', 'agent.sock');
    const lonely = await startSshAgent({ sockPath: sock, publishUrl: `unix:${path.join(dir, 'no-broker.sock')}`, log });
    try {
      expect(lonely.connected).to.equal(false);
      expect(log.lines.join('\n')).to.include('shed-host-agent');
      expect(fs.readFileSync(lonely.statusPath, 'utf8')).to.match(/^not connected: cannot reach the broker socket .*no-broker\.sock/);
      const t0 = Date.now();
      const list = await run('ssh-add', ['-l'], { env: { ...cleanEnv(dir), SSH_AUTH_SOCK: sock } });
      expect(list.code).to.not.equal(0);
      expect(Date.now() - t0).to.be.lessThan(3000);
      expect(log.lines.join('\n')).to.include('listing keys failed');
    } finally {
      await lonely.close();
    }
    expect(fs.existsSync(sock)).to.equal(false);
    expect(fs.existsSync(lonely.statusPath)).to.equal(false);
  });

  it('replaces a stale socket file, refuses a live one and a non-socket', async () => {
    const sock = path.join(dir, 'stale', 'agent.sock');
    fs.mkdirSync(path.dirname(sock), { mode: 0o700 });
    // A crashed agent leaves its socket file behind: a process that listens and is killed.
    const crashed = await run(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))", sock]);
    expect(crashed.signal).to.equal('SIGKILL');
    expect(fs.lstatSync(sock).isSocket()).to.equal(true);
    const live = await startSshAgent({ sockPath: path.join(dir, 'stale', 'live.sock'), publishUrl: harness.publishUrl('dev'), log: memoryLogger() });
    const err = await startSshAgent({ sockPath: live.sockPath, publishUrl: harness.publishUrl('dev'), log: memoryLogger() }).then(() => undefined, (e: Error) => e);
    expect(err?.message).to.include('another agent is already serving');
    await live.close();
    const fresh = await startSshAgent({ sockPath: sock, publishUrl: harness.publishUrl('dev'), log: memoryLogger() });
    expect(fs.statSync(sock).mode & 0o777).to.equal(0o600);
    await fresh.close();
    const plain = path.join(dir, 'stale', 'plain');
    fs.writeFileSync(plain, 'x');
    const notSock = await startSshAgent({ sockPath: plain, publishUrl: harness.publishUrl('dev'), log: memoryLogger() }).then(() => undefined, (e: Error) => e);
    expect(notSock?.message).to.include('is not a socket');
  });
});
