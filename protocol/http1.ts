/**
 * HTTP/1.1 message framing (RFC 9112) for the guest's bus client
 * (guest-services/http1.ts): the head of a message, how its body is
 * delimited, and chunked bodies. (What the project serves is node:http, see
 * http-server.ts; this client talks only to shed-agent and the broker.) Strict on purpose: whatever does not parse
 * exactly is an Http1ProtocolError, and the connection it came on is not
 * used again.
 */

/** The message is not HTTP/1.x as this code reads it. `status` is what a server answers. */
export class Http1ProtocolError extends Error {
  override readonly name = 'Http1ProtocolError';
  constructor(message: string, readonly status = 400) {
    super(message);
  }
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const END_OF_HEAD = Buffer.from('\r\n\r\n', 'latin1');

export interface Head {
  /** The start line: `POST /v1/publish HTTP/1.1` or `HTTP/1.1 200 OK`. */
  startLine: string;
  /** Header fields by lower-case name; repeated fields joined with ", ". */
  fields: Map<string, string>;
  /** Where the body starts. */
  bodyAt: number;
}

/** The head at the start of `buf`, or undefined until all of it is there. */
export function readHead(buf: Buffer, maxBytes: number): Head | undefined {
  const end = buf.indexOf(END_OF_HEAD);
  if ((end < 0 ? buf.length : end + 4) > maxBytes) throw new Http1ProtocolError(`headers longer than ${maxBytes} bytes`, 431);
  if (end < 0) return undefined;
  const text = buf.toString('latin1', 0, end);
  const fields = new Map<string, string>();
  let eol = text.indexOf('\r\n');
  const startLine = eol < 0 ? text : text.slice(0, eol);
  while (eol >= 0) {
    const from = eol + 2;
    eol = text.indexOf('\r\n', from);
    const line = eol < 0 ? text.slice(from) : text.slice(from, eol);
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon) : '';
    if (!TOKEN.test(name)) throw new Http1ProtocolError(`malformed header line ${JSON.stringify(line.slice(0, 40))}`);
    const key = name.toLowerCase();
    const value = line.slice(colon + 1).trim();
    const seen = fields.get(key);
    fields.set(key, seen === undefined ? value : `${seen}, ${value}`);
  }
  return { startLine, fields, bodyAt: end + 4 };
}

export type BodyFraming = { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'close' };

/**
 * How the body after `head` is delimited: Transfer-Encoding chunked, else
 * Content-Length, else `otherwise` (none for a request, the connection's
 * end for a response). Both at once is refused (a request smuggling vector),
 * as are other codings and lengths that disagree.
 */
export function bodyFraming(head: Head, maxBody: number, otherwise: BodyFraming): BodyFraming {
  const te = head.fields.get('transfer-encoding');
  const cl = head.fields.get('content-length');
  if (te !== undefined) {
    if (cl !== undefined) throw new Http1ProtocolError('both transfer-encoding and content-length');
    if (te.toLowerCase() !== 'chunked') throw new Http1ProtocolError(`unsupported transfer-encoding ${JSON.stringify(te.slice(0, 40))}`);
    return { kind: 'chunked' };
  }
  if (cl !== undefined) {
    // One value, or the same repeated (RFC 9110 8.6); anything else is refused.
    const values = new Set(cl.includes(',') ? cl.split(',').map((v) => v.trim()) : [cl]);
    const [only] = values;
    if (values.size !== 1 || !/^\d{1,10}$/.test(only!)) throw new Http1ProtocolError('invalid or conflicting content-length');
    const length = Number(only);
    if (length > maxBody) throw new Http1ProtocolError(`body of ${length} bytes is larger than ${maxBody}`, 413);
    return { kind: 'length', length };
  }
  return otherwise;
}

/** Whether the connection stays open after this message (HTTP/1.1 unless `close`; HTTP/1.0 only with `keep-alive`). */
export function keepsAlive(head: Head, minor: number): boolean {
  const connection = head.fields.get('connection');
  if (connection === undefined) return minor === 1;
  const tokens = connection.toLowerCase().split(',').map((t) => t.trim());
  return minor === 1 ? !tokens.includes('close') : tokens.includes('keep-alive');
}

/**
 * A whole chunked body at the start of `buf`: its data and the bytes it took,
 * or undefined until it is all there. Extensions and trailers are dropped.
 */
export function readChunked(buf: Buffer, maxBody: number): { body: Buffer; used: number } | undefined {
  const parts: Buffer[] = [];
  let size = 0;
  let pos = 0;
  for (;;) {
    const eol = buf.indexOf('\r\n', pos);
    if (eol < 0) {
      if (buf.length - pos > 1024) throw new Http1ProtocolError('chunk size line too long');
      return undefined;
    }
    const hex = buf.subarray(pos, eol).toString('latin1').split(';')[0]!.trim();
    if (!/^[0-9a-fA-F]{1,8}$/.test(hex)) throw new Http1ProtocolError(`invalid chunk size ${JSON.stringify(hex.slice(0, 20))}`);
    const n = parseInt(hex, 16);
    pos = eol + 2;
    if (n === 0) break;
    size += n;
    if (size > maxBody) throw new Http1ProtocolError(`body larger than ${maxBody} bytes`, 413);
    if (buf.length < pos + n + 2) return undefined;
    if (buf[pos + n] !== 0x0d || buf[pos + n + 1] !== 0x0a) throw new Http1ProtocolError('chunk not followed by CRLF');
    parts.push(buf.subarray(pos, pos + n));
    pos += n + 2;
  }
  // Trailer fields, up to the empty line.
  for (;;) {
    const eol = buf.indexOf('\r\n', pos);
    if (eol < 0) {
      if (buf.length - pos > 16 * 1024) throw new Http1ProtocolError('chunked trailer too long');
      return undefined;
    }
    const empty = eol === pos;
    pos = eol + 2;
    if (empty) return { body: Buffer.concat(parts), used: pos };
  }
}
