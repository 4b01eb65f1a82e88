import { expect } from 'chai';
import type http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { createHardenedServer, type HttpLimits } from '../../protocol/http-server.js';
import { tempDir, waitFor } from '../support/procs.js';

interface Harness {
  sock: string;
  closed: string[];
  drops: number;
  server: http.Server;
  stop: () => Promise<void>;
}

/** Echoes `METHOD url body`, or holds the request when the body is "hold". */
async function start(limits: Partial<HttpLimits> = {}): Promise<Harness> {
  const sock = path.join(tempDir('shed-hs'), 'h.sock');
  const h = { sock, closed: [] as string[], drops: 0 } as Harness;
  h.server = createHardenedServer({
    limits: { maxBodyBytes: 1024, ...limits },
    refusal: (_status, code, message) => JSON.stringify({ error: { code, message } }),
    onDrop: () => (h.drops += 1),
    onRequest: (req, res) => {
      const body = req.rawBody.toString();
      if (body === 'hold') {
        res.once('close', () => h.closed.push(req.url ?? ''));
        return;
      }
      const text = JSON.stringify({ echo: `${req.method} ${req.url} ${body}` });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
    },
  });
  await new Promise<void>((r) => h.server.listen(sock, r));
  h.stop = () => new Promise<void>((r) => {
    h.server.close(() => r());
    h.server.closeAllConnections();
  });
  return h;
}

/** Write `text` (in pieces, with pauses, when given an array) and read until the peer closes or `until` matches. */
async function exchange(sock: string, text: string | string[], until?: RegExp, pauseMs = 20): Promise<{ out: string; ended: boolean }> {
  const s = net.connect(sock);
  await new Promise((r) => s.once('connect', r));
  let out = '';
  let ended = false;
  s.on('data', (d) => (out += d.toString('latin1')));
  s.on('close', () => (ended = true));
  s.on('error', () => undefined);
  for (const piece of Array.isArray(text) ? text : [text]) {
    // Like a client that reads: once the server has answered (or closed), stop sending.
    if (s.destroyed || /HTTP\/1\.1 [2-5]\d\d /.test(out)) break;
    s.write(piece);
    await new Promise((r) => setTimeout(r, pauseMs));
  }
  await waitFor(() => ended || (until !== undefined && until.test(out)), 5000, `an answer to ${JSON.stringify(String(text).slice(0, 40))}`);
  s.destroy();
  return { out, ended };
}

const req = (body: string, extra = '') => `POST /v1/publish HTTP/1.1\r\nHost: x\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
const statuses = (out: string) => [...out.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));

describe('hardened HTTP server (node:http with every limit set)', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.stop();
    h = undefined;
  });

  it('answers pipelined requests in order, up to maxPipelined; a connection with more in flight is closed', async () => {
    h = await start({ maxPipelined: 3 });
    const { out, ended } = await exchange(h.sock, req('a') + req('bb') + req('ccc'), /ccc"}$/);
    expect(ended).to.equal(false);
    expect(statuses(out)).to.deep.equal([200, 200, 200]);
    expect(out.indexOf('POST /v1/publish a')).to.be.below(out.indexOf('POST /v1/publish bb'));
    expect(out).to.match(/content-type: application\/json\r\ncontent-length: 30\r\n/i);
    const flood = await exchange(h.sock, req('hold') + req('x').repeat(10));
    expect(flood.ended).to.equal(true);
    await waitFor(() => h!.closed.length === 1, 2000, 'the held request to see its client leave');
  });

  it('reads a chunked body with extensions and trailers, and a body that arrives a byte at a time', async () => {
    h = await start();
    const chunked = 'POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nhe\r\n3\r\nllo\r\n0\r\nT: 1\r\n\r\n';
    expect((await exchange(h.sock, chunked, /hello/)).out).to.contain('"echo":"POST /c hello"');
    expect((await exchange(h.sock, [...req('slow')], /slow"}/, 1)).out).to.contain('"echo":"POST /v1/publish slow"');
  });

  it('sends 100 Continue before the body when asked', async () => {
    h = await start();
    const head = req('later', 'Expect: 100-continue\r\n');
    const split = head.indexOf('\r\n\r\n') + 4;
    const { out } = await exchange(h.sock, [head.slice(0, split), head.slice(split)], /later/);
    expect(out.startsWith('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n')).to.equal(true);
  });

  it('closes after HTTP/1.0 and Connection: close, and keeps HTTP/1.0 keep-alive', async () => {
    h = await start();
    const old = await exchange(h.sock, 'POST /v1/publish HTTP/1.0\r\nContent-Length: 1\r\n\r\nx');
    expect([old.ended, statuses(old.out)]).to.deep.equal([true, [200]]);
    const close = await exchange(h.sock, req('x', 'Connection: close\r\n'));
    expect([close.ended, statuses(close.out)]).to.deep.equal([true, [200]]);
    const keep = await exchange(h.sock, 'POST /v1/publish HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx', /x"}$/);
    expect(keep.ended).to.equal(false);
  });

  it('refuses malformed framing, oversized heads, trailers, extensions and bodies with a JSON code, and closes', async () => {
    h = await start();
    for (const [text, status, code] of [
      ['GARBAGE\r\n\r\n', 400, 'BAD_REQUEST'],
      ['POST /v1/publish HTTP/1.1\r\nContent-Length: 0\r\n\r\n', 400, 'BAD_REQUEST'],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, 'BAD_REQUEST'],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab', 400, 'BAD_REQUEST'],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 400, 'BAD_REQUEST'],
      [`POST /v1/publish HTTP/1.1\r\nHost: x\r\nX: ${'a'.repeat(17 * 1024)}`, 431, 'HEADERS_TOO_LARGE'],
      [`POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n${'T: x\r\n'.repeat(40000)}`, 431, 'HEADERS_TOO_LARGE'],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n', 413, 'BODY_TOO_LARGE'],
      [`POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n${'a'.repeat(1025)}\r\n0\r\n\r\n`, 413, 'BODY_TOO_LARGE'],
    ] as const) {
      const { out, ended } = await exchange(h.sock, text);
      expect(statuses(out), text.slice(0, 60)).to.deep.equal([status]);
      expect(ended, text.slice(0, 60)).to.equal(true);
      expect(out.toLowerCase()).to.contain('connection: close');
      expect(out).to.contain(`"code":"${code}"`);
    }
    // A chunk extension past 16 KiB, as it streams in (llhttp keeps none of it; many short
    // ones are only bounded by the request timeout, which the adversarial tests cover).
    const ext = ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;', ...Array.from({ length: 200 }, () => 'e'.repeat(100))];
    const { out, ended } = await exchange(h.sock, ext, undefined, 1);
    expect([statuses(out), ended]).to.deep.equal([[400], true]);
    expect(out).to.contain('"code":"BAD_REQUEST"');
  });

  it('closes a connection whose peer never reads its refusal, within the grace period', async () => {
    h = await start();
    const s = net.connect(h.sock);
    await new Promise((r) => s.once('connect', r));
    // It never reads: it cannot see the close, but the server must not keep the socket.
    s.pause();
    s.on('error', () => undefined);
    s.write(`POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n${'a'.repeat(1025)}`);
    await waitFor(async () => (await new Promise<number>((r) => h!.server.getConnections((_e, n) => r(n)))) === 0, 5000, 'the server to let the refused connection go');
    s.destroy();
  });

  it('answers 408 to a request that does not arrive whole in time, however it trickles, and closes silent and idle connections', async () => {
    h = await start({ headersTimeoutMs: 300, requestTimeoutMs: 400, keepAliveTimeoutMs: 200 });
    const slow = await exchange(h.sock, ['POST /v1/publish HTTP/1.1\r\n', 'Host: x\r\n', 'X: 1\r\n', 'X: 2\r\n', 'X: 3\r\n', 'X: 4\r\n', 'X: 5\r\n', 'X: 6\r\n'], undefined, 100);
    expect(statuses(slow.out)).to.deep.equal([408]);
    const body = await exchange(h.sock, ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n', ...'abcdefghijklmn'], undefined, 100);
    expect(body.ended).to.equal(true);
    const silent = await exchange(h.sock, []);
    expect(silent.ended).to.equal(true);
    const idle = await exchange(h.sock, req('a'));
    expect([idle.ended, statuses(idle.out)]).to.deep.equal([true, [200]]);
  });

  it('takes at most maxConnections at once and closes the rest as they come', async () => {
    h = await start({ maxConnections: 3 });
    const held = await Promise.all(Array.from({ length: 3 }, () => new Promise<net.Socket>((r) => {
      const s = net.connect(h!.sock, () => r(s));
    })));
    const extra = await exchange(h.sock, req('over'));
    expect([extra.ended, extra.out]).to.deep.equal([true, '']);
    expect(h.drops).to.equal(1);
    held[0]!.destroy();
    await waitFor(async () => (await new Promise<number>((r) => h!.server.getConnections((_e, n) => r(n)))) === 2, 2000, 'a slot to free');
    expect(statuses((await exchange(h.sock, req('in'), /in"}/)).out)).to.deep.equal([200]);
    for (const s of held) s.destroy();
  });

  it('tells the handler when the client leaves before its answer', async () => {
    h = await start();
    const s = net.connect(h.sock);
    await new Promise((r) => s.once('connect', r));
    s.write(req('hold').replace('/v1/publish', '/held'));
    await waitFor(async () => (await new Promise<number>((r) => h!.server.getConnections((_e, n) => r(n)))) === 1, 2000, 'the connection');
    await new Promise((r) => setTimeout(r, 50));
    s.destroy();
    await waitFor(() => h!.closed.length === 1, 2000, 'the close to reach the handler');
    expect(h.closed).to.deep.equal(['/held']);
  });
});
