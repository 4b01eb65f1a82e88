/**
 * How requests reach the broker. A transport knows nothing of namespaces: it
 * yields each request envelope with the shed it came from, as the transport
 * itself established it (the socket it arrived on, or shed-server's `shed`
 * field), and a function that sends the answer back to that shed.
 */
import type { Envelope, Payload } from '../../protocol/envelope.js';

export type Reply = (payload: Payload) => Promise<void>;

/**
 * Called for every request. The envelope is whole and well formed: the
 * transport checked it where it crossed into the broker (or built it from a
 * checked body); the dispatcher checks what policy and the handlers decide.
 * `reply` is not called for requests that must go unanswered.
 */
export type RequestSink = (envelope: Envelope, shed: string, reply: Reply, options?: SinkOptions) => void;

export interface SinkOptions {
  /** The transport made the envelope's id itself (a direct socket): it cannot be a re-delivery or a replay. */
  freshId?: boolean;
}

export interface Transport {
  /** For log lines: "direct sockets", "shed-server http://…". */
  readonly description: string;
  start(sink: RequestSink): Promise<void>;
  /** Stop accepting, answer what waits with SHUTTING_DOWN where the transport can, release resources. */
  stop(): Promise<void>;
}
