/**
 * Reading shed's client config (~/.shed/config.yaml, PROTOCOL.md 3b) into
 * server connections, and refusing what is not one: hostile host names,
 * names that are not shed names, YAML bombs, files that are not a config.
 */
import { expect } from 'chai';
import os from 'node:os';
import path from 'node:path';
import { defaultClientName, parseShedConfig } from '../../host-broker/transports/discovery.js';
import type { DiscoverySpec } from '../../host-broker/transports/server-config.js';

const pin = `sha256:${'c0'.repeat(32)}`;
const spec: DiscoverySpec = { source: '/home/u/.shed/config.yaml', servers: 'all', bootstrap: { identityFile: '/k/id', knownHosts: '/k/kh', clientName: 'laptop' } };

describe('parseShedConfig', () => {
  it('makes the bus URL from api_url, else host and http_port; a secure server mints over its ssh_port; control_token is never used', () => {
    const text = `
default_server: mini2
servers:
  mini2:
    host: mini2.local
    ssh_port: 2223
    http_port: 8080
    api_url: https://mini2.local:8443
    tls_cert_fingerprint: ${pin}
    control_token: shed_control_SECRETSECRETSECRET
    control_token_expires_at: 2026-06-15T00:00:00Z
  local:
    host: 127.0.0.1
    http_port: 9090
  bare:
    host: devbox
sheds: { anything: [1, 2] }
`;
    const servers = parseShedConfig(text, spec);
    expect(servers).to.deep.equal([
      { name: 'bare', policyScope: 'bare', url: 'http://devbox:8080' },
      { name: 'local', policyScope: 'local', url: 'http://127.0.0.1:9090' },
      {
        name: 'mini2',
        policyScope: 'mini2',
        url: 'https://mini2.local:8443',
        tlsPin: pin,
        token: { kind: 'bootstrap', host: 'mini2.local', port: 2223, user: '_bootstrap', identityFile: '/k/id', knownHosts: '/k/kh', clientName: 'laptop' },
      },
    ]);
    expect(JSON.stringify(servers)).not.to.include('SECRET');
  });

  it('selects the named servers only; defaults: ssh_port 2222, ~/.ssh/id_ed25519, ~/.shed/known_hosts, the host name', () => {
    const text = 'servers:\n  a: { api_url: "https://a.example:8443" }\n  b: { host: b }\n  c: { host: "not valid!" }\n';
    const servers = parseShedConfig(text, { source: 'x', servers: ['a', 'b'] });
    expect(servers.map((s) => s.name)).to.deep.equal(['a', 'b']);
    expect(servers[0]!.token).to.deep.equal({
      kind: 'bootstrap',
      host: 'a.example',
      port: 2222,
      user: '_bootstrap',
      identityFile: path.join(os.homedir(), '.ssh/id_ed25519'),
      knownHosts: path.join(os.homedir(), '.shed/known_hosts'),
      clientName: defaultClientName(),
    });
    expect(defaultClientName('My Laptop.local')).to.equal('My-Laptop.local');
    expect(defaultClientName('--')).to.equal('shed-host-agent');
  });

  it('an empty file, or one without servers, lists none', () => {
    expect(parseShedConfig('', spec)).to.deep.equal([]);
    expect(parseShedConfig('default_server: x\n', spec)).to.deep.equal([]);
    expect(parseShedConfig('servers:\n', spec)).to.deep.equal([]);
  });

  it('refuses a hostile or malformed file as a whole, naming each problem and quoting nothing secret', () => {
    const cases: [string, RegExp][] = [
      ['servers: [1, 2]', /servers must be a mapping of server names/],
      ['- a\n- b', /must hold a mapping with a servers: section/],
      ['servers:\n  a: {host: x\n', /is not valid YAML at line \d+, column \d+/],
      ['servers:\n  a: {host: x}\n  a: {host: y}\n', /is not valid YAML/],
      ['servers:\n  mini: { host: "-oProxyCommand=touch /tmp/pwned" }', /servers\.mini: host "-oProxyCommand=touch \/tmp\/pwned" is not a host name or address/],
      ['servers:\n  mini: { api_url: "https://-oProxyCommand=x:8443" }', /servers\.mini: (api_url is not a URL|host .* is not a host name)/],
      ['servers:\n  mini: { host: "h", http_port: 99999 }', /http_port must be a TCP port/],
      ['servers:\n  mini: { host: "h", ssh_port: "22; rm" }', /ssh_port must be a TCP port/],
      ['servers:\n  mini: { api_url: "file:///etc/passwd" }', /api_url must be http:\/\/ or https:\/\//],
      ['servers:\n  mini: { api_url: "https://user:pw@h:8443" }', /api_url must not hold a user name or password/],
      ['servers:\n  mini: { api_url: "https://h:8443", tls_cert_fingerprint: "md5:aa" }', /tls_cert_fingerprint must be sha256:<64 hex digits/],
      ['servers:\n  "Bad Name": { host: h }', /servers\.Bad Name: a server name is lowercase letters/],
      ['servers:\n  "x\\u001b[2J": { host: h }', /servers\.x\\x1b\[2J: a server name/],
      ['servers:\n  mini: "h"', /servers\.mini: must be a mapping/],
      ['servers:\n  mini: { port: 1 }', /servers\.mini: has neither api_url nor host/],
    ];
    for (const [text, re] of cases) expect(() => parseShedConfig(text, spec), text).to.throw(re);
  });

  it('survives YAML bombs and deep nesting with an error, not a hang or a crash', () => {
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]', ...Array.from({ length: 8 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(9).fill(`*${String.fromCharCode(97 + i)}`).join(',')}]`), 'servers: { x: { host: h, extra: *i } }'].join('\n');
    const t0 = Date.now();
    expect(() => parseShedConfig(bomb, spec)).to.throw(/YAML/);
    expect(Date.now() - t0).to.be.below(2000);
    const deep = `servers: ${'['.repeat(20_000)}${']'.repeat(20_000)}`;
    expect(() => parseShedConfig(deep, spec)).to.throw(/YAML|servers must be a mapping/);
  });
});
