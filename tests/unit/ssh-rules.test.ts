/** The ssh-agent rules and wire parsing: pure functions, checked against keys ssh-keygen made. */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { SessionBindings, verifySessionSignature } from '../../host-broker/ssh/bindings.js';
import { LocalKeys, signWithLocalKey, type LocalKey } from '../../host-broker/ssh/local-keys.js';
import { hostDecision, hostKeyDecision, hostPatternsMatch, keyDecision, keyLineBlob, parseKnownHosts, signingNamespaceDecision } from '../../host-broker/ssh/rules.js';
import { encodeSignature, fingerprint, HOSTBOUND_METHOD, parseSshsigNamespace, parseUserAuthRequest, sshString } from '../../host-broker/ssh/wire.js';
import type { EffectiveSsh } from '../../host-broker/policy/effective.js';
import { memoryLogger } from '../../protocol/log.js';
import { tempDir } from '../support/procs.js';
import { makeKey, type KeyPair } from '../support/sshd.js';

const base: EffectiveSsh = { enabled: true, mode: 'auto', keys: [], allowed_keys: [] };

describe('ssh rules', () => {
  let dir: string;
  let ed: KeyPair;
  let ec: KeyPair;
  let rsa: KeyPair;
  let keys: LocalKey[];

  before(async function () {
    this.timeout(20_000);
    dir = tempDir('shed-sr');
    fs.mkdirSync(path.join(dir, '.ssh'), { mode: 0o700 });
    [ed, ec, rsa] = await Promise.all([
      makeKey(path.join(dir, '.ssh'), 'id_ed25519', 'ed25519'),
      makeKey(path.join(dir, '.ssh'), 'id_ecdsa', 'ecdsa'),
      makeKey(path.join(dir, '.ssh'), 'id_rsa', 'rsa'),
    ]);
    keys = new LocalKeys(memoryLogger()).load(dir, []);
  });

  it('fingerprints blobs exactly as ssh-keygen -lf prints them', () => {
    for (const k of [ed, ec, rsa]) expect(fingerprint(keyLineBlob(k.pubLine)!)).to.equal(k.fingerprint);
  });

  it('keyDecision: empty allowed_keys admits every key, otherwise only the listed ones', () => {
    expect(keyDecision(base, ed.fingerprint).allowed).to.equal(true);
    const only = { ...base, allowed_keys: [ed.fingerprint] };
    expect(keyDecision(only, ed.fingerprint)).to.deep.include({ allowed: true });
    expect(keyDecision(only, rsa.fingerprint)).to.deep.include({ allowed: false, code: 'KEY_NOT_ALLOWED' });
  });

  it('signingNamespaceDecision: absent is any, empty is none, a list is those', () => {
    expect(signingNamespaceDecision(base, 'file').allowed).to.equal(true);
    expect(signingNamespaceDecision({ ...base, signing_namespaces: [] }, 'git')).to.deep.include({ allowed: false, code: 'SIGNING_NAMESPACE_NOT_ALLOWED' });
    const git = { ...base, signing_namespaces: ['git'] };
    expect(signingNamespaceDecision(git, 'git').allowed).to.equal(true);
    expect(signingNamespaceDecision(git, 'file')).to.deep.include({ allowed: false, code: 'SIGNING_NAMESPACE_NOT_ALLOWED' });
  });

  describe('allowed_hosts', () => {
    const salt = crypto.randomBytes(20);
    const hashed = (host: string) => `|1|${salt.toString('base64')}|${crypto.createHmac('sha1', salt).update(host).digest('base64')}`;

    it('known_hosts host patterns: plain, [host]:port, wildcards, negation, hashed', () => {
      expect(hostPatternsMatch('github.com,gitlab.com', 'gitlab.com')).to.equal(true);
      expect(hostPatternsMatch('[127.0.0.1]:2222', '[127.0.0.1]:2222')).to.equal(true);
      expect(hostPatternsMatch('[127.0.0.1]:2222', '127.0.0.1')).to.equal(false);
      expect(hostPatternsMatch('*.example.com', 'a.example.com')).to.equal(true);
      expect(hostPatternsMatch('*.example.com,!bad.example.com', 'bad.example.com')).to.equal(false);
      expect(hostPatternsMatch('host?', 'host1')).to.equal(true);
      expect(hostPatternsMatch(hashed('github.com'), 'github.com')).to.equal(true);
      expect(hostPatternsMatch(hashed('github.com'), 'gitlab.com')).to.equal(false);
    });

    it('parses known_hosts lines with markers and skips comments and junk', () => {
      const lines = parseKnownHosts(`# c\n\ngithub.com ${ed.pubLine}\n@revoked * ${ec.pubLine}\n@cert-authority *.x ${rsa.pubLine}\nnot a line\n@bogus h ${ed.pubLine}\n`);
      expect(lines.map((l) => l.marker)).to.deep.equal([undefined, 'revoked', 'cert-authority']);
    });

    it('hostDecision and hostKeyDecision by entry, by known_hosts file, hashed, revoked, unreadable', () => {
      expect(hostDecision(base, 'anything').rule).to.equal('no allowed_hosts: any host');
      expect(hostKeyDecision(base, keyLineBlob(ed.pubLine)!).allowed).to.equal(true);

      const kh = path.join(dir, 'known_hosts');
      fs.writeFileSync(kh, `${hashed('git.example.com')} ${ec.pubLine}\n@revoked * ${rsa.pubLine}\n[127.0.0.1]:2222 ${rsa.pubLine}\n`);
      const ssh: EffectiveSsh = { ...base, allowed_hosts: [{ host: 'github.com', key: ed.pubLine }, { known_hosts: kh }] };
      expect(hostDecision(ssh, 'GitHub.com')).to.deep.include({ allowed: true, rule: 'allowed_hosts lists github.com' });
      expect(hostDecision(ssh, 'git.example.com')).to.deep.include({ allowed: true });
      expect(hostDecision(ssh, 'evil.example.com')).to.deep.include({ allowed: false, code: 'HOST_NOT_ALLOWED' });

      expect(hostKeyDecision(ssh, keyLineBlob(ed.pubLine)!).rule).to.include('allowed_hosts lists github.com');
      expect(hostKeyDecision(ssh, keyLineBlob(ec.pubLine)!).rule).to.include('(a hashed host name)');
      const revoked = hostKeyDecision(ssh, keyLineBlob(rsa.pubLine)!);
      expect(revoked).to.deep.include({ allowed: false, code: 'HOST_NOT_ALLOWED' });
      expect(revoked.rule).to.include('@revoked');

      const gone: EffectiveSsh = { ...base, allowed_hosts: [{ known_hosts: path.join(dir, 'missing') }] };
      const d = hostKeyDecision(gone, keyLineBlob(ed.pubLine)!);
      expect(d.allowed).to.equal(false);
      expect(d.rule).to.include('unreadable').and.include('ENOENT');
    });
  });

  describe('what is being signed', () => {
    const sid = crypto.randomBytes(32);
    const userauth = (method: string, key: Buffer, tail: Buffer[] = []) => Buffer.concat([
      sshString(sid), Buffer.from([50]), sshString('git'), sshString('ssh-connection'), sshString(method), Buffer.from([1]),
      sshString('ssh-ed25519'), sshString(key), ...tail,
    ]);

    it('parses user-auth requests, publickey and hostbound (with the host key appended)', () => {
      const key = keyLineBlob(ed.pubLine)!;
      const host = keyLineBlob(ec.pubLine)!;
      expect(parseUserAuthRequest(userauth('publickey', key))).to.deep.include({ user: 'git', method: 'publickey' });
      const hb = parseUserAuthRequest(userauth(HOSTBOUND_METHOD, key, [sshString(host)]));
      expect(hb?.hostkey?.equals(host)).to.equal(true);
      expect(hb?.sessionId.equals(sid)).to.equal(true);
      expect(parseUserAuthRequest(userauth('publickey', key, [Buffer.from([0])]))).to.equal(undefined);
      expect(parseUserAuthRequest(userauth('password', key))).to.equal(undefined);
      expect(parseUserAuthRequest(Buffer.from('SSHSIG'))).to.equal(undefined);
      const full = userauth('publickey', key);
      for (let n = 0; n < full.length; n++) expect(parseUserAuthRequest(full.subarray(0, n)), `first ${n} bytes`).to.equal(undefined);
      expect(parseUserAuthRequest(Buffer.concat([sshString(sid), Buffer.from([51]), full.subarray(sid.length + 5)]))).to.equal(undefined);
    });

    it('reads the namespace of SSHSIG data, and nothing from other data', () => {
      const data = Buffer.concat([Buffer.from('SSHSIG'), sshString('git'), sshString(''), sshString('sha512'), sshString(crypto.randomBytes(64))]);
      expect(parseSshsigNamespace(data)).to.equal('git');
      expect(parseSshsigNamespace(data.subarray(0, data.length - 1))).to.equal(undefined);
      expect(parseSshsigNamespace(Buffer.from('hello'))).to.equal(undefined);
    });
  });

  describe('session bindings', () => {
    it('verifies a host signature over the session id for ed25519, ecdsa and RSA, and nothing else', () => {
      const sid = crypto.randomBytes(32);
      for (const k of keys) {
        const flags = k.type === 'ssh-rsa' ? 4 : 0;
        const sig = encodeSignature(signWithLocalKey(k, sid, flags));
        expect(verifySessionSignature(k.blob, sid, sig), k.type).to.equal(true);
        expect(verifySessionSignature(k.blob, crypto.randomBytes(32), sig), `${k.type} other sid`).to.equal(false);
        const other = keys.find((o) => o !== k)!;
        expect(verifySessionSignature(other.blob, sid, sig), `${k.type} other key`).to.equal(false);
        const bent = Buffer.from(sig);
        bent[bent.length - 3]! ^= 1;
        expect(verifySessionSignature(k.blob, sid, bent), `${k.type} tampered`).to.equal(false);
      }
      expect(verifySessionSignature(Buffer.from('junk'), sid, Buffer.from('junk'))).to.equal(false);
    });

    it('keeps bindings per shed, bounded, and forgets them after the TTL', () => {
      let now = 1_000;
      const b = new SessionBindings({ perShed: 2, ttlMs: 100, now: () => now });
      const host = keys[0]!.blob;
      const ids = [1, 2, 3].map((i) => Buffer.alloc(32, i));
      for (const id of ids) b.bind('a', id, host, false);
      expect(b.lookup('a', ids[0]!)).to.equal(undefined);
      expect(b.lookup('a', ids[2]!)?.hostkey.equals(host)).to.equal(true);
      expect(b.lookup('b', ids[2]!)).to.equal(undefined);
      now += 100;
      expect(b.lookup('a', ids[2]!)).to.equal(undefined);
    });
  });
});
