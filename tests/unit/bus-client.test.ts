import { expect } from 'chai';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { BusClient, BusError, MAX_IN_FLIGHT, parsePublishUrl } from '../../guest-services/bus-client.js';
import { requestEnvelope, responseEnvelope } from '../../protocol/messages.js';
import { tempDir } from '../support/procs.js';

type Respond = (body: Record<string, unknown>, res: http.ServerResponse) => void;

/** A stand-in publish endpoint whose answer each test chooses. */
async function endpoint(respond: Respond, listenOn?: string): Promise<{ url: string; close: () => Promise<void>; bodies: unknown[] }> {
  const bodies: unknown[] = [];
  const server = http.createServer((req, res) => {
    let text = '';
    req.on('data', (c: Buffer) => (text += c.toString()));
    req.on('end', () => {
      const body = JSON.parse(text) as Record<string, unknown>;
      bodies.push(body);
      respond(body, res);
    });
  });
  await new Promise<void>((resolve) => (listenOn ? server.listen(listenOn, resolve) : server.listen(0, '127.0.0.1', resolve)));
  const url = listenOn ? `unix:${listenOn}` : `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/publish`;
  return {
    url,
    bodies,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

function answer(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(typeof body === 'string' ? body : JSON.stringify(body));
}

function answerEnvelope(body: Record<string, unknown>, res: http.ServerResponse, payload: Record<string, unknown>): void {
  const request = requestEnvelope(String(body.namespace), (body.payload ?? {}) as Record<string, unknown>, { name: 'alpha' });
  answer(res, 200, responseEnvelope(request, payload));
}

async function failure(promise: Promise<unknown>): Promise<BusError> {
  try {
    await promise;
  } catch (err) {
    expect(err).to.be.instanceOf(BusError);
    return err as BusError;
  }
  throw new Error('expected the call to fail');
}

describe('bus client', () => {
  describe('publish URLs', () => {
    it('accepts shed-agent\'s http URL and unix socket paths', () => {
      expect(parsePublishUrl('http://127.0.0.1:498/v1/publish')).to.include({ host: '127.0.0.1', port: 498, path: '/v1/publish' });
      expect(parsePublishUrl('unix:/run/shed/a.sock')).to.include({ socketPath: '/run/shed/a.sock', path: '/v1/publish' });
    });

    it('refuses relative socket paths, other schemes and garbage with the forms to use', () => {
      expect(() => parsePublishUrl('unix:a.sock')).to.throw(/absolute socket path/);
      expect(() => parsePublishUrl('https://127.0.0.1:498/v1/publish')).to.throw(/http: or unix:/);
      expect(() => parsePublishUrl('not a url')).to.throw(/http:\/\/127.0.0.1:498\/v1\/publish or unix:/);
    });
  });

  it('sends the publish body and returns the response payload', async () => {
    const ep = await endpoint((body, res) => answerEnvelope(body, res, { status: 'ok' }));
    const client = new BusClient({ publishUrl: ep.url });
    try {
      await client.ping('ssh-agent');
      const payload = await client.publish('aws-credentials', { operation: 'status' });
      expect(payload).to.deep.equal({ status: 'ok' });
      expect(ep.bodies[1]).to.deep.equal({ namespace: 'aws-credentials', type: 'request', payload: { operation: 'status' } });
    } finally {
      client.close();
      await ep.close();
    }
  });

  it('works over a unix socket', async () => {
    const sock = path.join(tempDir(), 'bus.sock');
    const ep = await endpoint((body, res) => answerEnvelope(body, res, { status: 'ok' }), sock);
    const client = new BusClient({ publishUrl: ep.url });
    try {
      await client.ping('docker-credentials');
    } finally {
      client.close();
      await ep.close();
    }
  });

  it('retries once when a pooled connection was closed by the peer (idle close, restart)', async () => {
    const perSocket = new WeakMap<object, number>();
    const ep = await endpoint((body, res) => {
      const socket = res.socket!;
      const n = (perSocket.get(socket) ?? 0) + 1;
      perSocket.set(socket, n);
      if (n > 1) {
        socket.destroy(); // the second request on a kept-alive connection finds it gone
        return;
      }
      answerEnvelope(body, res, { status: 'ok' });
    });
    const client = new BusClient({ publishUrl: ep.url });
    try {
      await client.ping('ssh-agent');
      await client.ping('ssh-agent');
      await client.ping('ssh-agent');
    } finally {
      client.close();
      await ep.close();
    }
  });

  it('nothing on port: unreachable, naming shed-agent', async () => {
    const ep = await endpoint(() => undefined);
    await ep.close(); // the port is now free and refuses connections
    const client = new BusClient({ publishUrl: ep.url });
    const err = await failure(client.ping('ssh-agent'));
    expect(err.kind).to.equal('unreachable');
    expect(err.message).to.match(/shed-agent is not running/);
    expect(err.hint).to.match(/start shed-agent/);
    client.close();
  });

  it('missing broker socket: unreachable, naming the socket and shed-host-agent', async () => {
    const client = new BusClient({ publishUrl: `unix:${path.join(tempDir(), 'none.sock')}` });
    const err = await failure(client.ping('ssh-agent'));
    expect(err.kind).to.equal('unreachable');
    expect(err.message).to.match(/none\.sock/);
    expect(err.hint).to.match(/shed-host-agent is running/);
    client.close();
  });

  it('no answer: fails at the deadline with the hint to start shed-host-agent', async () => {
    const ep = await endpoint(() => undefined); // never answers
    const client = new BusClient({ publishUrl: ep.url, deadlineMs: 200 });
    const started = Date.now();
    const err = await failure(client.publish('ssh-agent', { operation: 'list' }));
    const elapsed = Date.now() - started;
    expect(err.kind).to.equal('deadline');
    expect(elapsed).to.be.within(180, 1500);
    expect(err.message).to.match(/within 200 ms/);
    expect(err.hint).to.match(/shed-host-agent run --config/);
    client.close();
    await ep.close();
  });

  it('503 NO_CONNECTION: the VM has no bus channel', async () => {
    const ep = await endpoint((_b, res) => answer(res, 503, { error: { code: 'NO_CONNECTION', message: 'no connection to host' } }));
    const client = new BusClient({ publishUrl: ep.url });
    const err = await failure(client.ping('ssh-agent'));
    expect(err).to.include({ kind: 'api', code: 'NO_CONNECTION', status: 503 });
    expect(err.hint).to.match(/no message channel to the host/);
    client.close();
    await ep.close();
  });

  it('an error payload from the host: its code and text', async () => {
    const ep = await endpoint((body, res) => answerEnvelope(body, res, { error: 'no role for this shed', code: 'ROLE_NOT_FOUND' }));
    const client = new BusClient({ publishUrl: ep.url });
    const err = await failure(client.publish('aws-credentials', { operation: 'get_credentials' }));
    expect(err).to.include({ kind: 'host', code: 'ROLE_NOT_FOUND' });
    expect(err.message).to.match(/no role for this shed/);
    client.close();
    await ep.close();
  });

  it('malformed answers: not JSON, not an envelope, an error status without a body', async () => {
    const cases: Array<[number, unknown, RegExp]> = [
      [200, 'hello', /not JSON/],
      [200, { hello: 'world' }, /not a response envelope/],
      [502, { oops: true }, /without an error body/],
    ];
    for (const [status, body, pattern] of cases) {
      const ep = await endpoint((_b, res) => answer(res, status, body));
      const client = new BusClient({ publishUrl: ep.url });
      const err = await failure(client.ping('ssh-agent'));
      expect(err.kind).to.equal('malformed');
      expect(err.message).to.match(pattern);
      client.close();
      await ep.close();
    }
  });

  it('a ping answered with something other than status ok is malformed', async () => {
    const ep = await endpoint((body, res) => answerEnvelope(body, res, { status: 'maybe' }));
    const client = new BusClient({ publishUrl: ep.url });
    const err = await failure(client.ping('ssh-agent'));
    expect(err.kind).to.equal('malformed');
    client.close();
    await ep.close();
  });

  it(`has at most ${MAX_IN_FLIGHT} requests on the wire at once; the rest wait their turn within their deadline`, async () => {
    let open = 0;
    let most = 0;
    const e = await endpoint((body, res) => {
      open += 1;
      most = Math.max(most, open);
      setTimeout(() => {
        open -= 1;
        answerEnvelope(body, res, { n: (body.payload as { n: number }).n });
      }, 5);
    });
    const client = new BusClient({ publishUrl: e.url, deadlineMs: 10_000 });
    try {
      const answers = await Promise.all(Array.from({ length: 100 }, (_, n) => client.publish('ssh-agent', { operation: 'list', n })));
      expect(answers.map((a) => a.n)).to.deep.equal(Array.from({ length: 100 }, (_, n) => n));
      expect(most).to.equal(MAX_IN_FLIGHT);
      // One whose deadline passes while it waits fails with DEADLINE and gives its turn back.
      const slow = await endpoint(() => undefined);
      const stuck = new BusClient({ publishUrl: slow.url, deadlineMs: 300 });
      const results = await Promise.allSettled(Array.from({ length: MAX_IN_FLIGHT + 4 }, () => stuck.publish('ssh-agent', { operation: 'list' })));
      expect(results.every((r) => r.status === 'rejected' && (r.reason as BusError).code === 'DEADLINE')).to.equal(true);
      stuck.close();
      await slow.close();
    } finally {
      client.close();
      await e.close();
    }
  });
});
