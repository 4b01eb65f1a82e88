/**
 * The broker against a shed server in secure mode (PROTOCOL.md 3a): pinned
 * HTTPS, scope-checked bearer tokens that expire in seconds, minted over a
 * real OpenSSH sshd whose forced command prints the bundle; token_file
 * rotation and token_command; a failing mint and its recovery.
 */
import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { BusClient } from '../../guest-services/bus-client.js';
import type { NamespaceHandler, RequestContext } from '../../host-broker/handler.js';
import type { ShedServerTransport } from '../../host-broker/transports/shed-server.js';
import type { Payload } from '../../protocol/envelope.js';
import { startShedBroker, type ShedHarness } from '../support/bus-emulator.js';
import { tempDir, waitFor } from '../support/procs.js';
import { startSecureShed, type SecureShed } from '../support/secure-shed.js';

function recorder(namespace = 'ssh-agent'): NamespaceHandler & { seen: string[] } {
  const seen: string[] = [];
  return {
    namespace: namespace as NamespaceHandler['namespace'],
    seen,
    async handle(operation: string, payload: Payload, ctx: RequestContext) {
      seen.push(ctx.requestId);
      return { shed: ctx.shed, echo: payload.echo ?? null, operation };
    },
  };
}

/** The broker's one shed-server transport (the harness passes it in `transports`). */
function transportOf(h: ShedHarness): ShedServerTransport {
  return (h.broker as unknown as { transports: ShedServerTransport[] }).transports[0]!;
}

/** Write a file the way rotation tools and editors do: a new file renamed over the old. */
function replaceFile(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

const policy = { version: 1, sheds: { alpha: {} } };

describe('secure-mode shed server: tokens minted over SSH', function () {
  this.timeout(60_000);
  let shed: SecureShed | undefined;
  let h: ShedHarness | undefined;
  const clients: BusClient[] = [];
  afterEach(async () => {
    clients.splice(0).forEach((c) => c.close());
    await h?.stop();
    await shed?.stop();
    h = undefined;
    shed = undefined;
  });
  const client = (deadlineMs = 3000) => {
    const c = new BusClient({ publishUrl: h!.publishUrl('alpha'), deadlineMs });
    clients.push(c);
    return c;
  };

  it('mints over SSH, pins TLS from the bundle, serves, and survives three token expiries without a failed guest request', async () => {
    const ttlMs = 2500;
    shed = await startSecureShed({ ttlMs });
    const handler = recorder();
    const started = Date.now();
    const busy = { version: 1, sheds: { alpha: { limits: { ssh: { per_minute: 60_000 } } } } };
    h = await startShedBroker({ policy: busy, handlers: [handler], emulator: shed.server, connection: shed.connection() });
    expect(h.server.listenerNamespaces()).to.deep.equal(['ssh-agent']);
    expect(transportOf(h).state()).to.deep.equal({ 'ssh-agent': 'connected' });
    expect(shed.authority.mints[0]).to.deep.include({ client: 'test-laptop', scope: 'credentials' });

    // Guest requests back to back for more than three lifetimes of a token.
    const c = client();
    let served = 0;
    const failures: string[] = [];
    while (Date.now() - started < 3.6 * ttlMs) {
      try {
        const answer = await c.publish('ssh-agent', { operation: 'list', echo: served });
        expect(answer).to.deep.equal({ shed: 'alpha', echo: served, operation: 'list' });
        served += 1;
      } catch (err) {
        failures.push((err as Error).message);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(failures.slice(0, 3), `${failures.length} failures`).to.deep.equal([]);
    expect(served).to.be.greaterThan(20);
    const expired = shed.authority.mints.filter((m) => m.at + ttlMs < Date.now());
    expect(expired.length, 'tokens that expired during the run').to.be.at.least(3);
    // Refreshed ahead of expiry: no call ever went out with an expired token.
    expect(shed.authority.refusals).to.deep.equal([]);
    expect(h.server.violations).to.deep.equal([]);
    const lines = h.log.lines.join('\n');
    expect(lines).to.match(/got a token from server\.bootstrap \(ssh root@127\.0\.0\.1 port \d+\), valid until \d{4}-/);
    for (const token of shed.authority.tokens) expect(lines).not.to.include(token);
    // The stand-in cut each stream when its token expired: the broker subscribed again each time.
    expect(lines.match(/subscribed to ssh-agent/g)?.length ?? 0).to.be.at.least(4);
  });

  it('after a 401 (tokens revoked) gets one new token for all namespaces and carries on', async () => {
    shed = await startSecureShed({ ttlMs: 60_000 });
    const namespaces = ['ssh-agent', 'aws-credentials', 'docker-credentials'];
    const handlers = namespaces.map((ns) => recorder(ns));
    h = await startShedBroker({ policy, handlers, emulator: shed.server, connection: shed.connection({ namespaces }) });
    expect(h.server.listenerNamespaces()).to.deep.equal([...namespaces].sort());
    expect(shed.authority.mints).to.have.length(1);
    shed.authority.revokeAll();
    await waitFor(() => shed!.authority.refusals.length > 0, 5000, 'a 401');
    await waitFor(() => h!.server.listenerNamespaces().length === 3 && shed!.authority.mints.length === 2, 10_000, 'the subscriptions to come back');
    await new Promise((r) => setTimeout(r, 300));
    expect(shed.authority.mints, 'one refresh shared by the three subscriptions').to.have.length(2);
    expect(await client().publish('docker-credentials', { operation: 'list', echo: 'after' })).to.deep.equal({ shed: 'alpha', echo: 'after', operation: 'list' });
    expect(h.log.lines.join('\n')).to.include('shed-server refused the token from server.bootstrap');
    expect(h.server.violations).to.deep.equal([]);
  });

  it('a failing mint is logged with its reason and retried; the broker serves once it works', async () => {
    shed = await startSecureShed();
    // Pin some other host key: ssh refuses the server.
    const goodPin = fs.readFileSync(shed.knownHosts, 'utf8');
    const other = crypto.generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'der' }).subarray(12);
    const wire = Buffer.concat([Buffer.from([0, 0, 0, 11]), Buffer.from('ssh-ed25519'), Buffer.from([0, 0, 0, 32]), other]);
    fs.writeFileSync(shed.knownHosts, `${goodPin.split(' ')[0]} ssh-ed25519 ${wire.toString('base64')}\n`);
    h = await startShedBroker({ policy, handlers: [recorder()], emulator: shed.server, connection: shed.connection() });
    const t = transportOf(h);
    expect(h.server.listenerNamespaces()).to.deep.equal([]);
    expect(t.state()['ssh-agent']).to.match(/^reconnecting: cannot get a token from server\.bootstrap .*Host key verification failed.*not the one pinned in/);
    const line = h.log.lines.find((l) => l.includes('cannot get a token'))!;
    expect(line).to.match(/ WARN cannot get a token from server\.bootstrap \(ssh root@127\.0\.0\.1 port \d+\): ssh exited with status 255: Host key verification failed\.; the server's SSH host key is not the one pinned in .*known_hosts: if it changed on purpose, pin the new key there \(shed server add\), otherwise do not trust this server; trying again in \d+ ms/);
    // Retries repeat the same reason at debug level only.
    await waitFor(() => h!.log.lines.filter((l) => l.includes('cannot get a token')).length >= 3, 10_000, 'retries');
    expect(h.log.lines.filter((l) => / WARN cannot get a token/.test(l))).to.have.length(1);
    // The guest is not answered meanwhile, and is not held past its deadline.
    const t0 = Date.now();
    const err = await client(600).publish('ssh-agent', { operation: 'list' }).then(() => undefined, (e: Error) => e);
    expect(err).to.be.instanceOf(Error);
    expect(Date.now() - t0).to.be.below(1500);

    // The mint service fails: ssh works, the forced command says why on stderr.
    shed.mint.failing = true;
    fs.writeFileSync(shed.knownHosts, goodPin);
    await waitFor(() => h!.log.lines.some((l) => l.includes('could not mint a token for test-laptop')), 10_000, 'the forced command\'s reason');
    expect(h.log.lines.join('\n')).to.match(/WARN cannot get a token from server\.bootstrap .*: ssh exited with status 1: shed bootstrap: the server could not mint a token for test-laptop; trying again in/);
    shed.mint.failing = false;
    await waitFor(() => h!.server.listenerNamespaces().length === 1, 10_000, 'the subscription once the mint works');
    expect(h.log.lines.join('\n')).to.match(/got a token from server\.bootstrap .*\(working again\)/);
    // The server registers the listener before the broker has read its answer: wait for the broker's side too.
    await waitFor(() => t.state()['ssh-agent'] === 'connected', 5000, 'the broker to see its subscription answered');
    expect(t.state()).to.deep.equal({ 'ssh-agent': 'connected' });
    expect(await client().publish('ssh-agent', { operation: 'list', echo: 'ok' })).to.deep.equal({ shed: 'alpha', echo: 'ok', operation: 'list' });
  });

  it('refuses a token of scope control (the CLI\'s) before using it; the server answers such a token 403', async () => {
    shed = await startSecureShed({ scope: 'control' });
    h = await startShedBroker({ policy, handlers: [recorder()], emulator: shed.server, connection: shed.connection() });
    expect(h.server.calls).to.deep.equal([]);
    expect(transportOf(h).state()['ssh-agent']).to.match(/printed a token of scope control; the plugin bus needs scope credentials/);
    // What a control token would get from the plugin API.
    const control = shed.authority.tokens[0]!;
    const status = await new Promise<number>((resolve, reject) => {
      const r = https.request(`${shed!.server.url}/api/plugins/listeners`, { headers: { authorization: `Bearer ${control}` }, rejectUnauthorized: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      r.on('error', reject);
      r.end();
    });
    expect(status).to.equal(403);
    expect(h.log.lines.join('\n')).not.to.include(control);
  });

  it('409 for a second listener holding the namespace (with a valid token): said plainly, taken over once it leaves', async () => {
    shed = await startSecureShed();
    const token = shed.authority.mint('credentials', 'other-agent').token as string;
    let rogue: import('node:http').ClientRequest | undefined;
    await new Promise<void>((resolve, reject) => {
      rogue = https.get(`${shed!.server.url}/api/plugins/listeners/ssh-agent/messages`, { headers: { accept: 'text/event-stream', authorization: `Bearer ${token}` }, rejectUnauthorized: false }, (res) => {
        expect(res.statusCode).to.equal(200);
        resolve();
      });
      rogue.on('error', reject);
    });
    h = await startShedBroker({ policy, handlers: [recorder()], emulator: shed.server, connection: shed.connection() });
    const state = transportOf(h).state()['ssh-agent']!;
    expect(state).to.equal(`reconnecting: another listener holds namespace ssh-agent on ${shed.server.url} (409 NAMESPACE_ALREADY_REGISTERED): stop the other shed-host-agent`);
    rogue!.destroy();
    await waitFor(() => transportOf(h!).state()['ssh-agent'] === 'connected', 5000, 'the take-over');
    expect(await client().publish('ssh-agent', { operation: 'list', echo: 409 })).to.deep.equal({ shed: 'alpha', echo: 409, operation: 'list' });
  });

  it('a configured tls_pin that disagrees with the bundle\'s fingerprint: refuses the credentials and says so', async () => {
    shed = await startSecureShed();
    const wrong = `sha256:${'ab'.repeat(32)}`;
    h = await startShedBroker({ policy, handlers: [recorder()], emulator: shed.server, connection: shed.connection({ tlsPin: wrong }) });
    expect(h.server.calls).to.deep.equal([]);
    const state = transportOf(h).state()['ssh-agent']!;
    expect(state).to.include(`server.tls_pin (sha256:${'ab'.repeat(32)}) disagrees with the TLS fingerprint the server's credentials name (${shed.certificate.fingerprint}): refusing them`);
    for (const token of shed.authority.tokens) expect(h.log.lines.join('\n')).not.to.include(token);
  });
});

describe('secure-mode shed server: token_file and token_command', function () {
  this.timeout(60_000);
  let shed: SecureShed | undefined;
  let h: ShedHarness | undefined;
  afterEach(async () => {
    await h?.stop();
    await shed?.stop();
    h = undefined;
    shed = undefined;
  });

  it('token_file: follows a rotation (rename over), and after a 401 waits for a new token in the file without spinning', async () => {
    shed = await startSecureShed({ ttlMs: 60_000 });
    const dir = tempDir('shed-tok');
    const file = path.join(dir, 'host-agent.token');
    const token = (n: number) => shed!.authority.mint('credentials', `file-${n}`).token as string;
    const t1 = token(1);
    fs.writeFileSync(file, t1, { mode: 0o600 });
    h = await startShedBroker({
      policy,
      handlers: [recorder()],
      emulator: shed.server,
      connection: shed.connection({ tlsPin: shed.certificate.fingerprint, token: { kind: 'file', path: file } }),
    });
    expect(h.server.listenerNamespaces()).to.deep.equal(['ssh-agent']);
    const t2 = token(2);
    replaceFile(file, `${t2}\n`);
    await waitFor(() => h!.log.lines.some((l) => l.includes(`server.token_file ${file} changed: using the token it holds now`)), 5000, 'the change to be read');
    shed.authority.revokeAll();
    // The stream of t1 is cut; the broker subscribes again with t2 (revoked as well here: 401).
    await waitFor(() => h!.log.lines.some((l) => l.includes(`shed-server refused the token in server.token_file ${file} (401)`)), 5000, 'the 401');
    const waiting = `reconnecting: shed-server refused the token in server.token_file ${file} (401); put a valid token in the file`;
    await waitFor(() => transportOf(h!).state()['ssh-agent'] === waiting, 3000, 'the state to say why');
    const calls = h.server.calls.length;
    await new Promise((r) => setTimeout(r, 1000));
    expect(h.server.calls.length - calls, 'no retries with a refused token').to.be.at.most(1);
    const t3 = token(3);
    replaceFile(file, t3);
    await waitFor(() => h!.server.listenerNamespaces().length === 1, 5000, 'the subscription with the new token');
    const c = new BusClient({ publishUrl: h.publishUrl('alpha') });
    expect(await c.publish('ssh-agent', { operation: 'list', echo: 3 })).to.deep.equal({ shed: 'alpha', echo: 3, operation: 'list' });
    c.close();
    const lines = h.log.lines.join('\n');
    for (const t of [t1, t2, t3]) expect(lines).not.to.include(t);
  });

  it('token_command: runs the program (argv, no shell), takes its bundle, and runs it again before the token expires', async () => {
    shed = await startSecureShed({ ttlMs: 2000 });
    const argv = ['/usr/bin/env', 'SSH_ORIGINAL_COMMAND=credentials cmd-client', shed.script];
    h = await startShedBroker({ policy, handlers: [recorder()], emulator: shed.server, connection: shed.connection({ token: { kind: 'command', argv } }) });
    expect(h.server.listenerNamespaces()).to.deep.equal(['ssh-agent']);
    expect(shed.authority.mints[0]).to.deep.include({ client: 'cmd-client' });
    await waitFor(() => shed!.authority.mints.length >= 3, 10_000, 'two refreshes');
    const c = new BusClient({ publishUrl: h.publishUrl('alpha') });
    expect(await c.publish('ssh-agent', { operation: 'list', echo: 'cmd' })).to.deep.equal({ shed: 'alpha', echo: 'cmd', operation: 'list' });
    c.close();
    expect(shed.authority.refusals).to.deep.equal([]);
    expect(h.log.lines.join('\n')).to.match(/got a token from server\.token_command \(env\), valid until/);
  });

  it('token_command printing a bare token: used until a 401, then run again once', async () => {
    shed = await startSecureShed({ ttlMs: 60_000 });
    const dir = tempDir('shed-tok');
    const file = path.join(dir, 'token');
    fs.writeFileSync(file, shed.authority.mint('credentials', 'bare').token as string, { mode: 0o600 });
    h = await startShedBroker({
      policy,
      handlers: [recorder()],
      emulator: shed.server,
      connection: shed.connection({ tlsPin: shed.certificate.fingerprint, token: { kind: 'command', argv: ['/bin/cat', file] } }),
    });
    expect(h.server.listenerNamespaces()).to.deep.equal(['ssh-agent']);
    fs.writeFileSync(file, shed.authority.mint('credentials', 'bare-2').token as string);
    shed.authority.revokeAll();
    fs.writeFileSync(file, shed.authority.mint('credentials', 'bare-3').token as string);
    await waitFor(() => h!.log.lines.some((l) => l.includes('shed-server refused the token from server.token_command (cat)')), 5000, 'the 401');
    await waitFor(() => h!.server.listenerNamespaces().length === 1, 5000, 'the subscription with the new token');
    expect(h.log.lines.filter((l) => l.includes('got a token from server.token_command (cat)'))).to.have.length(2);
  });
});
