/**
 * Discovery end to end: servers listed in a temp `~/.shed/config.yaml` are
 * served by a ServerSet as the file is edited (created late, saved by
 * rename, broken, made hostile, servers removed), each server's requests
 * reaching the sink made for that server, with the same shed name on two
 * servers kept apart.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { DiscoveryWatcher } from '../../host-broker/transports/discovery.js';
import type { ServerConnection } from '../../host-broker/transports/server-config.js';
import { ServerSet } from '../../host-broker/transports/server-set.js';
import { envelopeOf, type RequestSink } from '../../host-broker/transports/transport.js';
import { memoryLogger } from '../../protocol/log.js';
import { FAST_TIMINGS, ShedServerFleet } from '../support/bus-emulator.js';
import { tempDir, waitFor } from '../support/procs.js';
import { startSecureShed, type SecureShed } from '../support/secure-shed.js';

/** What the lead's dispatcher will do, reduced: answer with the server the sink was made for. */
function sinkFor(server: ServerConnection): RequestSink {
  return (request, shed, reply) => {
    const envelope = envelopeOf(request);
    if (envelope) void reply({ server: server.name, shed, echo: envelope.payload.echo ?? null });
  };
}

function save(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.config.yaml.${process.pid}.tmp`);
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

describe('discovery of servers in ~/.shed/config.yaml', function () {
  this.timeout(60_000);
  const fleet = new ShedServerFleet();
  let set: ServerSet | undefined;
  let watcher: DiscoveryWatcher | undefined;
  let secure: SecureShed | undefined;

  afterEach(async () => {
    watcher?.stop();
    await set?.stop();
    await fleet.stop();
    await secure?.stop();
    watcher = undefined;
    set = undefined;
    secure = undefined;
  });

  const server = () => fleet.add('alpha', 3000);

  it('follows edits: a server added gets subscriptions within seconds, a removed one stops; a broken or hostile edit keeps the last good list', async () => {
    const one = await server();
    const two = await server();
    const home = tempDir('shed-home');
    const file = path.join(home, '.shed', 'config.yaml');
    const log = memoryLogger('shed-host-agent');
    set = new ServerSet({ log, sinkFor, defaultNamespaces: ['ssh-agent'], timings: FAST_TIMINGS });
    const updates: string[][] = [];
    watcher = new DiscoveryWatcher({
      spec: { source: file, servers: 'all' },
      log,
      debounceMs: 100,
      recheckMs: 500,
      onChange: (servers) => {
        updates.push(servers.map((s) => s.name));
        void set!.update(servers);
      },
    });
    // The directory does not exist yet.
    expect(watcher.start()).to.deep.equal([]);
    expect(log.lines.join('\n')).to.include(`discovery: ${file} does not exist: no servers found there (it is watched: servers added there later are picked up)`);

    fs.mkdirSync(path.dirname(file), { mode: 0o700 });
    const entry = (name: string, port: number) => `  ${name}:\n    host: 127.0.0.1\n    http_port: ${port}\n    ssh_port: 2222\n`;
    save(file, `default_server: one\nservers:\n${entry('one', one.port)}`);
    await waitFor(() => one.emulator.listenerNamespaces().length === 1, 5000, 'server one to be subscribed');
    expect(await one.guest.publish('ssh-agent', { operation: 'list', echo: 1 })).to.deep.equal({ server: 'one', shed: 'alpha', echo: 1 });

    const t0 = Date.now();
    save(file, `servers:\n${entry('one', one.port)}${entry('two', two.port)}`);
    await waitFor(() => two.emulator.listenerNamespaces().length === 1, 5000, 'server two to be subscribed');
    expect(Date.now() - t0).to.be.below(5000);
    // The same shed name on two servers: each request answered by its own server's sink.
    expect(await two.guest.publish('ssh-agent', { operation: 'list', echo: 2 })).to.deep.equal({ server: 'two', shed: 'alpha', echo: 2 });
    expect(await one.guest.publish('ssh-agent', { operation: 'list', echo: 3 })).to.deep.equal({ server: 'one', shed: 'alpha', echo: 3 });
    expect(set.state()).to.deep.equal({ one: { 'ssh-agent': 'connected' }, two: { 'ssh-agent': 'connected' } });

    // A broken save, then a hostile one: the two servers stay.
    save(file, 'servers:\n  one: {host: 127.0.0.1\n');
    await waitFor(() => log.lines.some((l) => /ERROR discovery: .* is not valid YAML at line \d+, column \d+: .*; keeping the 2 servers read before/.test(l)), 5000, 'the broken file to be reported');
    save(file, `servers:\n${entry('one', one.port)}  evil:\n    host: "-oProxyCommand=touch ${home}/pwned"\n    api_url: https://x:8443\n`);
    await waitFor(() => log.lines.some((l) => /servers\.evil: host .* is not a host name or address; keeping the 2 servers read before/.test(l)), 5000, 'the hostile file to be reported');
    expect(fs.existsSync(path.join(home, 'pwned'))).to.equal(false);
    expect(set.names).to.deep.equal(['one', 'two']);
    expect(updates).to.deep.equal([['one'], ['one', 'two']]);

    const t1 = Date.now();
    save(file, `servers:\n${entry('two', two.port)}`);
    await waitFor(() => one.emulator.listenerNamespaces().length === 0, 5000, 'server one to be let go');
    expect(Date.now() - t1).to.be.below(5000);
    await waitFor(() => set!.names.length === 1, 2000, 'the set to follow');
    expect(set.state()).to.deep.equal({ two: { 'ssh-agent': 'connected' } });
    expect(log.lines.join('\n')).to.include(`server one: no longer listed, stopping (${one.emulator.url})`);
    expect(await two.guest.publish('ssh-agent', { operation: 'list', echo: 4 })).to.deep.equal({ server: 'two', shed: 'alpha', echo: 4 });

    // An edit to a server's settings restarts it at the new address.
    const three = await server();
    save(file, `servers:\n${entry('two', three.port)}`);
    await waitFor(() => three.emulator.listenerNamespaces().length === 1 && two.emulator.listenerNamespaces().length === 0, 5000, 'two to move');
    expect(await three.guest.publish('ssh-agent', { operation: 'list', echo: 5 })).to.deep.equal({ server: 'two', shed: 'alpha', echo: 5 });
  });

  it('a secure server found there mints as _bootstrap over its ssh_port with the spec\'s identity and known_hosts, never with the CLI\'s control_token', async () => {
    secure = await startSecureShed();
    const home = tempDir('shed-home');
    const file = path.join(home, 'config.yaml');
    const control = 'shed_control_TheCliOwnTokenNotForTheBus0123456789';
    save(file, [
      'servers:',
      '  mini2:',
      '    host: 127.0.0.1',
      `    ssh_port: ${secure.sshd.port}`,
      `    api_url: ${secure.server.url}`,
      `    tls_cert_fingerprint: ${secure.certificate.fingerprint}`,
      `    control_token: ${control}`,
      '',
    ].join('\n'));
    const log = memoryLogger('shed-host-agent');
    set = new ServerSet({ log, sinkFor, defaultNamespaces: ['ssh-agent'], timings: FAST_TIMINGS });
    watcher = new DiscoveryWatcher({
      spec: { source: file, servers: 'all', bootstrap: { identityFile: secure.identity.file, knownHosts: secure.knownHosts, clientName: 'disco' } },
      log,
      onChange: (servers) => void set!.update(servers),
    });
    const servers = watcher.start();
    expect(servers[0]!.token).to.deep.include({ kind: 'bootstrap', user: '_bootstrap', port: secure.sshd.port, clientName: 'disco' });
    await set.update(servers);
    // This sshd lets only root in (there is no _bootstrap account here): ssh was run with the discovered settings and was refused.
    await waitFor(() => /Permission denied/.test(set!.state().mini2?.['ssh-agent'] ?? ''), 10_000, 'the refused mint');
    expect(set.state().mini2!['ssh-agent']).to.match(/^reconnecting: cannot get a token from servers\.mini2\.bootstrap \(ssh _bootstrap@127\.0\.0\.1 port \d+\): ssh exited with status 255: _bootstrap@127\.0\.0\.1: Permission denied \(publickey\)\.; the server does not accept .*bootstrap_ed25519 for _bootstrap: add its public key to the server's bootstrap allowlist/);
    expect(secure.server.calls).to.deep.equal([]);
    expect(secure.server.authorizations.filter((a) => a?.includes(control))).to.deep.equal([]);
    expect(log.lines.join('\n')).not.to.include(control);
  });
});
