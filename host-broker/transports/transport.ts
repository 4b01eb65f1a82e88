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
export type RequestSink = (request: Incoming, shed: string, reply: Reply, options?: SinkOptions) => void;

/**
 * A request's envelope, or the transport's check that makes one from the raw
 * body. The broker runs a check in the shed's turn (turns.ts), so that the
 * cost of parsing a burst of large bodies falls on that shed's turns, not on
 * every shed's; it returns undefined when it refused the body (and answered).
 */
export type Incoming = Envelope | (() => Envelope | undefined);

/** The envelope of a request, checking it now if the transport deferred that. */
export function envelopeOf(request: Incoming): Envelope | undefined {
  return typeof request === 'function' ? request() : request;
}

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
  /**
   * What `shed-host-agent status` shows of this transport, by the name of
   * each thing it serves: per namespace for a shed-server (`connected`,
   * `reconnecting: <reason>`, `stopped`), per shed for direct sockets. Cheap:
   * the status socket calls it on every request.
   */
  state(): Record<string, string>;
}
