/**
 * Re-delivery (PROTOCOL.md 3, "Ownership"): a secure-mode shed server keeps
 * un-answered requests for about an hour and re-sends them, oldest first,
 * to a listener that (re)subscribes. The broker answers each request id at
 * most once, across a restart too, and accepts a re-delivered request whose
 * id is most of an hour old.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { v7 as uuidv7 } from 'uuid';
import { BusClient } from '../../guest-services/bus-client.js';
import { MemoryAudit } from '../../host-broker/audit/audit.js';
import { Broker } from '../../host-broker/broker.js';
import type { NamespaceHandler, RequestContext } from '../../host-broker/handler.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import { ShedServerTransport } from '../../host-broker/transports/shed-server.js';
import type { Envelope, Payload } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { nowTimestamp } from '../../protocol/messages.js';
import { FAST_TIMINGS, ShedAgentEmulator } from '../support/bus-emulator.js';
import { tempDir, waitFor } from '../support/procs.js';
import { startSecureShed, type SecureShed } from '../support/secure-shed.js';

function recorder(): NamespaceHandler & { seen: string[] } {
  const seen: string[] = [];
  return {
    namespace: 'ssh-agent',
    seen,
    async handle(operation: string, payload: Payload, ctx: RequestContext) {
      seen.push(ctx.requestId);
      return { shed: ctx.shed, echo: payload.echo ?? null };
    },
  };
}

describe('re-delivery after a reconnect and across a broker restart', function () {
  this.timeout(60_000);
  let shed: SecureShed | undefined;
  let agent: ShedAgentEmulator | undefined;
  const brokers: Broker[] = [];
  afterEach(async () => {
    for (const b of brokers.splice(0)) await b.stop();
    await agent?.stop();
    await shed?.stop();
    shed = undefined;
    agent = undefined;
  });

  async function setup() {
    shed = await startSecureShed({ ttlMs: 600_000 });
    shed.server.connectShed('alpha');
    agent = new ShedAgentEmulator(shed.server, 'alpha');
    await agent.start();
    const dir = tempDir('shed-rd');
    const tokenFile = path.join(dir, 'token');
    fs.writeFileSync(tokenFile, shed.authority.mint('credentials', 'rd').token as string, { mode: 0o600 });
    const stateDir = path.join(dir, 'state');
    const handler = recorder();
    const start = async () => {
      const log = memoryLogger('shed-host-agent');
      const broker = new Broker({
        loadPolicy: () => policyFromDocument({ version: 1, direct: { enabled: false }, sheds: { alpha: {} } }),
        log,
        audit: new MemoryAudit(),
        handlers: [handler],
        stateDir,
        transports: [new ShedServerTransport({
          server: { name: 'default', url: shed!.server.url, tlsPin: shed!.certificate.fingerprint, namespaces: ['ssh-agent'], token: { kind: 'file', path: tokenFile } },
          log,
          timings: FAST_TIMINGS,
        })],
      });
      brokers.push(broker);
      await broker.start();
      return { broker, log };
    };
    return { handler, start, stateDir };
  }

  async function stop(broker: Broker): Promise<void> {
    brokers.splice(brokers.indexOf(broker), 1);
    await broker.stop();
  }

  it('a request whose answer was lost is not served again by the restarted broker; one sent while it was down is served once', async () => {
    const { handler, start, stateDir } = await setup();
    const first = await start();
    const guest = new BusClient({ publishUrl: agent!.url, deadlineMs: 20_000 });
    try {
      // Its answer does not get through (503 on every try): shed-server still holds it.
      shed!.server.failRespondsFor(1000);
      const lost = guest.publish('ssh-agent', { operation: 'list', echo: 'lost' }).then(() => 'answered', (e: Error) => e.message);
      await waitFor(() => first.log.lines.some((l) => l.includes('could not deliver the answer')), 5000, 'the answer to be given up');
      const lostId = handler.seen[0]!;
      expect(shed!.server.isPending(lostId)).to.equal(true);
      shed!.server.failRespondsFor(0);
      await stop(first.broker);
      const remembered = JSON.parse(fs.readFileSync(path.join(stateDir, 'answered-ids.json'), 'utf8')) as { ids: [string, string, number][] };
      expect(remembered.ids.map((e) => [e[0], e[1]])).to.deep.equal([['alpha', lostId]]);

      // Sent while no broker runs.
      const later = guest.publish('ssh-agent', { operation: 'list', echo: 'later' });
      await waitFor(() => shed!.server.pendingIds().length === 2, 3000, 'the guest request to be pending');
      const second = await start();
      expect(await later).to.deep.equal({ shed: 'alpha', echo: 'later' });
      // Both pending requests were re-sent on the subscription, oldest first.
      const redelivered = shed!.server.redelivered.slice(-2);
      expect(redelivered[0]).to.equal(lostId);
      expect(redelivered[1]! > lostId).to.equal(true);
      // The lost one was taken before the restart: the handler ran once for it, and nothing was answered twice.
      expect(handler.seen.filter((id) => id === lostId)).to.have.length(1);
      expect(handler.seen).to.have.length(2);
      await waitFor(() => second.log.lines.some((l) => l.includes(`request ${lostId} on ssh-agent seen already; not answering it twice`)), 3000, 'the duplicate to be noticed');
      expect(shed!.server.responseCount(lostId)).to.equal(0);
      expect(shed!.server.violations).to.deep.equal([]);
      await stop(second.broker);
      expect(await Promise.race([lost, new Promise((r) => setTimeout(() => r('still waiting'), 50))])).to.equal('still waiting');
    } finally {
      guest.close();
    }
  });

  it('accepts a re-delivered request whose id is 50 minutes old (pending since before the broker started) and answers it once', async () => {
    const { handler, start } = await setup();
    const old: Envelope = { id: uuidv7({ msecs: Date.now() - 50 * 60_000 }), namespace: 'ssh-agent', type: 'request', final: true, timestamp: nowTimestamp(), payload: { operation: 'list', echo: 'old' } };
    // Pending at shed-server since before the broker started.
    const answer = shed!.server.fromShed('alpha', old);
    await start();
    const response = await answer;
    expect(response?.payload).to.deep.equal({ shed: 'alpha', echo: 'old' });
    expect(handler.seen).to.deep.equal([old.id]);
    expect(shed!.server.responseCount(old.id)).to.equal(1);
  });

  it('re-delivered on a reconnect of the stream (no restart): the handler runs once, shed-server sees one answer', async () => {
    const { handler, start } = await setup();
    const { log } = await start();
    const guest = new BusClient({ publishUrl: agent!.url, deadlineMs: 10_000 });
    try {
      shed!.server.failRespondsFor(1000);
      const pending = guest.publish('ssh-agent', { operation: 'list', echo: 'x' });
      await waitFor(() => log.lines.some((l) => l.includes('could not deliver the answer')), 5000, 'the answer to be given up');
      shed!.server.failRespondsFor(0);
      const id = handler.seen[0]!;
      shed!.server.dropStreams();
      await waitFor(() => shed!.server.redelivered.includes(id), 5000, 'the re-delivery');
      await waitFor(() => log.lines.some((l) => l.includes(`request ${id} on ssh-agent seen already`)), 3000, 'the duplicate to be noticed');
      expect(handler.seen).to.deep.equal([id]);
      expect(shed!.server.responseCount(id)).to.equal(0);
      void pending.catch(() => undefined);
    } finally {
      guest.close();
    }
  });
});
