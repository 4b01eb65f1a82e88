/**
 * One broker, many shed servers: the servers of a temp `~/.shed/config.yaml`
 * (discovery) served as the file is edited, each server's sheds their own
 * namespace of names with the policy's `servers.<name>` layer over the
 * global one, and every audit line naming its server. The shed servers are
 * stand-ins that follow PROTOCOL.md (tests/support/bus-emulator.ts); the
 * guests publish through stand-in shed-agents.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { parseAuditLine } from '../../host-broker/audit/audit.js';
import { Broker } from '../../host-broker/broker.js';
import type { NamespaceHandler } from '../../host-broker/handler.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import { statusAnswer } from '../../host-broker/status/snapshot.js';
import { memoryLogger } from '../../protocol/log.js';
import { FAST_TIMINGS, ShedServerFleet } from '../support/bus-emulator.js';
import { tempDir, waitFor } from '../support/procs.js';

/** Answers with what the broker decided: the shed's key and the registries its policy allows. */
const docker: NamespaceHandler = {
  namespace: 'docker-credentials',
  operations: ['list'],
  async handle(_operation, _payload, ctx) {
    return { shed: ctx.shed, registries: ctx.policy.docker.registries };
  },
};

function save(file: string, text: string): void {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

describe('one broker, many shed servers (discovery and servers.<name>)', function () {
  this.timeout(60_000);
  const fleet = new ShedServerFleet();
  let broker: Broker | undefined;

  afterEach(async () => {
    await broker?.stop();
    broker = undefined;
    await fleet.stop();
  });

  /** A stand-in shed server with shed `web` connected, and web's guest client. */
  const server = async () => {
    const { guest, ...rest } = await fleet.add('web', 5000);
    return { ...rest, web: guest };
  };

  it('serves the servers config.yaml lists as it changes; the same shed name on two servers is two sheds, each under its own policy and audit file', async () => {
    const one = await server();
    const two = await server();
    const home = tempDir('shed-ms');
    const file = path.join(home, 'config.yaml');
    const auditDir = path.join(home, 'audit');
    const entry = (name: string, port: number) => `  ${name}:\n    host: 127.0.0.1\n    http_port: ${port}\n    control_token: shed_control_notForTheBus\n`;
    save(file, `servers:\n${entry('one', one.port)}`);
    const log = memoryLogger('shed-host-agent');
    const policy = policyFromDocument({
      version: 1,
      discovery: { source: file },
      audit: { dir: auditDir },
      sheds: { web: { docker: { registries: ['ghcr.io'] } } },
      servers: { two: { sheds: { web: { docker: { registries: ['registry.two.example'] } } } } },
    });
    broker = new Broker({ loadPolicy: () => policy, log, handlers: [docker], shedServerTimings: FAST_TIMINGS, stateDir: path.join(home, 'state') });
    await broker.start();
    expect(one.emulator.listenerNamespaces()).to.deep.equal(['docker-credentials']);
    expect(two.emulator.listenerNamespaces()).to.deep.equal([]);
    expect(await one.web.publish('docker-credentials', { operation: 'list' })).to.deep.equal({ shed: 'web@one', registries: ['ghcr.io'] });

    // A server added to config.yaml is served within seconds, its sheds under servers.two's layer.
    const t0 = Date.now();
    save(file, `servers:\n${entry('one', one.port)}${entry('two', two.port)}`);
    await waitFor(() => two.emulator.listenerNamespaces().length === 1, 10_000, 'server two to be subscribed');
    expect(Date.now() - t0, 'ms until the new server was served').to.be.below(10_000);
    expect(await two.web.publish('docker-credentials', { operation: 'list' })).to.deep.equal({ shed: 'web@two', registries: ['registry.two.example'] });
    expect(broker.servers.map((s) => [s.name, s.state()])).to.deep.equal([
      ['one', { 'docker-credentials': 'connected' }],
      ['two', { 'docker-credentials': 'connected' }],
    ]);
    // What `shed-host-agent status` reports: both servers, and the gate of each named shed, by its key.
    const status = statusAnswer(broker, { configPath: file, startedAt: new Date().toISOString() });
    expect(status.servers.map((s) => [s.name, s.url, s.namespaces])).to.deep.equal([
      ['one', one.emulator.url, { 'docker-credentials': 'connected' }],
      ['two', two.emulator.url, { 'docker-credentials': 'connected' }],
    ]);
    expect(status.approvals.map((a) => a.shed)).to.deep.equal(['web', 'web@two']);

    // One audit file per shed of each server, each line naming its server.
    await waitFor(() => fs.existsSync(path.join(auditDir, 'web@two.log')), 5000, 'the audit line of web@two');
    expect(fs.readdirSync(auditDir).sort()).to.deep.equal(['web@one.log', 'web@two.log']);
    for (const server of ['one', 'two']) {
      const lines = fs.readFileSync(path.join(auditDir, `web@${server}.log`), 'utf8').trim().split('\n').map((l) => parseAuditLine(l)!);
      expect(lines.map((e) => [e.shed, e.server, e.ns, e.op, e.result])).to.deep.equal([[`web@${server}`, server, 'docker-credentials', 'list', 'ok']]);
    }
    // The CLI's control token never reaches a log.
    expect(log.lines.join('\n')).not.to.include('shed_control_notForTheBus');

    // A server removed from config.yaml is let go; the other keeps serving.
    save(file, `servers:\n${entry('two', two.port)}`);
    await waitFor(() => one.emulator.listenerNamespaces().length === 0, 10_000, 'server one to be let go');
    expect(broker.servers.map((s) => s.name)).to.deep.equal(['two']);
    expect(await two.web.publish('docker-credentials', { operation: 'list' })).to.deep.equal({ shed: 'web@two', registries: ['registry.two.example'] });
  });

  it('follows a policy reload: a server added under servers: with its url is served, one removed is let go', async () => {
    const one = await server();
    const two = await server();
    const home = tempDir('shed-ms');
    const doc = (servers: Record<string, unknown>) => ({ version: 1, audit: { dir: path.join(home, 'audit') }, sheds: { web: {} }, servers });
    let policy = policyFromDocument(doc({ one: { url: one.emulator.url } }));
    broker = new Broker({ loadPolicy: () => policy, log: memoryLogger('shed-host-agent'), handlers: [docker], shedServerTimings: FAST_TIMINGS, stateDir: path.join(home, 'state') });
    await broker.start();
    expect(await one.web.publish('docker-credentials', { operation: 'list' })).to.include({ shed: 'web@one' });
    policy = policyFromDocument(doc({ two: { url: two.emulator.url } }));
    expect(await broker.reload()).to.equal(undefined);
    await waitFor(() => two.emulator.listenerNamespaces().length === 1 && one.emulator.listenerNamespaces().length === 0, 10_000, 'the servers to follow the policy');
    expect(await two.web.publish('docker-credentials', { operation: 'list' })).to.include({ shed: 'web@two' });
  });
});
