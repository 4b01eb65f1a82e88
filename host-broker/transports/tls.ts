/**
 * Trusting a shed server over HTTPS. shed's certificate is self-signed, so
 * the trust anchor is its SHA-256 fingerprint (`sha256:<hex of the DER>`),
 * from the config's `tls_pin` or from the credentials bundle the server
 * mints. The TLS connection is made here and the peer certificate compared
 * with the pin before the socket is handed to HTTP: no byte of a request
 * (and no token) is written to a server that is not the pinned one. Without
 * a pin, the system's CAs and the host name are checked as usual.
 */
import crypto from 'node:crypto';
import http from 'node:http';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { NotRegularFile, readRegularFile } from '../../protocol/files.js';

/** The pin to check, and where it came from (named in a refusal). */
export interface Pin {
  /** 64 lowercase hex digits. */
  hex: string;
  /** `server.tls_pin`, or `the fingerprint in mini2's credentials bundle`. */
  source: string;
}

/** The peer's certificate is not the pinned one: nothing was sent. */
export class PinMismatch extends Error {
  override readonly name = 'PinMismatch';
}

/** SHA-256 hex of a peer certificate's DER, as `server.tls_pin` names it ('none' without one). */
export function certificatePin(raw: Buffer | undefined): string {
  return raw ? crypto.createHash('sha256').update(raw).digest('hex') : 'none';
}

/** The hex digest a `server.tls_pin` names (`sha256:` prefix and colons optional). */
export function normalizePin(pin: string, key = 'server.tls_pin'): string {
  const hex = pin.replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error(`${key} must be sha256:<64 hex digits of the certificate DER>`);
  return hex;
}

/** Client certificate and key (PEM) for mutual TLS. */
export interface ClientIdentity {
  cert: Buffer;
  key: Buffer;
}

/** Read the client certificate and key, naming the key of the config that is wrong. */
export function readClientIdentity(certFile: string, keyFile: string, prefix = 'server'): ClientIdentity {
  return { cert: readFileOrExplain(certFile, `${prefix}.client_cert`), key: readFileOrExplain(keyFile, `${prefix}.client_key`) };
}

export function readFileOrExplain(file: string, key: string): Buffer {
  try {
    return readRegularFile(file).data;
  } catch (err) {
    if (err instanceof NotRegularFile) throw new Error(`${key} ${file} is a ${err.kind}; it must be a regular file`, { cause: err });
    throw new Error(`cannot read ${key} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/**
 * Keep-alive HTTP over TLS sockets made here. With a pin (asked for at every
 * new connection, so a pin learnt from a newer bundle applies to the next
 * one), CA verification is replaced, not added to; without one the usual
 * CA and host-name checks apply. HTTP runs over these sockets as over TCP:
 * requests through this agent use `http.request`.
 */
export class TlsAgent extends http.Agent {
  constructor(
    private readonly pin: () => Pin | undefined,
    private readonly identity: ClientIdentity | undefined,
    maxSockets: number,
  ) {
    super({ keepAlive: true, maxSockets });
  }

  override createConnection(options: http.ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): Duplex | null | undefined {
    const host = options.host ?? 'localhost';
    const port = Number(options.port ?? 443);
    const pin = this.pin();
    const socket = tls.connect({
      ...(this.identity && { cert: this.identity.cert, key: this.identity.key }),
      host,
      port,
      servername: isIpAddress(host) ? undefined : host,
      rejectUnauthorized: !pin,
    });
    const onError = (err: Error) => callback?.(err, socket);
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      socket.off('error', onError);
      if (pin) {
        const got = certificatePin(socket.getPeerCertificate()?.raw);
        if (got !== pin.hex) {
          socket.destroy();
          callback?.(new PinMismatch(`the TLS certificate of ${host}:${port} does not match ${pin.source} (got sha256:${got}): not connecting; if shed-server's certificate changed on purpose, update the pin`), socket);
          return;
        }
      }
      callback?.(null, socket);
    });
    return undefined;
  }
}

function isIpAddress(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}
