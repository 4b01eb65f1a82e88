/**
 * Every kind of key users really have, through shed with real OpenSSH:
 * user certificates (held by the host's ssh-agent, or beside a key file for
 * local-keys) logging in to an sshd that trusts only their CA; a FIDO
 * security key (held by a software agent, see sk-agent.ts) whose
 * signatures come back byte for byte and log in; ECDSA P-384 and P-521; RSA
 * with SHA-256 and SHA-512 signatures; and a gate that applies to AWS only
 * asking nothing for ssh.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startSshAgent, type RunningAgent } from '../../guest-services/ssh-agent/agent.js';
import { MemoryAudit } from '../../host-broker/audit/audit.js';
import { createSshHandler } from '../../host-broker/ssh/handler.js';
import { memoryLogger } from '../../protocol/log.js';
import { frame, parseSignResponse, sshString, u32, encodeSignature } from '../../protocol/ssh-wire.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { run, tempDir } from '../support/procs.js';
import { startSkAgent, SK_TYPE, type SkAgent } from '../support/sk-agent.js';
import { cleanEnv, makeKey, sshOptions, startRealAgent, startSshd, type KeyPair, type RealAgent, type Sshd } from '../support/sshd.js';

const CERT_ID = 'shed-test-cert';

describe('ssh: certificates, security keys and every common key type, with real OpenSSH', function () {
  this.timeout(60_000);
  let dir: string;
  let ca: KeyPair;
  let user: KeyPair;
  let other: KeyPair;
  let p384: KeyPair;
  let p521: KeyPair;
  let rsa: KeyPair;
  let certLine: string;
  let hostAgent: RealAgent;
  let sk: SkAgent;
  let caOnly: Sshd;
  let byKey: Sshd;
  const running: Array<{ stop(): Promise<void> }> = [];

  before(async () => {
    dir = tempDir('shed-keys');
    const keys = path.join(dir, 'keys');
    fs.mkdirSync(keys, { mode: 0o700 });
    [ca, user, other, p384, p521, rsa] = await Promise.all([
      makeKey(keys, 'ca', 'ed25519'),
      makeKey(keys, 'id_ed25519', 'ed25519'),
      makeKey(keys, 'other', 'ed25519'),
      makeKey(keys, 'id_p384', 'ecdsa', '', 384),
      makeKey(keys, 'id_p521', 'ecdsa', '', 521),
      makeKey(keys, 'id_rsa', 'rsa', '', 3072),
    ]);
    // A user certificate for root and alice, valid for an hour: ssh-add loads it with its key.
    const signed = await run('ssh-keygen', ['-q', '-s', ca.file, '-I', CERT_ID, '-n', 'root,alice', '-V', '-5m:+1h', `${user.file}.pub`]);
    expect(signed.code, signed.stderr).to.equal(0);
    certLine = fs.readFileSync(`${user.file}-cert.pub`, 'utf8').trim();
    hostAgent = await startRealAgent(path.join(dir, 'host-agent.sock'), [user, p384, p521, rsa]);
    sk = await startSkAgent(path.join(dir, 'sk-agent.sock'));
    [caOnly, byKey] = await Promise.all([
      // No authorized key at all: only a certificate signed by the CA gets in.
      startSshd(path.join(dir, 'sshd-ca'), [], 'ed25519', [`TrustedUserCAKeys ${ca.pubFile}`]),
      startSshd(path.join(dir, 'sshd-keys'), [p384.pubLine, p521.pubLine, rsa.pubLine, sk.pubLine]),
    ]);
  });

  after(async () => {
    for (const r of running.splice(0).reverse()) await r.stop();
    await Promise.all([caOnly?.stop(), byKey?.stop(), hostAgent?.stop(), sk?.stop()]);
  });

  /** A broker for shed dev with `ssh`, and the guest agent in front of it. */
  async function shed(ssh: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<{ harness: Harness; guest: RunningAgent; audit: MemoryAudit }> {
    const audit = new MemoryAudit();
    const harness = await startDirectBroker({
      policy: { version: 1, sheds: { dev: { ssh, ...extra } } },
      handlers: [createSshHandler({ log: memoryLogger(), env: {}, homedir: () => path.join(dir, 'home') })],
      audit,
    });
    running.push(harness);
    const guest = await startSshAgent({ sockPath: path.join(tempDir('shed-keys-g'), 'agent.sock'), publishUrl: harness.publishUrl('dev'), log: memoryLogger('guest') });
    running.push({ stop: () => guest.close() });
    return { harness, guest, audit };
  }

  const client = (guest: RunningAgent, cmd: string, args: string[]) =>
    run(cmd, args, { env: { ...cleanEnv(path.join(dir, 'client-home')), SSH_AUTH_SOCK: guest.sockPath }, timeoutMs: 20_000 });
  const login = (guest: RunningAgent, sshd: Sshd, extra: string[] = []) =>
    client(guest, 'ssh', [...sshOptions(sshd.port, path.join(dir, 'known_hosts'), extra), 'root@127.0.0.1', 'echo in']);

  it('a certificate held by the host\'s ssh-agent reaches the guest and logs in where only its CA is trusted; the audit names it', async () => {
    const { guest, audit } = await shed({ mode: 'agent-forward', agent_socket: hostAgent.sock });
    const listed = await client(guest, 'ssh-add', ['-L']);
    expect(listed.code, listed.stderr).to.equal(0);
    expect(listed.stdout.split('\n').map((l) => l.split(' ').slice(0, 2).join(' '))).to.include(certLine.split(' ').slice(0, 2).join(' '));
    const l = await client(guest, 'ssh-add', ['-l']);
    expect(l.stdout).to.match(new RegExp(`${user.fingerprint.replace(/[+/]/g, '\\$&')} .*\\(ED25519-CERT\\)`));
    const r = await login(guest, caOnly);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal('in');
    const signed = audit.entries.filter((e) => e.op === 'sign' && e.result === 'ok');
    expect(signed.map((e) => e.detail), JSON.stringify(signed)).to.include(`${user.fingerprint} (ED25519-CERT "${CERT_ID}" for root,alice)`);
  });

  it('allowed_keys naming the key allows its certificate; naming another hides both', async () => {
    const allowed = await shed({ mode: 'agent-forward', agent_socket: hostAgent.sock, allowed_keys: [user.fingerprint] });
    expect((await client(allowed.guest, 'ssh-add', ['-L'])).stdout).to.include(certLine.split(' ')[1]);
    expect((await login(allowed.guest, caOnly)).code).to.equal(0);
    const denied = await shed({ mode: 'agent-forward', agent_socket: hostAgent.sock, allowed_keys: [other.fingerprint] });
    expect((await client(denied.guest, 'ssh-add', ['-L'])).stdout).not.to.include(certLine.split(' ')[1]);
    expect((await login(denied.guest, caOnly)).code).not.to.equal(0);
  });

  it('a certificate login passes allowed_hosts like a key\'s: its request names the certificate, its key signs', async () => {
    const { guest, audit } = await shed({ mode: 'agent-forward', agent_socket: hostAgent.sock, allowed_hosts: [{ host: 'ca-only', key: caOnly.hostKey.pubLine }] });
    const r = await login(guest, caOnly);
    expect(r.code, r.stderr).to.equal(0);
    expect(audit.entries.some((e) => e.op === 'sign' && e.result === 'ok' && e.detail.includes(`"${CERT_ID}"`))).to.equal(true);
    // Another server is still refused.
    expect((await login(guest, byKey, ['-o', 'IdentitiesOnly=yes', '-i', p384.pubFile])).code).not.to.equal(0);
  });

  it('local-keys offers a key\'s certificate beside it (<key>-cert.pub), and logs in with it', async () => {
    const ssh = path.join(dir, 'home', '.ssh');
    fs.mkdirSync(ssh, { recursive: true, mode: 0o700 });
    fs.copyFileSync(user.file, path.join(ssh, 'id_ed25519'));
    fs.chmodSync(path.join(ssh, 'id_ed25519'), 0o600);
    fs.copyFileSync(`${user.file}-cert.pub`, path.join(ssh, 'id_ed25519-cert.pub'));
    const { guest, audit } = await shed({ mode: 'local-keys' });
    const listed = (await client(guest, 'ssh-add', ['-L'])).stdout;
    expect(listed).to.include(certLine.split(' ')[1]).and.include(user.pubLine.split(' ')[1]);
    const r = await login(guest, caOnly);
    expect(r.code, r.stderr).to.equal(0);
    expect(audit.entries.some((e) => e.op === 'sign' && e.result === 'ok' && e.detail.includes(`"${CERT_ID}"`))).to.equal(true);
  });

  it('a FIDO security key is listed as it is, its signatures come back byte for byte, and it logs in', async () => {
    const { guest } = await shed({ mode: 'agent-forward', agent_socket: sk.sock });
    const listed = await client(guest, 'ssh-add', ['-L']);
    expect(listed.stdout.trim()).to.equal(sk.pubLine);
    // A sign request straight to the guest agent: the answer is the security key's own, flags and counter included.
    const data = Buffer.from('sign me exactly');
    const reply = await agentRequest(guest.sockPath, frame(13, Buffer.concat([sshString(sk.blob), sshString(data), u32(0)])));
    expect(reply[4]).to.equal(14);
    const sig = parseSignResponse(reply.subarray(5));
    expect(sig.format).to.equal(SK_TYPE);
    expect(sig.rest).to.have.length(5);
    expect(encodeSignature(sig).equals(sk.signatures.at(-1)!)).to.equal(true);
    // sshd checks it in software: flags, counter and signature all came through.
    const r = await login(guest, byKey, ['-o', 'IdentitiesOnly=no']);
    expect(r.code, r.stderr).to.equal(0);
  });

  for (const [name, key, algorithm] of [
    ['ECDSA P-384', () => p384, 'ecdsa-sha2-nistp384'],
    ['ECDSA P-521', () => p521, 'ecdsa-sha2-nistp521'],
    ['RSA with SHA-256 signatures', () => rsa, 'rsa-sha2-256'],
    ['RSA with SHA-512 signatures', () => rsa, 'rsa-sha2-512'],
  ] as const) {
    it(`${name} logs in through the host's agent`, async () => {
      const { guest } = await shed({ mode: 'agent-forward', agent_socket: hostAgent.sock });
      const r = await login(guest, byKey, ['-o', 'IdentitiesOnly=yes', '-i', key().pubFile, '-o', `PubkeyAcceptedAlgorithms=${algorithm}`]);
      expect(r.code, r.stderr).to.equal(0);
    });
  }

  it('a gate that applies to aws-credentials only asks nothing for an ssh login', async () => {
    const prompts = path.join(dir, 'prompts');
    const gate = path.join(dir, 'gate');
    fs.writeFileSync(gate, `#!/bin/sh\necho "$SHED_NAMESPACE" >> "${prompts}"\nexit 1\n`, { mode: 0o700 });
    const { guest, audit } = await shed({ mode: 'agent-forward', agent_socket: hostAgent.sock }, { approval: { gate: 'command', command: [gate], applies_to: ['aws-credentials'] } });
    const r = await login(guest, byKey, ['-o', 'IdentitiesOnly=yes', '-i', p384.pubFile]);
    expect(r.code, r.stderr).to.equal(0);
    expect(fs.existsSync(prompts)).to.equal(false);
    expect(audit.entries.filter((e) => e.op === 'sign').every((e) => e.approval === 'none')).to.equal(true);
  });
});

/** One request to an agent socket, its whole answer. */
function agentRequest(sock: string, request: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect(sock, () => s.write(request));
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        s.destroy();
        resolve(buf);
      }
    });
    s.on('error', reject);
  });
}
