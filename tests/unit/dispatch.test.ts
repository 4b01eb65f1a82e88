import { expect } from 'chai';
import { MemoryAudit, type AuditEntry } from '../../host-broker/audit/audit.js';
import { DedupeWindow } from '../../host-broker/dedupe.js';
import { Dispatcher } from '../../host-broker/dispatch.js';
import { BrokerError, unknownOperation, type NamespaceHandler, type RequestContext } from '../../host-broker/handler.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import type { Payload } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { requestEnvelope } from '../../protocol/messages.js';

/** A handler that records what it saw and answers per operation. */
function recordingHandler(namespace: NamespaceHandler['namespace'] = 'ssh-agent') {
  const seen: Array<{ operation: string; payload: Payload; shed: string }> = [];
  const handler: NamespaceHandler = {
    namespace,
    async handle(operation, payload, ctx: RequestContext) {
      seen.push({ operation, payload, shed: ctx.shed });
      switch (operation) {
        case 'list':
          ctx.detail = 'SHA256:test';
          return { keys: [], shed_seen: ctx.shed };
        case 'refuse':
          throw new BrokerError('KEY_NOT_ALLOWED', 'key not allowed for this shed', { detail: 'SHA256:other' });
        case 'explode':
          throw new Error('secret-material-AKIAEXAMPLESECRET leaked in an exception');
        case 'status':
          return { connected: true };
        default:
          throw unknownOperation(namespace, operation);
      }
    },
  };
  return { handler, seen };
}

const POLICY = {
  version: 1,
  sheds: {
    alpha: {},
    beta: { ssh: { enabled: false } },
  },
};

function setup(doc: Record<string, unknown> = POLICY, audit = new MemoryAudit()) {
  const { handler, seen } = recordingHandler();
  const log = memoryLogger();
  const policy = policyFromDocument(doc);
  const dispatcher = new Dispatcher({ policy: () => policy, handlers: [handler], audit, log });
  const send = (shed: string, payload: Payload, namespace = 'ssh-agent') => dispatcher.dispatch(requestEnvelope(namespace, payload), shed);
  return { dispatcher, seen, audit, log, send };
}

describe('dispatcher', () => {
  it('routes to the handler with the shed the transport named, never one from the payload', async () => {
    const { send, seen, audit } = setup();
    const answer = await send('alpha', { operation: 'list', shed: 'beta' });
    expect(answer).to.deep.equal({ keys: [], shed_seen: 'alpha' });
    expect(seen[0]!.shed).to.equal('alpha');
    expect(audit.entries).to.have.length(1);
    expect(audit.entries[0]).to.include({ shed: 'alpha', ns: 'ssh-agent', op: 'list', result: 'ok', detail: 'SHA256:test', approval: 'none' });
  });

  it('answers ping itself, without a handler call or an audit line', async () => {
    const { send, seen, audit } = setup();
    expect(await send('alpha', { operation: 'ping' })).to.deep.equal({ status: 'ok' });
    expect(seen).to.be.empty;
    expect(audit.entries).to.be.empty;
  });

  it('passes status to the handler without an audit line', async () => {
    const { send, audit } = setup();
    expect(await send('alpha', { operation: 'status' })).to.deep.equal({ connected: true });
    expect(audit.entries).to.be.empty;
  });

  it('refuses a shed the policy does not name, when there is no "*"', async () => {
    const { send, seen, audit } = setup();
    const answer = await send('gamma', { operation: 'list' });
    expect(answer).to.include({ code: 'SHED_NOT_ALLOWED' });
    expect(String(answer!.error)).to.match(/gamma.*policy/);
    expect(seen).to.be.empty;
    expect(audit.entries[0]).to.include({ shed: 'gamma', result: 'denied', detail: 'SHED_NOT_ALLOWED' });
  });

  it('admits any shed through "*"', async () => {
    const { send } = setup({ version: 1, sheds: { '*': {} } });
    expect(await send('gamma', { operation: 'list' })).to.deep.include({ shed_seen: 'gamma' });
  });

  it('refuses a namespace disabled by policy, and one this broker does not serve', async () => {
    const { send, seen } = setup();
    expect(await send('beta', { operation: 'list' })).to.include({ code: 'NAMESPACE_DISABLED' });
    expect(await send('alpha', { operation: 'get' }, 'docker-credentials')).to.include({ code: 'NAMESPACE_DISABLED' });
    expect(await send('alpha', { operation: 'get' }, 'system:secrets')).to.include({ code: 'NAMESPACE_DISABLED' });
    expect(seen).to.be.empty;
  });

  it('refuses a request without an operation, and one whose id is not a UUIDv7', async () => {
    const { send, dispatcher } = setup();
    expect(await send('alpha', {})).to.include({ code: 'INVALID_REQUEST' });
    const bad = await dispatcher.dispatch({ ...requestEnvelope('ssh-agent', { operation: 'list' }), id: 'nope' }, 'alpha');
    expect(bad).to.include({ code: 'INVALID_REQUEST' });
    expect(String(bad!.error)).to.match(/UUIDv7/);
  });

  it('answers each request id at most once', async () => {
    const { dispatcher, seen, audit, log } = setup();
    const envelope = requestEnvelope('ssh-agent', { operation: 'list' });
    const [first, second] = await Promise.all([dispatcher.dispatch(envelope, 'alpha'), dispatcher.dispatch(envelope, 'alpha')]);
    expect(first).to.deep.include({ shed_seen: 'alpha' });
    expect(second).to.equal(undefined);
    expect(await dispatcher.dispatch(envelope, 'alpha')).to.equal(undefined);
    expect(seen).to.have.length(1);
    expect(audit.entries.map((e) => e.detail)).to.include('DUPLICATE_REQUEST');
    expect(log.lines.join('\n')).to.match(/seen already/);
  });

  it('ignores events and responses', async () => {
    const { dispatcher, seen } = setup();
    expect(await dispatcher.dispatch(requestEnvelope('ssh-agent', { operation: 'list' }, undefined, 'event'), 'alpha')).to.equal(undefined);
    expect(seen).to.be.empty;
  });

  it('passes a handler\'s refusal on with its code, audited as denied', async () => {
    const { send, audit } = setup();
    expect(await send('alpha', { operation: 'refuse' })).to.deep.equal({ error: 'key not allowed for this shed', code: 'KEY_NOT_ALLOWED' });
    expect(audit.entries[0]).to.include({ result: 'denied', detail: 'SHA256:other' });
  });

  it('answers an unknown operation UNKNOWN_OPERATION (a newer guest, an older host)', async () => {
    const { send } = setup();
    expect(await send('alpha', { operation: 'teleport' })).to.include({ code: 'UNKNOWN_OPERATION' });
  });

  it('turns an unexpected error into INTERNAL_ERROR without its text reaching the guest or the log', async () => {
    const { send, log, audit } = setup();
    const answer = await send('alpha', { operation: 'explode' });
    expect(answer).to.include({ code: 'INTERNAL_ERROR' });
    const everything = JSON.stringify(answer) + log.lines.join('\n') + JSON.stringify(audit.entries);
    expect(everything).not.to.include('AKIAEXAMPLESECRET');
    expect(log.lines.join('\n')).to.match(/ssh-agent explode failed/);
  });

  it('denies rather than serve unaudited when audit.required is set and the log fails', async () => {
    const failing = { write: async (_e: AuditEntry) => { throw new Error('disk full'); } };
    const required = setup({ ...POLICY, audit: { required: true } }, failing as unknown as MemoryAudit);
    expect(await required.send('alpha', { operation: 'list' })).to.include({ code: 'AUDIT_UNAVAILABLE' });
    expect(required.log.lines.join('\n')).to.match(/audit log write failed.*disk full/);

    const optional = setup(POLICY, failing as unknown as MemoryAudit);
    expect(await optional.send('alpha', { operation: 'list' })).to.deep.include({ shed_seen: 'alpha' });
  });

  it('keeps the audit.required of the policy a request started under, when a reload lands meanwhile', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow: NamespaceHandler = { namespace: 'ssh-agent', async handle() { await gate; return { done: true }; } };
    const failing = { write: async (_e: AuditEntry) => { throw new Error('disk full'); } };
    let policy = policyFromDocument({ ...POLICY, audit: { required: true } });
    const dispatcher = new Dispatcher({ policy: () => policy, handlers: [slow], audit: failing, log: memoryLogger() });
    const answer = dispatcher.dispatch(requestEnvelope('ssh-agent', { operation: 'list' }), 'alpha');
    await new Promise((r) => setTimeout(r, 20));
    policy = policyFromDocument(POLICY); // the reload: audit no longer required
    release();
    expect(await answer).to.include({ code: 'AUDIT_UNAVAILABLE' });
    // The next request runs under the new policy and is served unaudited, loudly.
    expect(await dispatcher.dispatch(requestEnvelope('ssh-agent', { operation: 'list' }), 'alpha')).to.deep.equal({ done: true });
  });

  it('says so in status answers while the audit log is failing, without the host\'s error text', async () => {
    const sink = { lastError: undefined as string | undefined, write: async (_e: AuditEntry) => undefined };
    const { send } = setup(POLICY, sink as unknown as MemoryAudit);
    expect(await send('alpha', { operation: 'status' })).to.deep.equal({ connected: true });
    sink.lastError = 'ENOSPC: no space left on device, write /home/dev/.local/share/shed/extensions-audit.log';
    const answer = await send('alpha', { operation: 'status' });
    expect(answer).to.deep.equal({ connected: true, audit: 'failing' });
  });
});

describe('dedupe window', () => {
  it('forgets ids after the window and keeps at most perShed of each shed', () => {
    let now = 0;
    const window = new DedupeWindow({ windowMs: 1000, perShed: 3, now: () => now });
    expect(window.take('alpha', 'a')).to.equal(true);
    expect(window.take('alpha', 'a')).to.equal(false);
    now = 1000;
    expect(window.take('alpha', 'a')).to.equal(true);
    for (const id of ['b', 'c', 'd', 'e']) window.take('alpha', id);
    expect(window.size).to.equal(3);
    expect(window.take('alpha', 'e')).to.equal(false);
  });

  it('keys ids by shed: one shed flooding ids pushes out only its own', () => {
    const window = new DedupeWindow({ windowMs: 60_000, perShed: 100 });
    expect(window.take('beta', 'kept')).to.equal(true);
    for (let i = 0; i < 10_000; i++) window.take('alpha', `flood-${i}`);
    expect(window.take('beta', 'kept')).to.equal(false);
    // The same id from another shed is another request.
    expect(window.take('alpha', 'kept')).to.equal(true);
    expect(window.size).to.equal(101);
  });
});
