/** Building envelopes: a request as shed-agent forwards it, a response as a listener answers it. */
import { v7 as uuidv7 } from 'uuid';
import type { Envelope, Payload, ShedInfo } from './envelope.js';

export function newId(): string {
  return uuidv7();
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
