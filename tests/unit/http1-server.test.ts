import { expect } from 'chai';
import net from 'node:net';
import path from 'node:path';
import { Http1Server, type Http1Handler } from '../../host-broker/transports/http1-server.js';
import { tempDir, waitFor } from '../support/procs.js';

interface Harness {
  sock: string;
  closed: string[];
  stop: () => Promise<void>;
}

/** Echoes `METHOD target body`, or holds the request when the body is "hold". */
async function start(options: { keepAliveMs?: number; requestTimeoutMs?: number } = {}): Promise<Harness> {
  const sock = path.join(tempDir('shed-h1s'), 'h.sock');
  const closed: string[] = [];
  const handler: Http1Handler = (req, respond, onClose) => {
    const body = req.body.toString();
    if (body === 'hold') {
      onClose(() => closed.push(req.target));
      return;
    }
    respond({ status: 200, body: JSON.stringify({ echo: `${req.method} ${req.target} ${body}` }) });
  };
  const server = new Http1Server(handler, {
    maxBodyBytes: 1024,
    refusal: (status, message) => ({ status, body: JSON.stringify({ error: { code: String(status), message } }) }),
    ...options,
  });
  await new Promise<void>((r) => server.server.listen(sock, r));
  return { sock, closed, stop: () => server.close() };
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
    s.write(piece);
    await new Promise((r) => setTimeout(r, pauseMs));
  }
  await waitFor(() => ended || (until !== undefined && until.test(out)), 5000, `an answer to ${JSON.stringify(String(text).slice(0, 40))}`);
  s.destroy();
  return { out, ended };
}

const req = (body: string, extra = '') => `POST /v1/publish HTTP/1.1\r\nHost: x\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
const statuses = (out: string) => [...out.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));

describe('direct socket HTTP/1.1 server', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.stop();
    h = undefined;
  });

  it('answers pipelined requests in order on one connection, with length and type', async () => {
    h = await start();
    const { out, ended } = await exchange(h.sock, req('a') + req('bb') + req('ccc'), /ccc"}$/);
    expect(ended).to.equal(false);
    expect(statuses(out)).to.deep.equal([200, 200, 200]);
    expect(out.indexOf('POST /v1/publish a')).to.be.below(out.indexOf('POST /v1/publish bb'));
    expect(out).to.match(/content-type: application\/json\r\ncontent-length: 30\r\n/);
    expect(out).to.match(/^date: \w{3}, \d\d \w{3} \d{4} /m);
  });

  it('reads a chunked body, and a body that arrives a byte at a time', async () => {
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

  it('closes after HTTP/1.0 and Connection: close, keeps HTTP/1.0 keep-alive, and sends no body to HEAD', async () => {
    h = await start();
    const old = await exchange(h.sock, 'POST /v1/publish HTTP/1.0\r\nContent-Length: 1\r\n\r\nx');
    expect([old.ended, statuses(old.out)]).to.deep.equal([true, [200]]);
    expect(old.out).to.contain('connection: close\r\n');
    const close = await exchange(h.sock, req('x', 'Connection: close\r\n'));
    expect([close.ended, statuses(close.out)]).to.deep.equal([true, [200]]);
    const keep = await exchange(h.sock, 'POST /v1/publish HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx', /x"}$/);
    expect(keep.ended).to.equal(false);
    const headOnly = await exchange(h.sock, 'HEAD /v1/publish HTTP/1.1\r\nHost: x\r\n\r\n', /\r\n\r\n/);
    expect(headOnly.out).to.match(/content-length: \d+\r\n\r\n$/);
  });

  it('refuses what is not HTTP/1.1 as it reads it, and closes', async () => {
    h = await start();
    for (const [text, status] of [
      ['GARBAGE\r\n\r\n', 400],
      ['POST /v1/publish HTTP/2.0\r\nHost: x\r\n\r\n', 400],
      ['POST /v1/publish HTTP/1.1\r\nContent-Length: 0\r\n\r\n', 400],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n', 400],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab', 400],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n', 400],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 400],
      [`POST /v1/publish HTTP/1.1\r\nHost: x\r\nX: ${'a'.repeat(17 * 1024)}`, 431],
      ['POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n', 413],
      [`POST /v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n${'a'.repeat(1025)}\r\n0\r\n\r\n`, 413],
    ] as const) {
      const { out, ended } = await exchange(h.sock, text);
      expect(statuses(out), text.slice(0, 60)).to.deep.equal([status]);
      expect(ended, text.slice(0, 60)).to.equal(true);
      expect(out).to.contain('connection: close').and.contain(`"code":"${status}"`);
    }
  });

  it('answers 408 to a request that does not arrive whole in time, however it trickles, and closes idle connections', async () => {
    h = await start({ requestTimeoutMs: 300, keepAliveMs: 300 });
    const started = Date.now();
    const slow = await exchange(h.sock, ['POST /v1/publish HTTP/1.1\r\n', 'Host: x\r\n', 'X: 1\r\n', 'X: 2\r\n', 'X: 3\r\n', 'X: 4\r\n'], undefined, 100);
    expect(statuses(slow.out)).to.deep.equal([408]);
    expect(Date.now() - started).to.be.below(1500);
    const idle = await exchange(h.sock, req('a'));
    expect([idle.ended, statuses(idle.out)]).to.deep.equal([true, [200]]);
  });

  it('tells the handler when the client leaves before its answer', async () => {
    h = await start();
    const s = net.connect(h.sock);
    await new Promise((r) => s.once('connect', r));
    s.write(req('hold').replace('/v1/publish', '/held'));
    await new Promise((r) => setTimeout(r, 50));
    s.destroy();
    await waitFor(() => h!.closed.length === 1, 2000, 'the close to reach the handler');
    expect(h.closed).to.deep.equal(['/held']);
  });
});
