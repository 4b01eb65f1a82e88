/**
 * Answers to one shed server: `POST …/listeners/{ns}/respond` with the
 * response envelope, within bounds.
 *
 * - At most `maxSockets` calls on the wire (the HTTP pool's limit) and
 *   `maxPending` answers waiting in all; past that an answer is dropped
 *   (shed-server re-delivers what is not answered, or the guest times out).
 * - Network errors and 5xx are retried a few times within a few seconds.
 * - A refusal ends the request: 403 (shed-server holds no such pending
 *   request: answered already, forged or swept) and 404 SHED_NOT_CONNECTED
 *   are not retried; a 401 is reported to the token source and the answer
 *   tried once more with the token it gets.
 * - Without a token to send (a mint failing), it fails at once; while a
 *   token is being fetched, it waits within the same few seconds.
 *
 * Failures are logged here, each kind once a minute with its count, so a
 * server that refuses every answer cannot flood the log.
 */
import type { Envelope } from '../../protocol/envelope.js';
import { LogThrottle } from '../../protocol/log.js';
import { apiError, sleep } from './server-http.js';
import type { ServerContext } from './subscription.js';

export interface ResponderTimings {
  requestTimeoutMs: number;
  /** Delays between retries of a failed respond call. */
  respondRetryMs: number[];
}

/** shed-server said no to an answer (4xx): that request is over. */
export class RespondRefused extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export class Responder {
  private pending = 0;
  private readonly throttle: LogThrottle;
  private readonly abort = new AbortController();

  constructor(
    private readonly ctx: ServerContext,
    private readonly timings: ResponderTimings,
    private readonly maxPending: number,
  ) {
    this.throttle = new LogThrottle(ctx.log);
  }

  /** Answers waiting to be delivered (on the wire, queued, or between retries). */
  get backlog(): number {
    return this.pending;
  }

  /** Send an answer; never rejects (what fails is logged). */
  async deliver(namespace: string, envelope: Envelope): Promise<void> {
    const shed = envelope.shed?.name ?? '?';
    if (this.pending >= this.maxPending) {
      this.throttle.warn('backlog', `${this.maxPending} answers are waiting for ${this.ctx.where} to take them: dropped the answer to shed ${shed} request ${envelope.in_reply_to} (shed-server re-delivers it, or the guest times out)`);
      return;
    }
    this.pending += 1;
    try {
      await this.respond(namespace, envelope);
    } catch (err) {
      const kind = err instanceof RespondRefused ? `refused ${err.status}` : 'failed';
      this.throttle.warn(kind, (err as Error).message);
    } finally {
      this.pending -= 1;
    }
  }

  /** Give up what waits to retry, at once. */
  stop(): void {
    this.abort.abort();
    this.throttle.close();
  }

  private async respond(namespace: string, envelope: Envelope): Promise<void> {
    const { http, tokens, where, log } = this.ctx;
    const body = JSON.stringify(envelope);
    const shed = envelope.shed?.name ?? '?';
    const what = `the answer to shed ${shed} request ${envelope.in_reply_to}`;
    const delays = this.timings.respondRetryMs;
    const signal = this.abort.signal;
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted) throw new Error(`${what} was not sent: the broker is stopping`);
      let outcome: { status: number; text: string } | Error;
      let token: string | undefined;
      if (tokens) {
        token = tokens.current();
        if (!token && !tokens.pending()) {
          // Nothing is coming soon: say so now rather than hold the answer.
          throw new Error(`could not deliver ${what} to ${where}: no valid token (${tokens.problem() ?? 'none yet'})`);
        }
      }
      if (tokens && !token) {
        outcome = new Error(`waiting for a token (${tokens.problem() ?? 'being fetched'})`);
      } else {
        try {
          outcome = await http.post(http.endpoint(namespace, 'respond'), body, token ? { authorization: `Bearer ${token}` } : {}, this.timings.requestTimeoutMs);
        } catch (err) {
          outcome = err as Error;
        }
      }
      if (!(outcome instanceof Error)) {
        const { status, text } = outcome;
        if (status === 204 || status === 200) return;
        const error = apiError(text);
        if (status === 404 && error?.code === 'SHED_NOT_CONNECTED') {
          throw new RespondRefused(status, `shed ${shed} is no longer connected to shed-server; ${what} was dropped`);
        }
        if (status === 403) {
          throw new RespondRefused(status, `shed-server refused ${what} (403${error ? ` ${error.code}` : ''}): it holds no such pending request of that shed (answered already, or swept); the request is over`);
        }
        if (status === 401 && token && tokens) {
          tokens.refused(token);
        } else if (status < 500) {
          throw new RespondRefused(status, `shed-server refused ${what}: ${this.ctx.explainStatus(status, error)}`);
        }
      }
      const reason = outcome instanceof Error ? outcome.message : `${outcome.status} ${apiError(outcome.text)?.code ?? ''}`.trim();
      if (attempt >= delays.length || signal.aborted) {
        throw new Error(`could not deliver ${what} to ${where} after ${attempt + 1} attempts: ${reason}`);
      }
      log.debug(`${what}: ${reason}; retrying`);
      const delay = delays[attempt]!;
      if (tokens && !tokens.current() && tokens.pending()) {
        // A token is on its way (after a 401, or the first mint): go as soon as that fetch ends, either way.
        await Promise.race([tokens.settled(), sleep(Math.max(delay, 1000), signal)]);
      } else {
        await sleep(delay, signal);
      }
    }
  }
}
