/**
 * Token sources without a server: what a credentials program may print, how
 * it is run (deadline, bounded output, no shell, nothing of stdout in an
 * error), and the refresh rules (half the remaining life, one refresh at a
 * time, backoff after a failure, a 401 acted on once).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { parseCredentials } from '../../host-broker/transports/credentials.js';
import { bootstrapArgv, checkBootstrap, lastLine, runBounded } from '../../host-broker/transports/mint.js';
import { createTokenSource, MintingTokenSource } from '../../host-broker/transports/token-source.js';
import { memoryLogger } from '../../protocol/log.js';
import { tempDir, waitFor } from '../support/procs.js';

const SECRET = 'shed_credentials_c2VjcmV0LXRva2VuLXRleHQtZm9yLXRlc3Rz';
const pin = 'ab'.repeat(32);

function bundle(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ token: SECRET, scope: 'credentials', token_id: 't1', expires_at: new Date(Date.now() + 3600_000).toISOString(), tls_cert_fingerprint: `sha256:${pin}`, http_port: 8080, https_port: 8443, ...extra });
}

describe('parseCredentials', () => {
  it('takes a bare token or the bundle, with its expiry and pin', () => {
    expect(parseCredentials(`${SECRET}\n`, 'x')).to.deep.equal({ token: SECRET });
    const c = parseCredentials(bundle(), 'x');
    expect(c.token).to.equal(SECRET);
    expect(c.tlsPin).to.equal(pin);
    expect(c.expiresAt).to.be.closeTo(Date.now() + 3600_000, 2000);
    expect(c.httpsPort).to.equal(8443);
  });

  it('refuses what is not a usable token, never quoting the text', () => {
    const cases: [string, RegExp][] = [
      ['', /is empty/],
      [`${SECRET} extra`, /characters a token cannot have/],
      [`${SECRET}\n${SECRET}`, /more than one line/],
      [`{"token": "${SECRET}"`, /starts like JSON but does not parse/],
      [JSON.stringify({ tok: SECRET }), /not a credentials bundle \(check token\)/],
      [bundle({ scope: 'control' }), /scope control; the plugin bus needs scope credentials/],
      [bundle({ expires_at: 'tomorrow' }), /expires_at is not an RFC 3339 time/],
      [bundle({ expires_at: new Date(Date.now() - 1000).toISOString() }), /printed a token that expired at/],
      [bundle({ tls_cert_fingerprint: 'md5:00' }), /tls_cert_fingerprint .* must be sha256:<64 hex digits/],
      [bundle({ token: `${SECRET}\r\nX-Evil: 1` }), /more than one line/],
    ];
    for (const [text, re] of cases) {
      let message = '';
      try {
        parseCredentials(text, 'server.token_command (t)');
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message, text.slice(0, 40)).to.match(re);
      expect(message).not.to.include(SECRET.slice(10));
    }
  });
});

describe('runBounded', function () {
  this.timeout(20_000);

  it('returns stdout on exit 0; runs argv without a shell', async () => {
    expect((await runBounded(['/bin/echo', '$HOME;', 'x'], { timeoutMs: 5000, what: 'echo' })).stdout).to.equal('$HOME; x\n');
  });

  it('a failure names the exit status and the last stderr line (redacted), never stdout', async () => {
    const script = `echo ${SECRET}; echo "first line" >&2; echo "token was ${SECRET} and abc123" >&2; exit 3`;
    const err = await runBounded(['/bin/sh', '-c', script], { timeoutMs: 5000, what: 'mint', redact: ['abc123'] }).then(() => undefined, (e: Error) => e);
    expect(err?.message).to.equal('mint exited with status 3: token was shed_credentials_[redacted] and [redacted]');
  });

  it('kills a program (and what it started) past its deadline, and one that prints too much', async () => {
    const t0 = Date.now();
    const slow = await runBounded(['/bin/sh', '-c', 'sleep 30 & sleep 30'], { timeoutMs: 300, what: 'slow' }).then(() => undefined, (e: Error) => e);
    expect(slow?.message).to.equal('slow did not finish within 0.3 s');
    expect(Date.now() - t0).to.be.below(3000);
    const loud = await runBounded(['/usr/bin/yes'], { timeoutMs: 5000, what: 'loud' }).then(() => undefined, (e: Error) => e);
    expect(loud?.message).to.match(/^loud printed more than 65536 bytes on stdout/);
  });

  it('says when the program does not exist', async () => {
    const err = await runBounded(['/nonexistent/shed'], { timeoutMs: 5000, what: 'server.token_command (shed)' }).then(() => undefined, (e: Error) => e);
    expect(err?.message).to.equal('cannot run server.token_command (shed): /nonexistent/shed was not found (check the path, or PATH of shed-host-agent)');
  });

  it('lastLine escapes control characters', () => {
    expect(lastLine('ok\n\x1b[31mred\x07\n\n', [])).to.equal('\\x1b[31mred\\x07');
  });
});

describe('bootstrap spec', () => {
  const spec = { host: 'mini.local', port: 2222, user: '_bootstrap', identityFile: '/k/id', knownHosts: '/k/known_hosts', clientName: 'my-laptop' };

  it('runs the OpenSSH client with the pinned known_hosts only, batch mode, the given identity only', () => {
    expect(bootstrapArgv(spec)).to.deep.equal([
      'ssh', '-p', '2222', '-i', '/k/id', '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes',
      '-o', 'UserKnownHostsFile=/k/known_hosts', '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=10', '-o', 'LogLevel=ERROR',
      '-o', 'ForwardAgent=no', '-o', 'ClearAllForwardings=yes', '-T', '_bootstrap@mini.local', 'credentials', 'my-laptop',
    ]);
  });

  it('refuses what could pass for an ssh option or shell syntax', () => {
    const bad: [Partial<typeof spec>, RegExp][] = [
      [{ host: '-oProxyCommand=touch /tmp/x' }, /bootstrap\.host .* is not a host name/],
      [{ host: 'a b' }, /is not a host name/],
      [{ user: '-l root' }, /bootstrap\.user .* is not a user name/],
      [{ clientName: 'x; rm -rf /' }, /client_name .* must be letters/],
      [{ clientName: '$(id)' }, /client_name/],
      [{ port: 0 }, /ssh_port 0 is not a TCP port/],
      [{ identityFile: 'relative/key' }, /identity_file .* must be an absolute path/],
    ];
    for (const [over, re] of bad) expect(() => checkBootstrap({ ...spec, ...over }, 'server.bootstrap')).to.throw(re);
    expect(() => checkBootstrap(spec, 'server.bootstrap')).not.to.throw();
    expect(() => checkBootstrap({ ...spec, host: '::1' }, 'k')).not.to.throw();
  });
});

describe('MintingTokenSource', function () {
  this.timeout(20_000);
  const timings = { mintTimeoutMs: 2000, mintBackoffMs: 50, mintMaxBackoffMs: 200, minRefreshMs: 50 };

  function source(obtain: () => Promise<string>, extra: Partial<ConstructorParameters<typeof MintingTokenSource>[0]> = {}) {
    const log = memoryLogger('t');
    const s = new MintingTokenSource({ key: 'server', label: 'server.token_command (t)', log, timings, obtain: async () => ({ stdout: await obtain() }), ...extra });
    return { s, log };
  }

  it('one refresh at a time, however many callers; a 401 is acted on once per token', async () => {
    let runs = 0;
    let release: (() => void) | undefined;
    const { s } = source(async () => {
      runs += 1;
      await new Promise<void>((r) => (release = r));
      return `tok-${runs}`;
    });
    await s.start();
    expect(s.pending()).to.equal(true);
    const joined = Promise.all([s.refresh(), s.refresh(), s.refresh()]);
    await waitFor(() => release, 1000, 'the first run');
    release!();
    await joined;
    await s.firstOutcome;
    expect([runs, s.current()]).to.deep.equal([1, 'tok-1']);
    s.refused('tok-1');
    s.refused('tok-1');
    s.refused('stale-token');
    expect(s.current()).to.equal(undefined);
    expect(s.problem()).to.equal('shed-server refused the token from server.token_command (t) (401)');
    await waitFor(() => release && runs === 2, 1000, 'the refresh');
    release!();
    await waitFor(() => s.current() === 'tok-2', 1000, 'the new token');
    expect(runs).to.equal(2);
    s.stop();
  });

  it('refreshes at about half the remaining life', async () => {
    const ttl = 1000;
    const got: number[] = [];
    const { s } = source(async () => {
      got.push(Date.now());
      return bundle({ expires_at: new Date(Date.now() + ttl).toISOString() });
    });
    await s.start();
    await waitFor(() => got.length >= 3, 5000, 'two refreshes');
    s.stop();
    const gaps = got.slice(1).map((t, i) => t - got[i]!);
    // Half of 1 s, ±20 % jitter, plus the run itself.
    for (const gap of gaps) expect(gap).to.be.within(350, 1000);
  });

  it('a failing program: the reason is logged once at warn, retried with backoff, the token in hand kept until it expires', async () => {
    let fail = false;
    let runs = 0;
    const { s, log } = source(async () => {
      runs += 1;
      if (fail) throw new Error('mint exited with status 1: not allowed');
      return bundle({ expires_at: new Date(Date.now() + 600).toISOString() });
    }, { timings: { ...timings, minRefreshMs: 10 } });
    await s.start();
    await s.firstOutcome;
    expect(s.current()).to.equal(SECRET);
    fail = true;
    await waitFor(() => log.lines.some((l) => l.includes('not allowed')), 2000, 'a failure');
    expect(log.lines.find((l) => l.includes('not allowed'))).to.match(/WARN cannot get a token from server\.token_command \(t\): mint exited with status 1: not allowed; trying again in \d+ ms; the token in hand is used until it expires/);
    await waitFor(() => s.current() === undefined, 2000, 'the token to expire');
    expect(s.problem()).to.equal('cannot get a token from server.token_command (t): mint exited with status 1: not allowed');
    const before = runs;
    await new Promise((r) => setTimeout(r, 500));
    // 50 → 100 → 200 → 200 ms: a handful of runs, not a spin.
    expect(runs - before).to.be.within(1, 6);
    expect(log.lines.filter((l) => / WARN .*not allowed/.test(l))).to.have.length(1);
    fail = false;
    await waitFor(() => s.current() === SECRET, 2000, 'recovery');
    expect(log.lines.at(-1)).to.match(/got a token from server\.token_command \(t\), valid until .* \(working again\)/);
    expect(log.lines.join('\n')).not.to.include(SECRET);
    s.stop();
  });

  it('available() waits without polling and gives up when its signal aborts', async () => {
    const { s } = source(() => new Promise<string>(() => undefined));
    await s.start();
    const abort = new AbortController();
    const waiting = s.available(abort.signal);
    setTimeout(() => abort.abort(), 50);
    expect(await waiting).to.equal(false);
    s.stop();
  });
});

describe('token_file source', () => {
  it('reads at start, follows a rename over the file, and after a 401 waits for a different token', async () => {
    const dir = tempDir('shed-tok');
    const file = path.join(dir, 'token');
    fs.writeFileSync(file, 'tok-one\n', { mode: 0o600 });
    const log = memoryLogger('t');
    const s = createTokenSource({ kind: 'file', path: file }, { key: 'servers.mini2', log });
    await s.start();
    expect(s.current()).to.equal('tok-one');
    fs.writeFileSync(`${file}.new`, 'tok-two');
    fs.renameSync(`${file}.new`, file);
    await waitFor(() => s.current() === 'tok-two', 3000, 'the new token');
    s.refused('tok-two');
    expect(s.current()).to.equal(undefined);
    expect(s.problem()).to.equal(`shed-server refused the token in servers.mini2.token_file ${file} (401); put a valid token in the file`);
    fs.writeFileSync(file, 'tok-three');
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 3000);
    expect(await s.available(abort.signal)).to.equal(true);
    expect(s.current()).to.equal('tok-three');
    // A file that becomes unreadable keeps the token in hand, and says so once.
    fs.writeFileSync(file, '');
    await waitFor(() => log.lines.some((l) => l.includes('is empty')), 3000, 'the warning');
    expect(s.current()).to.equal('tok-three');
    expect(log.lines.join('\n')).to.match(/servers\.mini2\.token_file .* is empty; put shed-server's token in it; still using the token read before/);
    expect(log.lines.join('\n')).not.to.match(/tok-(one|two|three)/);
    s.stop();
  });
});
