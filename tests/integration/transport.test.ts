/**
 * End to end over both transports: a guest's BusClient → (shed-agent →
 * shed-server → SSE | a direct socket) → the broker's dispatcher → a test
 * handler, and back. Then what only the shed transport has: reconnects,
 * re-delivery, 409, bearer token, TLS pin, mutual TLS, malformed events.
 * Direct-socket specifics (modes, stale sockets) are in direct-sockets.test.ts.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { BusClient, BusError, HOST_AGENT_START_HINT, parsePublishUrl } from '../../guest-services/bus-client.js';
import type { NamespaceHandler, RequestContext } from '../../host-broker/handler.js';
import { ShedServerTransport } from '../../host-broker/transports/shed-server.js';
import { MintingTokenSource } from '../../host-broker/transports/token-source.js';
import { envelopeOf } from '../../host-broker/transports/transport.js';
import { Envelope, type Payload } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { newId, nowTimestamp } from '../../protocol/messages.js';
import { ShedServerEmulator, startShedBroker, type ShedHarness, type ShedHarnessOptions } from '../support/bus-emulator.js';
import { startDirectBroker, type Harness, type HarnessOptions, type TransportKind } from '../support/harness.js';
import { tempDir, waitFor } from '../support/procs.js';

interface Seen {
  shed: string;
  requestId: string;
  operation: string;
  payload: Payload;
}

/** A handler that records what it saw and answers with the shed the broker gave it. */
function recorder(seen: Seen[] = []): NamespaceHandler & { seen: Seen[] } {
  return {
    namespace: 'ssh-agent',
    seen,
    async handle(operation: string, payload: Payload, ctx: RequestContext) {
      seen.push({ shed: ctx.shed, requestId: ctx.requestId, operation, payload });
      if (operation === 'slow') await new Promise((r) => setTimeout(r, Number(payload.ms ?? 300)));
      if (operation === 'hang') await new Promise(() => undefined);
      if (operation === 'size') return { shed: ctx.shed, size: String(payload.blob ?? '').length };
      return { shed: ctx.shed, echo: payload.echo ?? null };
    },
  };
}

async function start(kind: TransportKind, options: HarnessOptions & ShedHarnessOptions): Promise<Harness> {
  return kind === 'direct' ? startDirectBroker(options) : startShedBroker(options);
}

/** Raw HTTP to a publish URL (unix: or http:), to check status codes byte for byte. */
function rawPost(publishUrl: string, body: string | Buffer): Promise<{ status: number; json: unknown }> {
  const t = parsePublishUrl(publishUrl);
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: t.socketPath, host: t.host, port: t.port, path: t.path, method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Another listener on shed-server (a second shed-host-agent). */
function rogueListener(baseUrl: string, namespace: string): Promise<{ status: number; close: () => void }> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${baseUrl}/api/plugins/listeners/${namespace}/messages`, { headers: { accept: 'text/event-stream' } }, (res) => {
      resolve({ status: res.statusCode ?? 0, close: () => req.destroy() });
    });
    req.on('error', reject);
  });
}

function apiCode(json: unknown): string {
  return (json as { error: { code: string } }).error.code;
}

for (const kind of ['direct', 'shed'] as const) {
  describe(`the bus end to end over ${kind === 'direct' ? 'direct sockets' : 'shed-server'}`, () => {
    let h: Harness | undefined;
    afterEach(async () => {
      await h?.stop();
      h = undefined;
    });
    const violations = () => (kind === 'shed' ? (h as ShedHarness).server.violations : []);

    it('two sheds at once: each answer returns to its shed, and the handler sees the transport\'s shed, never the payload\'s', async () => {
      const handler = recorder();
      h = await start(kind, { policy: { version: 1, sheds: { alpha: {}, beta: {} } }, handlers: [handler] });
      const clients = { alpha: new BusClient({ publishUrl: h.publishUrl('alpha') }), beta: new BusClient({ publishUrl: h.publishUrl('beta') }) };
      try {
        const calls = Array.from({ length: 40 }, (_, i) => (i % 2 ? 'beta' : 'alpha') as 'alpha' | 'beta');
        const answers = await Promise.all(calls.map((shed, i) =>
          clients[shed].publish('ssh-agent', { operation: 'list', echo: `${shed}-${i}`, shed: { name: 'mallory' } })));
        answers.forEach((a, i) => expect(a).to.deep.equal({ shed: calls[i], echo: `${calls[i]}-${i}` }));
        expect(new Set(handler.seen.map((s) => s.shed))).to.deep.equal(new Set(['alpha', 'beta']));
        // A lying `shed` at the top of the publish body is ignored too.
        const raw = await rawPost(h.publishUrl('alpha'), JSON.stringify({ namespace: 'ssh-agent', payload: { operation: 'list', echo: 'x' }, shed: { name: 'beta' } }));
        expect(raw.status).to.equal(200);
        const envelope = Envelope.parse(raw.json);
        expect(envelope.type).to.equal('response');
        expect(envelope.payload).to.deep.equal({ shed: 'alpha', echo: 'x' });
        expect(handler.seen.at(-1)?.shed).to.equal('alpha');
        expect(violations()).to.deep.equal([]);
      } finally {
        Object.values(clients).forEach((c) => c.close());
      }
    });

    it('broker down: the guest gets its error within its deadline, with a hint naming shed-host-agent', async () => {
      h = await start(kind, { policy: { version: 1, sheds: { alpha: {} } }, handlers: [recorder()] });
      const warm = new BusClient({ publishUrl: h.publishUrl('alpha') });
      await warm.ping('ssh-agent');
      warm.close();
      await h.broker.stop();
      const client = new BusClient({ publishUrl: h.publishUrl('alpha'), deadlineMs: 600 });
      const t0 = Date.now();
      const err = await client.publish('ssh-agent', { operation: 'list' }).then(() => undefined, (e: unknown) => e);
      const took = Date.now() - t0;
      client.close();
      expect(err).to.be.instanceOf(BusError);
      const e = err as BusError;
      expect(took).to.be.below(900);
      if (kind === 'direct') {
        // The socket is gone with the broker.
        expect(e.kind).to.equal('unreachable');
        expect(e.hint).to.match(/shed-host-agent is running/);
      } else {
        // shed-agent and shed-server are up; nobody listens, so nothing answers.
        expect(e.kind).to.equal('deadline');
        expect(e.hint).to.equal(HOST_AGENT_START_HINT);
        expect(e.describe()).to.match(/within 600 ms.*shed-host-agent run --config/);
      }
    });

    it('refuses malformed publish bodies with 400 and the right code, and a body over 1 MiB with 413', async () => {
      h = await start(kind, { policy: { version: 1, sheds: { alpha: {} } }, handlers: [recorder()] });
      const url = h.publishUrl('alpha');
      const cases: [string | Buffer, number, string][] = [
        ['{not json', 400, 'INVALID_BODY'],
        ['[1,2]', 400, 'INVALID_BODY'],
        ['{"payload":{"operation":"list"}}', 400, 'MISSING_NAMESPACE'],
        ['{"namespace":"ssh-agent","type":"response","payload":{}}', 400, 'INVALID_TYPE'],
        [Buffer.alloc(1024 * 1024 + 1, 0x20), 413, 'BODY_TOO_LARGE'],
      ];
      for (const [body, status, code] of cases) {
        const res = await rawPost(url, body);
        expect([res.status, apiCode(res.json)], String(body).slice(0, 40)).to.deep.equal([status, code]);
      }
      const event = await rawPost(url, '{"namespace":"ssh-agent","type":"event","payload":{"operation":"hello"}}');
      expect(event.status).to.equal(202);
      expect(violations()).to.deep.equal([]);
    });

    it('carries a request of nearly 1 MiB whole', async () => {
      h = await start(kind, { policy: { version: 1, sheds: { alpha: {} } }, handlers: [recorder()] });
      const client = new BusClient({ publishUrl: h.publishUrl('alpha') });
      const blob = 'x'.repeat(1024 * 1024 - 200);
      expect(await client.publish('ssh-agent', { operation: 'size', blob })).to.deep.equal({ shed: 'alpha', size: blob.length });
      client.close();
      expect(violations()).to.deep.equal([]);
    });
  });
}

describe('the shed-server transport', () => {
  let h: ShedHarness | undefined;
  const clients: BusClient[] = [];
  const client = (shed: string, deadlineMs = 3000) => {
    const c = new BusClient({ publishUrl: h!.publishUrl(shed), deadlineMs });
    clients.push(c);
    return c;
  };
  afterEach(async () => {
    clients.splice(0).forEach((c) => c.close());
    await h?.stop();
    h = undefined;
  });
  const policy = { version: 1, sheds: { alpha: {}, beta: {} } };

  it('subscribes once per namespace and reconnects after the streams drop; requests after recovery succeed', async () => {
    h = await startShedBroker({ policy, handlers: [recorder()] });
    expect(h.server.listenerNamespaces()).to.deep.equal(['ssh-agent']);
    expect(h.log.lines.join('\n')).to.match(/subscribed to ssh-agent on http:\/\/127\.0\.0\.1:\d+/);
    await client('alpha').ping('ssh-agent');
    for (let round = 0; round < 3; round++) {
      h.server.dropStreams();
      expect(h.server.listenerNamespaces()).to.deep.equal([]);
      await waitFor(() => h!.server.listenerNamespaces().length === 1, 3000, 'the broker to resubscribe');
      expect(await client('alpha').publish('ssh-agent', { operation: 'list', echo: round })).to.deep.equal({ shed: 'alpha', echo: round });
    }
    const lines = h.log.lines.join('\n');
    expect(lines).to.match(/the ssh-agent stream from http:\/\/127\.0\.0\.1:\d+ closed; reconnecting in \d+ ms/);
    expect(lines.match(/subscribed to ssh-agent/g)).to.have.length(4);
    expect(h.server.violations).to.deep.equal([]);
  });

  it('with auth on, a request sent while the stream was down is re-delivered on reconnect and answered', async () => {
    const dir = tempDir('shed-tok');
    const tokenFile = path.join(dir, 'token');
    fs.writeFileSync(tokenFile, 'tok-3f9a1c', { mode: 0o600 });
    h = await startShedBroker({
      policy,
      handlers: [recorder()],
      server: { token: 'tok-3f9a1c' },
      serverPolicy: { token_file: tokenFile },
      timings: { initialBackoffMs: 300 },
    });
    h.server.dropStreams();
    const answer = client('beta').publish('ssh-agent', { operation: 'list', echo: 'late' });
    await new Promise((r) => setTimeout(r, 50));
    expect(h.server.listenerNamespaces()).to.deep.equal([]);
    expect(await answer).to.deep.equal({ shed: 'beta', echo: 'late' });
    expect(h.server.violations).to.deep.equal([]);
  });

  it('answers a re-delivered request id once: the handler runs once and shed-server sees one response', async () => {
    const handler = recorder();
    h = await startShedBroker({ policy, handlers: [handler], server: { redeliver: true } });
    const answer = client('alpha').publish('ssh-agent', { operation: 'slow', ms: 400, echo: 'once' });
    await waitFor(() => handler.seen.length === 1, 2000, 'the handler to start');
    const id = handler.seen[0]!.requestId;
    h.server.dropStreams();
    await waitFor(() => h!.server.deliveryCount(id) === 2, 3000, 'shed-server to re-deliver the request');
    expect(await answer).to.deep.equal({ shed: 'alpha', echo: 'once' });
    await new Promise((r) => setTimeout(r, 100));
    expect(handler.seen.map((s) => s.requestId)).to.deep.equal([id]);
    expect(h.server.responseCount(id)).to.equal(1);
    expect(h.log.lines.join('\n')).to.include(`request ${id} on ssh-agent seen already; not answering it twice`);
    expect(h.server.violations).to.deep.equal([]);
  });

  it('reports a 409 clearly, keeps retrying, and takes the namespace over when the other listener leaves', async () => {
    let other: { status: number; close: () => void } | undefined;
    h = await startShedBroker({
      policy,
      handlers: [recorder()],
      beforeBroker: async (server) => {
        other = await rogueListener(server.url, 'ssh-agent');
      },
    });
    expect(other!.status).to.equal(200);
    const lines = () => h!.log.lines.join('\n');
    expect(lines()).to.include(`another listener holds namespace ssh-agent on ${h.server.url} (409 NAMESPACE_ALREADY_REGISTERED): stop the other shed-host-agent`);
    await waitFor(() => h!.server.calls.filter((c) => c.endsWith('/ssh-agent/messages')).length >= 3, 3000, 'retries');
    other!.close();
    await waitFor(() => /subscribed to ssh-agent/.test(lines()), 3000, 'the broker to take over');
    expect(await client('alpha').publish('ssh-agent', { operation: 'list', echo: 1 })).to.deep.equal({ shed: 'alpha', echo: 1 });
  });

  it('sends the bearer token from token_file on every call and never logs it; a wrong token is refused with what to do', async () => {
    const dir = tempDir('shed-tok');
    const tokenFile = path.join(dir, 'token');
    const token = `tok-${crypto.randomBytes(12).toString('hex')}`;
    fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    h = await startShedBroker({ policy, handlers: [recorder()], server: { token }, serverPolicy: { token_file: tokenFile } });
    expect(await client('alpha').publish('ssh-agent', { operation: 'list', echo: 't' })).to.deep.equal({ shed: 'alpha', echo: 't' });
    expect(h.server.authorizations.length).to.be.at.least(2);
    expect(h.server.authorizations.every((a) => a === `Bearer ${token}`)).to.equal(true);
    await h.stop();

    fs.writeFileSync(tokenFile, 'not-the-token', { mode: 0o600 });
    h = await startShedBroker({ policy, handlers: [recorder()], server: { token }, serverPolicy: { token_file: tokenFile } });
    expect(h.server.listenerNamespaces()).to.deep.equal([]);
    const lines = h.log.lines.join('\n');
    expect(lines).to.match(/subscribing to ssh-agent on http:\/\/127\.0\.0\.1:\d+: 401 UNAUTHORIZED: shed-server wants a valid token; check server\.token_file \(.*token\) holds the token shed-server expects/);
    expect(lines).not.to.include(token);
    expect(lines).not.to.include('not-the-token');
  });

  it('refuses to start with a missing or empty token file, saying which', async () => {
    const dir = tempDir('shed-tok');
    const err = await startShedBroker({ policy, handlers: [recorder()], serverPolicy: { token_file: path.join(dir, 'nope') } }).then(() => undefined, (e: Error) => e);
    expect(err?.message).to.match(/cannot read server\.token_file .*nope: ENOENT/);
    fs.writeFileSync(path.join(dir, 'empty'), '\n', { mode: 0o600 });
    const err2 = await startShedBroker({ policy, handlers: [recorder()], serverPolicy: { token_file: path.join(dir, 'empty') } }).then(() => undefined, (e: Error) => e);
    expect(err2?.message).to.match(/server\.token_file .*empty is empty/);
  });

  it('drops a data line that is not JSON, answers an invalid envelope that names its id and shed with INVALID_REQUEST', async () => {
    h = await startShedBroker({ policy, handlers: [recorder()] });
    expect(h.server.inject('ssh-agent', '{"id": not json')).to.equal(true);
    const bad = { id: newId(), namespace: 'ssh-agent', type: 'request', final: true, timestamp: nowTimestamp(), payload: 'not an object' } as unknown as Envelope;
    const response = await h.server.fromShed('alpha', bad);
    expect(response?.payload).to.deep.include({ code: 'INVALID_REQUEST' });
    expect(response?.in_reply_to).to.equal(bad.id);
    expect(response?.shed?.name).to.equal('alpha');
    await waitFor(() => h!.log.lines.some((l) => /dropped an event whose data is not JSON/.test(l)), 1000, 'the drop to be logged');
    expect(await client('alpha').publish('ssh-agent', { operation: 'list', echo: 'still fine' })).to.deep.equal({ shed: 'alpha', echo: 'still fine' });
    expect(h.server.violations).to.deep.equal([]);
  });

  it('logs plainly when the shed left before its answer (404 SHED_NOT_CONNECTED)', async () => {
    const handler = recorder();
    h = await startShedBroker({ policy, handlers: [handler] });
    const answer = client('beta').publish('ssh-agent', { operation: 'slow', ms: 200 }).then(() => undefined, (e: BusError) => e);
    await waitFor(() => handler.seen.length === 1, 2000, 'the handler to start');
    h.server.disconnectShed('beta');
    const err = await answer;
    expect(err?.code).to.equal('CONNECTION_LOST');
    await waitFor(() => h!.log.lines.some((l) => l.includes('shed beta is no longer connected to shed-server')), 2000, 'the 404 to be logged');
    expect(h.log.lines.join('\n')).to.match(/shed beta is no longer connected to shed-server; the answer to shed beta request [0-9a-f-]+ was dropped/);
  });

  it('backs off 1 s → 30 s doubling (scaled down here) while shed-server is down, and stops promptly', async () => {
    const port = await freePort();
    const log = memoryLogger('shed-host-agent');
    const transport = new ShedServerTransport({ server: { name: 'default', url: `http://127.0.0.1:${port}`, namespaces: ['ssh-agent'] },
      log,
      timings: { initialBackoffMs: 20, maxBackoffMs: 160, resetAfterMs: 10_000 },
    });
    await transport.start(() => undefined);
    await waitFor(() => log.lines.filter((l) => l.includes('reconnecting in')).length >= 6, 5000, 'six attempts');
    expect(transport.server).to.equal('default');
    expect(transport.state()).to.deep.equal({ 'ssh-agent': 'reconnecting: connection refused (is shed-server running? check server.url)' });
    const t0 = Date.now();
    await transport.stop();
    expect(transport.state()).to.deep.equal({ 'ssh-agent': 'stopped' });
    expect(Date.now() - t0).to.be.below(100);
    const delays = log.lines.filter((l) => l.includes('reconnecting in')).map((l) => Number(/reconnecting in (\d+) ms/.exec(l)![1]));
    // ±20 % jitter around 20, 40, 80, 160, 160, 160.
    [20, 40, 80, 160, 160, 160].forEach((d, i) => expect(delays[i]).to.be.within(d * 0.8, d * 1.2));
    expect(log.lines[0]).to.match(/WARN cannot subscribe to ssh-agent on http:\/\/127\.0\.0\.1:\d+: connection refused \(is shed-server running\? check server\.url\)/);
    // The same failure again is not repeated at warn level.
    expect(log.lines.filter((l) => / WARN /.test(l))).to.have.length(1);
  });
});

describe('the shed-server transport against a scripted server', () => {
  let server: http.Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    server = undefined;
  });

  /** One SSE stream that delivers `request`; `respond` answers each respond call in turn. */
  async function scripted(statuses: number[], onStream?: (res: http.ServerResponse) => void) {
    const calls: number[] = [];
    const streams: http.ServerResponse[] = [];
    server = http.createServer((req, res) => {
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.flushHeaders();
        streams.push(res);
        onStream?.(res);
        return;
      }
      req.resume();
      const status = statuses[Math.min(calls.length, statuses.length - 1)]!;
      calls.push(status);
      if (status === 0) {
        req.socket.destroy();
        return;
      }
      res.writeHead(status, { 'content-type': 'application/json' }).end(status === 204 ? undefined : JSON.stringify({ error: { code: 'BUSY', message: 'try later' } }));
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, calls, streams };
  }

  const request: Envelope = { id: newId(), namespace: 'ssh-agent', type: 'request', final: true, timestamp: nowTimestamp(), payload: { operation: 'list' }, shed: { name: 'alpha' } };

  it('retries a respond that failed (5xx, reset) and succeeds on a later try', async () => {
    const s = await scripted([503, 0, 204], (res) => res.write(`event: message\ndata: ${JSON.stringify(request)}\n\n`));
    const log = memoryLogger('shed-host-agent');
    const transport = new ShedServerTransport({ server: { name: 'default', url: s.url, namespaces: ['ssh-agent'] }, log, timings: { respondRetryMs: [20, 20, 20] } });
    const replied = new Promise<void>((resolve, reject) => {
      void transport.start((incoming, shed, reply) => {
        expect([envelopeOf(incoming)?.id, shed]).to.deep.equal([request.id, 'alpha']);
        reply({ ok: true }).then(resolve, reject);
      });
    });
    await replied;
    await transport.stop();
    expect(s.calls).to.deep.equal([503, 0, 204]);
  });

  it('gives up after a few seconds of failed responds, and stop() ends retries and streams at once', async () => {
    const s = await scripted([500], (res) => res.write(`event: message\ndata: ${JSON.stringify(request)}\n\n`));
    const log = memoryLogger('shed-host-agent');
    const transport = new ShedServerTransport({ server: { name: 'default', url: s.url, namespaces: ['ssh-agent'] }, log, timings: { respondRetryMs: [20, 40] } });
    // The transport tells the log, not the dispatcher: a reply never fails.
    const outcome = new Promise<string>((resolve) => {
      void transport.start((_envelope, _shed, reply) => reply({ ok: true }).then(() => resolve('settled'), () => resolve('rejected')));
    });
    expect(await outcome).to.equal('settled');
    expect(log.lines.join('\n')).to.match(/could not deliver the answer to shed alpha request .* after 3 attempts: 500 BUSY/);
    expect(s.calls).to.have.length(3);
    await transport.stop();

    const slow = new ShedServerTransport({ server: { name: 'default', url: s.url, namespaces: ['ssh-agent'] }, log, timings: { respondRetryMs: [5000] } });
    let pending: Promise<unknown> | undefined;
    await slow.start((_e, _s, reply) => {
      pending = reply({ ok: true }).then(() => 'sent', (e: Error) => e.message);
    });
    await waitFor(() => pending && s.calls.length >= 4, 2000, 'the first respond');
    const t0 = Date.now();
    await slow.stop();
    expect(await pending).to.equal('sent');
    expect(log.lines.join('\n')).to.match(/was not sent: the broker is stopping/);
    expect(Date.now() - t0).to.be.below(200);
    await waitFor(() => s.streams.every((r) => r.destroyed || r.writableEnded || r.socket?.destroyed), 1000, 'the streams to close');
  });

  it('an answer refused 401 while no new token can be got fails at once, saying why (no retry loop, no hang)', async () => {
    const s = await scripted([401], (res) => res.write(`event: message\ndata: ${JSON.stringify(request)}\n\n`));
    const log = memoryLogger('shed-host-agent');
    let mints = 0;
    const tokens = new MintingTokenSource({
      key: 'server',
      label: 'server.token_command (t)',
      log,
      timings: { mintBackoffMs: 60_000, mintMaxBackoffMs: 60_000, minRefreshMs: 60_000, mintTimeoutMs: 1000 },
      obtain: async () => {
        mints += 1;
        if (mints > 1) throw new Error('t exited with status 1: the server is unreachable');
        return { stdout: 'tok-first' };
      },
    });
    const transport = new ShedServerTransport({ server: { name: 'default', url: s.url, namespaces: ['ssh-agent'] }, log, tokenSource: tokens, timings: { respondRetryMs: [5000, 5000] } });
    let replied: Promise<void> | undefined;
    await transport.start((_e, _s, reply) => {
      replied = reply({ ok: true });
    });
    try {
      await waitFor(() => replied !== undefined, 2000, 'the request');
      const t0 = Date.now();
      await replied;
      expect(Date.now() - t0).to.be.below(2000);
      expect(s.calls).to.deep.equal([401]);
      expect(log.lines.join('\n')).to.match(/could not deliver the answer to shed alpha request .* no valid token \(cannot get a token from server\.token_command \(t\): t exited with status 1: the server is unreachable\)/);
      expect(transport.state()['ssh-agent']).to.equal('connected');
    } finally {
      await transport.stop();
    }
  });

  it('takes a stream silent for streamIdleMs for dead and subscribes again; a keep-alive comment keeps it', async () => {
    const s = await scripted([204], (res) => {
      // The first stream says nothing at all; the second writes a comment every 50 ms.
      if (s.streams.length > 1) {
        const beat = setInterval(() => res.write(': keepalive\n'), 50);
        res.on('close', () => clearInterval(beat));
      }
    });
    const log = memoryLogger('shed-host-agent');
    const transport = new ShedServerTransport({ server: { name: 'default', url: s.url, namespaces: ['ssh-agent'] }, log, timings: { streamIdleMs: 300, initialBackoffMs: 20 } });
    await transport.start(() => undefined);
    try {
      expect(transport.state()).to.deep.equal({ 'ssh-agent': 'connected' });
      await waitFor(() => s.streams.length === 2, 5000, 'a second subscription');
      expect(log.lines.join('\n')).to.match(/the ssh-agent stream from .* broke: silent for 300 ms; reconnecting/);
      await new Promise((r) => setTimeout(r, 800));
      expect(s.streams).to.have.length(2);
    } finally {
      await transport.stop();
    }
  });

  it('resets the reconnect delay after a connection that stayed up long enough', async () => {
    const s = await scripted([204], (res) => {
      // Short-lived streams first, then one that outlives resetAfterMs.
      const n = streamsSeen++;
      setTimeout(() => res.destroy(), n < 3 ? 5 : 250);
    });
    let streamsSeen = 0;
    const log = memoryLogger('shed-host-agent');
    const transport = new ShedServerTransport({ server: { name: 'default', url: s.url, namespaces: ['ssh-agent'] }, log, timings: { initialBackoffMs: 20, maxBackoffMs: 1000, resetAfterMs: 200 } });
    await transport.start(() => undefined);
    await waitFor(() => log.lines.filter((l) => l.includes('reconnecting in')).length >= 4, 5000, 'four reconnects');
    await transport.stop();
    const delays = log.lines.filter((l) => l.includes('reconnecting in')).map((l) => Number(/reconnecting in (\d+) ms/.exec(l)![1]));
    // 20, 40, 80 after short streams; back to 20 after the long one.
    [20, 40, 80, 20].forEach((d, i) => expect(delays[i]).to.be.within(d * 0.8, d * 1.2));
  });
});

describe('the shed-server transport over TLS', function () {
  this.timeout(20_000);
  let certs: Certs;
  let h: ShedHarness | undefined;
  before(async function () {
    certs = await makeCerts();
  });
  afterEach(async () => {
    await h?.stop();
    h = undefined;
  });
  const policy = { version: 1, sheds: { alpha: {} } };

  it('connects to a server whose certificate matches tls_pin (as openssl prints it)', async () => {
    h = await startShedBroker({
      policy,
      handlers: [recorder()],
      server: { tls: { cert: certs.serverCert, key: certs.serverKey } },
      serverPolicy: { tls_pin: certs.pinColons },
    });
    expect(h.server.url).to.match(/^https:/);
    const c = new BusClient({ publishUrl: h.publishUrl('alpha') });
    expect(await c.publish('ssh-agent', { operation: 'list', echo: 'pinned' })).to.deep.equal({ shed: 'alpha', echo: 'pinned' });
    c.close();
    expect(h.server.violations).to.deep.equal([]);
  });

  it('refuses a server whose certificate does not match the pin, before sending a byte of HTTP (or the token)', async () => {
    const dir = tempDir('shed-tok');
    fs.writeFileSync(path.join(dir, 'token'), 'tok-pinned-secret', { mode: 0o600 });
    const wrong = `sha256:${'ab'.repeat(32)}`;
    h = await startShedBroker({
      policy,
      handlers: [recorder()],
      server: { tls: { cert: certs.serverCert, key: certs.serverKey }, token: 'tok-pinned-secret' },
      serverPolicy: { tls_pin: wrong, token_file: path.join(dir, 'token') },
    });
    await waitFor(() => h!.log.lines.some((l) => l.includes('does not match server.tls_pin')), 3000, 'the pin refusal');
    const line = h.log.lines.find((l) => l.includes('does not match server.tls_pin'))!;
    expect(line).to.include(`(got sha256:${certs.pin}): not connecting; if shed-server's certificate changed on purpose, update the pin`);
    expect(h.server.calls).to.deep.equal([]);
    expect(h.server.listenerNamespaces()).to.deep.equal([]);
  });

  it('uses the client certificate for mutual TLS and then sends no bearer header', async () => {
    const dir = tempDir('shed-tok');
    fs.writeFileSync(path.join(dir, 'token'), 'tok-unused', { mode: 0o600 });
    h = await startShedBroker({
      policy,
      handlers: [recorder()],
      server: { tls: { cert: certs.serverCert, key: certs.serverKey, clientCa: certs.caCert } },
      serverPolicy: { tls_pin: `sha256:${certs.pin}`, client_cert: certs.clientCertFile, client_key: certs.clientKeyFile, token_file: path.join(dir, 'token') },
    });
    const c = new BusClient({ publishUrl: h.publishUrl('alpha') });
    expect(await c.publish('ssh-agent', { operation: 'list', echo: 'mtls' })).to.deep.equal({ shed: 'alpha', echo: 'mtls' });
    c.close();
    expect(h.server.authorizations.length).to.be.at.least(2);
    expect(h.server.authorizations.every((a) => a === undefined)).to.equal(true);
    expect(h.server.violations).to.deep.equal([]);
  });

  it('without the client certificate, the mutual-TLS server refuses the handshake and the broker says so', async () => {
    h = await startShedBroker({
      policy,
      handlers: [recorder()],
      server: { tls: { cert: certs.serverCert, key: certs.serverKey, clientCa: certs.caCert } },
      serverPolicy: { tls_pin: `sha256:${certs.pin}` },
    });
    expect(h.server.listenerNamespaces()).to.deep.equal([]);
    expect(h.server.calls).to.deep.equal([]);
    expect(h.log.lines.join('\n')).to.match(/cannot subscribe to ssh-agent on https:\/\/127\.0\.0\.1:\d+: .*certificate/i);
  });
});

describe('the emulated shed-server and shed-agent (faithful to PROTOCOL.md)', () => {
  let server: ShedServerEmulator | undefined;
  let h: ShedHarness | undefined;
  afterEach(async () => {
    await h?.stop();
    await server?.stop();
    h = undefined;
    server = undefined;
  });

  it('plugin API: 400 INVALID_NAMESPACE, 403 NAMESPACE_RESERVED, 401 without the token, the listener and shed lists, 400 MISSING_SHED, 404 SHED_NOT_CONNECTED', async () => {
    server = new ShedServerEmulator({ token: 'tk' });
    await server.start();
    server.connectShed('alpha');
    const auth = { authorization: 'Bearer tk' };
    const call = (method: string, p: string, body?: unknown, headers: Record<string, string> = auth) => jsonCall(`${server!.url}${p}`, method, body, headers);
    expect(await call('GET', '/api/plugins/sheds', undefined, {})).to.deep.include({ status: 401 });
    expect(apiCode((await call('GET', '/api/plugins/listeners/Bad%20Name/messages')).json)).to.equal('INVALID_NAMESPACE');
    const reserved = await call('GET', '/api/plugins/listeners/system%3Aevents/messages');
    expect([reserved.status, apiCode(reserved.json)]).to.deep.equal([403, 'NAMESPACE_RESERVED']);
    expect((await call('GET', '/api/plugins/sheds')).json).to.deep.equal({ sheds: [{ name: 'alpha', backend: 'vz', server: 'local' }] });
    expect((await call('GET', '/api/plugins/listeners')).json).to.deep.equal({ listeners: [] });
    const response = { id: newId(), namespace: 'ssh-agent', type: 'response', in_reply_to: newId(), final: true, timestamp: nowTimestamp(), payload: {} };
    const missing = await call('POST', '/api/plugins/listeners/ssh-agent/respond', response);
    expect([missing.status, apiCode(missing.json)]).to.deep.equal([400, 'MISSING_SHED']);
    const gone = await call('POST', '/api/plugins/listeners/ssh-agent/respond', { ...response, shed: { name: 'zeta' } });
    expect([gone.status, apiCode(gone.json)]).to.deep.equal([404, 'SHED_NOT_CONNECTED']);
  });

  it('shed-agent: NO_CONNECTION without a channel, CONNECTION_LOST when it drops, TIMEOUT after its limit, SHUTTING_DOWN when stopping', async () => {
    h = await startShedBroker({ policy: { version: 1, sheds: { alpha: {}, beta: {} } }, handlers: [recorder()], agentWaitLimitMs: 300 });
    const body = (operation: string) => JSON.stringify({ namespace: 'ssh-agent', payload: { operation } });
    const timeout = await rawPost(h.publishUrl('alpha'), body('hang'));
    expect([timeout.status, apiCode(timeout.json)]).to.deep.equal([504, 'TIMEOUT']);
    const lost = rawPost(h.publishUrl('alpha'), body('hang'));
    await new Promise((r) => setTimeout(r, 50));
    h.server.disconnectShed('alpha');
    expect(await lost.then((r) => [r.status, apiCode(r.json)])).to.deep.equal([503, 'CONNECTION_LOST']);
    const none = await rawPost(h.publishUrl('alpha'), body('list'));
    expect([none.status, apiCode(none.json)]).to.deep.equal([503, 'NO_CONNECTION']);
    const stopping = rawPost(h.publishUrl('beta'), body('hang'));
    await new Promise((r) => setTimeout(r, 50));
    await h.agent('beta').stop();
    expect(await stopping.then((r) => [r.status, apiCode(r.json)])).to.deep.equal([503, 'SHUTTING_DOWN']);
    expect(h.server.violations).to.deep.equal([]);
  });

  it('records a listener that answers twice, answers for the wrong shed, or forgets in_reply_to', async () => {
    server = new ShedServerEmulator();
    await server.start();
    server.connectShed('alpha');
    server.connectShed('beta');
    const request = { id: newId(), namespace: 'ssh-agent', type: 'request' as const, final: true, timestamp: nowTimestamp(), payload: { operation: 'list' } };
    const pending = server.fromShed('alpha', request);
    const respond = (body: unknown) => jsonCall(`${server!.url}/api/plugins/listeners/ssh-agent/respond`, 'POST', body);
    const base = { id: newId(), namespace: 'ssh-agent', type: 'response', final: true, timestamp: nowTimestamp(), payload: {} };
    expect((await respond({ ...base, in_reply_to: request.id, shed: { name: 'beta', backend: 'vz', server: 'local' } })).status).to.equal(204);
    expect(server.violations.at(-1)).to.include(`request ${request.id} came from shed alpha, the answer names shed beta`);
    expect((await respond({ ...base, in_reply_to: request.id, shed: { name: 'alpha', backend: 'vz', server: 'local' } })).status).to.equal(204);
    expect((await pending)?.in_reply_to).to.equal(request.id);
    expect((await respond({ ...base, in_reply_to: request.id, shed: { name: 'alpha', backend: 'vz', server: 'local' } })).status).to.equal(204);
    expect(server.violations.at(-1)).to.include('answered 3 times');
    await respond({ ...base, shed: { name: 'alpha' } });
    expect(server.violations.at(-2)).to.include('no in_reply_to');
  });
});

function jsonCall(url: string, method: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

interface Certs {
  serverCert: string;
  serverKey: string;
  /** hex of the SHA-256 of the server certificate's DER. */
  pin: string;
  /** The same, as `openssl x509 -fingerprint -sha256` prints it: sha256:AB:CD:… */
  pinColons: string;
  caCert: string;
  clientCertFile: string;
  clientKeyFile: string;
}

/** A self-signed server certificate for 127.0.0.1, a CA, and a client certificate it signed, made with the openssl CLI. */
async function makeCerts(): Promise<Certs> {
  const dir = tempDir('shed-tls');
  const f = (name: string) => path.join(dir, name);
  // stdin closed: openssl does not read it (procs.run()'s stdin write can hit EPIPE when it exits first).
  const openssl = async (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 15_000, encoding: 'utf8' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl('req', '-x509', ...ec, '-keyout', f('server.key'), '-out', f('server.crt'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1');
  await openssl('req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '1', '-subj', '/CN=shed test CA');
  await openssl('req', ...ec, '-keyout', f('client.key'), '-out', f('client.csr'), '-subj', '/CN=shed-host-agent');
  await openssl('x509', '-req', '-in', f('client.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('client.crt'), '-days', '1');
  const printed = await openssl('x509', '-in', f('server.crt'), '-noout', '-fingerprint', '-sha256');
  const colons = /=([0-9A-F:]+)/.exec(printed)![1]!;
  const serverCert = fs.readFileSync(f('server.crt'), 'utf8');
  const pin = crypto.createHash('sha256').update(new crypto.X509Certificate(serverCert).raw).digest('hex');
  expect(colons.replace(/:/g, '').toLowerCase()).to.equal(pin);
  return {
    serverCert,
    serverKey: fs.readFileSync(f('server.key'), 'utf8'),
    pin,
    pinColons: `sha256:${colons}`,
    caCert: fs.readFileSync(f('ca.crt'), 'utf8'),
    clientCertFile: f('client.crt'),
    clientKeyFile: f('client.key'),
  };
}
