import { expect } from 'chai';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Http1Connection, Http1ProtocolError, MAX_RESPONSE_BYTES, postRequest } from '../../guest-services/http1.js';
import { tempDir } from '../support/procs.js';

/** A raw peer: each request gets `reply(n)` written as is, `split` bytes at a time. */
async function rawPeer(reply: (n: number) => string | Buffer, options: { split?: number; endAfter?: boolean } = {}) {
  const sock = path.join(tempDir('shed-http1'), 'peer.sock');
  const requests: string[] = [];
  const connections = new Set<net.Socket>();
  const server = net.createServer((s) => {
    connections.add(s);
    let text = '';
    s.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = Number(/content-length: (\d+)/i.exec(text.slice(0, end))?.[1] ?? 0);
      if (text.length < end + 4 + length) return;
      requests.push(text.slice(0, end + 4 + length));
      text = text.slice(end + 4 + length);
      const out = Buffer.from(reply(requests.length));
      const step = options.split ?? out.length;
      void (async () => {
        for (let i = 0; i < out.length; i += step) {
          s.write(out.subarray(i, i + step));
          if (step < out.length) await new Promise((r) => setImmediate(r));
        }
        if (options.endAfter) s.end();
      })();
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(sock, r));
  return {
    sock,
    requests,
    connections,
    close: () => new Promise<void>((r) => {
      for (const c of connections) c.destroy();
      server.close(() => r());
    }),
  };
}

const JSON_BODY = '{"ok":true}';
const message = postRequest({ socketPath: '/x' }, '/v1/publish', JSON_BODY);

async function once(sock: string, reply?: Buffer): Promise<{ status: number; body: string; conn: Http1Connection }> {
  const conn = await Http1Connection.connect({ socketPath: sock });
  const res = await conn.request(reply ?? message);
  return { status: res.status, body: res.body.toString(), conn };
}

async function protocolError(sock: string): Promise<Error> {
  const conn = await Http1Connection.connect({ socketPath: sock });
  try {
    await conn.request(message);
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the request to fail');
}

describe('http1 client', () => {
  it('writes one exact request: method, path, host, type and length', () => {
    expect(postRequest({ socketPath: '/x' }, '/v1/publish', '{"é":1}').toString()).to.equal(
      'POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{"é":1}');
    expect(postRequest({ host: '::1', port: 498 }, '/v1/publish', '{}').toString()).to.contain('Host: [::1]:498\r\n');
    expect(postRequest({ host: '127.0.0.1', port: 498 }, '/p', '{}').toString()).to.contain('Host: 127.0.0.1:498\r\n');
  });

  it('reuses one connection against node:http, with Content-Length and with chunked bodies', async () => {
    const sock = path.join(tempDir('shed-http1'), 'node.sock');
    const sockets = new Set<net.Socket>();
    const server = http.createServer((req, res) => {
      sockets.add(req.socket);
      req.resume();
      req.on('end', () => {
        if (req.headers['content-length'] !== String(JSON_BODY.length)) res.writeHead(400).end();
        else if (sockets.size % 2) res.writeHead(200, { 'content-type': 'application/json' }).end(JSON_BODY);
        else {
          // No length: node sends it chunked, as Go does past its 2 KiB buffer.
          res.writeHead(200, { 'content-type': 'application/json' });
          res.write('{"ok":');
          res.end('true}');
        }
      });
    });
    server.keepAliveTimeout = 5000;
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const conn = await Http1Connection.connect({ socketPath: sock });
      for (let i = 0; i < 3; i++) {
        const res = await conn.request(message);
        expect(res.status).to.equal(200);
        expect(res.body.toString()).to.equal(JSON_BODY);
        expect(conn.reusable).to.equal(true);
      }
      expect(sockets.size).to.equal(1);
      conn.destroy();
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('reads chunked bodies with extensions and trailers, one byte at a time', async () => {
    const peer = await rawPeer(() => 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{"ok\r\n7\r\n":true}\r\n0\r\nX-Trailer: y\r\n\r\n', { split: 1 });
    try {
      const { status, body, conn } = await once(peer.sock);
      expect([status, body, conn.reusable]).to.deep.equal([200, JSON_BODY, true]);
      const again = await conn.request(message);
      expect(again.body.toString()).to.equal(JSON_BODY);
      conn.destroy();
    } finally {
      await peer.close();
    }
  });

  it('skips 100 Continue, and reads a body that ends with the connection', async () => {
    const peer = await rawPeer(() => `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n${JSON_BODY}`, { endAfter: true });
    try {
      const { status, body, conn } = await once(peer.sock);
      expect([status, body, conn.reusable]).to.deep.equal([503, JSON_BODY, false]);
    } finally {
      await peer.close();
    }
  });

  it('does not reuse a connection after Connection: close, HTTP/1.0, or bytes beyond the response', async () => {
    for (const reply of [
      `HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: ${JSON_BODY.length}\r\n\r\n${JSON_BODY}`,
      `HTTP/1.0 200 OK\r\nContent-Length: ${JSON_BODY.length}\r\n\r\n${JSON_BODY}`,
      `HTTP/1.1 200 OK\r\nContent-Length: ${JSON_BODY.length}\r\n\r\n${JSON_BODY}HTTP/1.1 200 OK\r\n`,
    ]) {
      const peer = await rawPeer(() => reply);
      try {
        const { body, conn } = await once(peer.sock);
        expect(body, reply).to.equal(JSON_BODY);
        expect(conn.reusable, reply).to.equal(false);
        conn.destroy();
      } finally {
        await peer.close();
      }
    }
    const keep = await rawPeer(() => `HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: ${JSON_BODY.length}\r\n\r\n${JSON_BODY}`);
    try {
      const { conn } = await once(keep.sock);
      expect(conn.reusable, 'HTTP/1.0 with keep-alive').to.equal(true);
      conn.destroy();
    } finally {
      await keep.close();
    }
  });

  it('refuses what is not HTTP/1.1 as it reads it, and never reuses that connection', async () => {
    for (const [reply, pattern] of [
      ['SSH-2.0-OpenSSH_9.2\r\n\r\n', /not an HTTP\/1.x status line/],
      ['HTTP/2 200\r\n\r\n', /not an HTTP\/1.x status line/],
      ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef', /conflicting content-length/],
      ['HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', /content-length/],
      [`HTTP/1.1 200 OK\r\nContent-Length: ${MAX_RESPONSE_BYTES + 1}\r\n\r\n`, /larger than/],
      ['HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n', /unsupported transfer-encoding/],
      ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n', /both transfer-encoding and content-length/],
      ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', /invalid chunk size/],
      ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n', /not followed by CRLF/],
      ['HTTP/1.1 200 OK\r\n folded: header\r\n\r\n', /malformed header line/],
      ['HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n', /switched protocols/],
      [`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70 * 1024)}`, /headers longer than/],
    ] as const) {
      const peer = await rawPeer(() => reply);
      try {
        const err = await protocolError(peer.sock);
        expect(err, reply.slice(0, 60)).to.be.instanceOf(Http1ProtocolError);
        expect(err.message, reply.slice(0, 60)).to.match(pattern);
      } finally {
        await peer.close();
      }
    }
  });

  it('tells a connection closed before any answer (retryable) from one cut mid-response', async () => {
    const silent = await rawPeer(() => '', { endAfter: true });
    try {
      const err = await protocolError(silent.sock) as NodeJS.ErrnoException;
      expect(err).not.to.be.instanceOf(Http1ProtocolError);
      expect(err.code).to.equal('ECONNRESET');
    } finally {
      await silent.close();
    }
    const cut = await rawPeer(() => 'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"partial', { endAfter: true });
    try {
      const err = await protocolError(cut.sock);
      expect(err).to.be.instanceOf(Http1ProtocolError);
      expect(err.message).to.match(/closed in the middle of a response/);
    } finally {
      await cut.close();
    }
  });
});
