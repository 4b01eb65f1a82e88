import { expect } from 'chai';
import { v7 as uuidv7 } from 'uuid';
import { MemoryAudit } from '../../host-broker/audit/audit.js';
import { Dispatcher } from '../../host-broker/dispatch.js';
import { BrokerError, type NamespaceHandler } from '../../host-broker/handler.js';
import { Limits, QUEUE_FACTOR, TokenBucket } from '../../host-broker/limits/limits.js';
import { policyFromDocument, type Policy } from '../../host-broker/policy/policy.js';
import type { Namespace } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { requestEnvelope } from '../../protocol/messages.js';

async function refusal(p: Promise<unknown>): Promise<BrokerError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(BrokerError);
    return err as BrokerError;
  }
  throw new Error('expected a refusal');
}

function setup(doc: Record<string, unknown>) {
  let now = 0;
  let policy = policyFromDocument(doc);
  const limits = new Limits(() => now);
  const admit = (shed: string, namespace: Namespace = 'ssh-agent') =>
    limits.admission({ shed: policy.resolve(shed)!, namespace, operation: 'sign', requestId: uuidv7() });
  return {
    limits,
    admit,
    advance: (ms: number) => (now += ms),
    setPolicy: (next: Record<string, unknown>) => (policy = policyFromDocument(next)),
  };
}

describe('limits: token bucket', () => {
  it('allows a burst, then one request per 60/per_minute seconds', () => {
    const bucket = new TokenBucket(60, 3, 0);
    expect([bucket.take(0), bucket.take(0), bucket.take(0)]).to.deep.equal([0, 0, 0]);
    expect(bucket.take(0)).to.equal(1000);
    expect(bucket.take(400)).to.equal(600);
    expect(bucket.take(1000)).to.equal(0);
    expect(bucket.take(1000)).to.be.above(0);
    // Idle time refills up to the burst, no further.
    expect([0, 0, 0, 0].map(() => bucket.take(60_000))).to.deep.equal([0, 0, 0, 1000]);
  });
});

describe('limits: admission', () => {
  const doc = {
    version: 1,
    defaults: { limits: { ssh: { per_minute: 6, burst: 2 }, max_concurrent: 2 } },
    sheds: { alpha: {}, beta: {} },
  };

  it('answers RATE_LIMITED once a shed\'s bucket for a namespace is empty, saying when to retry and what to change', async () => {
    const { admit, advance } = setup(doc);
    (await admit('alpha'))();
    (await admit('alpha'))();
    const err = await refusal(admit('alpha'));
    expect(err.code).to.equal('RATE_LIMITED');
    expect(err.result).to.equal('denied');
    expect(err.message).to.equal('shed alpha is over its ssh-agent rate limit (6 per minute, burst 2); retry in 10 s, or raise limits.ssh in the host policy');
    expect(err.options.detail).to.equal('rate limit ssh 6/min burst 2');
    // Other sheds and other namespaces have their own buckets.
    (await admit('beta'))();
    (await admit('alpha', 'docker-credentials'))();
    advance(10_000);
    (await admit('alpha'))();
    await refusal(admit('alpha'));
  });

  it('follows a reload: a new rate applies at once, tokens capped at the new burst', async () => {
    const { admit, setPolicy, advance } = setup(doc);
    (await admit('alpha'))();
    setPolicy({ ...doc, defaults: { limits: { ssh: { per_minute: 6, burst: 1 } } } });
    (await admit('alpha'))();
    await refusal(admit('alpha'));
    setPolicy({ ...doc, sheds: { alpha: { limits: { ssh: { per_minute: 600, burst: 50 } } }, beta: {} } });
    // The bucket keeps its (empty) level; the new rate refills it in 100 ms, not 10 s.
    await refusal(admit('alpha'));
    advance(100);
    (await admit('alpha'))();
  });

  it('bounds the requests a shed has in flight; more wait their turn, in order, and past the queue are refused', async () => {
    const { admit, limits } = setup({ version: 1, defaults: { limits: { ssh: { per_minute: 10_000, burst: 1000 }, max_concurrent: 2 } }, sheds: { alpha: {}, beta: {} } });
    const first = await admit('alpha');
    const second = await admit('alpha');
    const order: number[] = [];
    const waiting = Array.from({ length: 2 * QUEUE_FACTOR }, (_, i) => admit('alpha').then((release) => {
      order.push(i);
      return release;
    }));
    await new Promise((r) => setImmediate(r));
    expect(limits.snapshot().sheds.alpha).to.deep.equal({ active: 2, waiting: 2 * QUEUE_FACTOR });
    const err = await refusal(admit('alpha'));
    expect(err.code).to.equal('RATE_LIMITED');
    expect(err.message).to.match(/shed alpha has too many requests in flight \(2 running, 8 waiting\); retry shortly, or raise limits.max_concurrent/);
    // Another shed is not held up by alpha.
    (await admit('beta'))();
    first();
    first(); // releasing twice frees one slot, not two
    await new Promise((r) => setImmediate(r));
    expect(order).to.deep.equal([0]);
    second();
    const releases = [await waiting[0]!, await waiting[1]!];
    for (const release of releases) release();
    for (const p of waiting.slice(2)) (await p)();
    expect(order).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(limits.snapshot().sheds).to.deep.equal({});
  });

  it('gives back the token of a request refused for concurrency', async () => {
    const { admit } = setup({ version: 1, defaults: { limits: { ssh: { per_minute: 1, burst: 10 }, max_concurrent: 1 } }, sheds: { alpha: {} } });
    const held = await admit('alpha');
    const queued = Array.from({ length: QUEUE_FACTOR }, () => admit('alpha'));
    await new Promise((r) => setImmediate(r));
    for (let i = 0; i < 3; i++) expect((await refusal(admit('alpha'))).message).to.match(/too many requests in flight/);
    held();
    for (const p of queued) (await p)();
    // 1 + QUEUE_FACTOR tokens spent; the three refused requests spent none.
    for (let i = 0; i < 10 - 1 - QUEUE_FACTOR; i++) (await admit('alpha'))();
    expect((await refusal(admit('alpha'))).message).to.match(/rate limit/);
  });
});

describe('limits: status requests', () => {
  it('take no token, but at most max_concurrent of a shed\'s run at once; more are refused, not queued', async () => {
    const policy = policyFromDocument({ version: 1, defaults: { limits: { ssh: { per_minute: 1, burst: 1 }, max_concurrent: 2 } }, sheds: { alpha: {}, beta: {} } });
    const limits = new Limits(() => 0);
    const status = (shed: string) => limits.admission({ shed: policy.resolve(shed)!, namespace: 'ssh-agent', operation: 'status', requestId: uuidv7(), quiet: true });
    const sign = (shed: string) => limits.admission({ shed: policy.resolve(shed)!, namespace: 'ssh-agent', operation: 'sign', requestId: uuidv7() });
    (await sign('alpha'))();
    await refusal(sign('alpha'));
    // Over its rate, alpha can still ask status...
    const a = await status('alpha');
    const b = await status('alpha');
    // ...but not without bound, and another shed is not held up.
    expect((await refusal(status('alpha'))).message).to.match(/too many requests in flight \(2 running\)/);
    (await status('beta'))();
    a();
    (await status('alpha'))();
    b();
  });
});

describe('dispatcher: request ids out of the replay window', () => {
  const handler: NamespaceHandler = { namespace: 'ssh-agent', handle: async () => ({ keys: [] }) };
  function dispatcher(policy: Policy = policyFromDocument({ version: 1, sheds: { alpha: {} } })) {
    const audit = new MemoryAudit();
    const log = memoryLogger();
    return { d: new Dispatcher({ policy: () => policy, handlers: [handler], audit, log }), audit, log };
  }
  const at = (offsetMs: number) => ({ ...requestEnvelope('ssh-agent', { operation: 'list' }), id: uuidv7({ msecs: Date.now() + offsetMs }) });

  it('serves ids made now, or a little in the past or future', async () => {
    const { d } = dispatcher();
    for (const offset of [0, -5 * 60_000, 30_000]) expect(await d.dispatch(at(offset), 'alpha')).to.deep.equal({ keys: [] });
  });

  it('refuses an id older than the window as DUPLICATE_REQUEST: it cannot be told from a replay', async () => {
    const { d, audit } = dispatcher();
    const answer = await d.dispatch(at(-9.5 * 60_000), 'alpha');
    expect(answer).to.include({ code: 'DUPLICATE_REQUEST' });
    expect(String(answer!.error)).to.match(/570 s old, older than the 540 s replay window: the host cannot tell it from a replay; send a new request/);
    expect(audit.entries[0]).to.include({ result: 'denied', detail: 'DUPLICATE_REQUEST', shed: 'alpha' });
  });

  it('refuses an id from the future beyond the skew as INVALID_REQUEST', async () => {
    const { d, audit, log } = dispatcher();
    const answer = await d.dispatch(at(5 * 60_000), 'alpha');
    expect(answer).to.include({ code: 'INVALID_REQUEST' });
    expect(String(answer!.error)).to.match(/dated 300 s ahead of the host's clock; sync the guest's clock/);
    expect(audit.entries[0]).to.include({ result: 'denied', detail: 'INVALID_REQUEST' });
    expect(log.lines.join('\n')).to.match(/refused: the request id is dated/);
  });

  it('refuses an id that is not a UUIDv7', async () => {
    const { d } = dispatcher();
    const answer = await d.dispatch({ ...requestEnvelope('ssh-agent', { operation: 'list' }), id: '9b2e4f3a-1c2d-4e5f-8a6b-7c8d9e0f1a2b' }, 'alpha');
    expect(answer).to.include({ code: 'INVALID_REQUEST' });
    expect(String(answer!.error)).to.match(/not a UUIDv7/);
  });
});
