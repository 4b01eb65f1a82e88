/** Building envelopes: a request as shed-agent forwards it, a response as a listener answers it. */
import { randomFillSync } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import type { Envelope, Payload, ShedInfo } from './envelope.js';

/**
 * Random bytes for ids, drawn from the CSPRNG 4 KiB at a time: uuid asks for
 * 16 bytes per id, and each call into the CSPRNG costs ~25 µs on a small VM
 * (two ids per request).
 */
const pool = Buffer.alloc(4096);
let poolAt = pool.length;

/** A UUIDv7: the time in milliseconds, then 74 random bits. */
export function newId(): string {
  if (poolAt + 16 > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const random = pool.subarray(poolAt, (poolAt += 16));
  return uuidv7({ random });
}

export function nowTimestamp(): string {
  return new Date().toISOString();
}

export function requestEnvelope(namespace: string, payload: Payload, shed?: ShedInfo, type: 'request' | 'event' = 'request'): Envelope {
  const envelope: Envelope = { id: newId(), namespace, type, final: true, timestamp: nowTimestamp(), payload };
  if (shed) envelope.shed = shed;
  return envelope;
}

/** The response to `request`: `in_reply_to` its id, `shed` copied from it (shed-server routes by it). */
export function responseEnvelope(request: Envelope, payload: Payload): Envelope {
  const envelope: Envelope = {
    id: newId(),
    namespace: request.namespace,
    type: 'response',
    in_reply_to: request.id,
    final: true,
    timestamp: nowTimestamp(),
    payload,
  };
  if (request.shed) envelope.shed = request.shed;
  return envelope;
}

/** Milliseconds since the epoch encoded in a UUIDv7, or undefined for another version. */
export function uuidv7Time(id: string): number | undefined {
  const hex = id.replace(/-/g, '');
  if (hex.length !== 32 || hex[12] !== '7') return undefined;
  return parseInt(hex.slice(0, 12), 16);
}
