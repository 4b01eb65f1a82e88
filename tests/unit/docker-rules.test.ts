import { expect } from 'chai';
import { isRegistryHost, normalizeRegistry, patternMatches, registryDecision, serverAddressFor } from '../../host-broker/docker/rules.js';
import type { EffectiveDocker } from '../../host-broker/policy/effective.js';

const docker = (over: Partial<EffectiveDocker> = {}): EffectiveDocker => ({ enabled: true, registries: [], allow_all: false, ...over });

describe('docker rules: normalizeRegistry', () => {
  const cases: Array<[string, string]> = [
    // Docker Hub, every spelling.
    ['https://index.docker.io/v1/', 'docker.io'],
    ['https://index.docker.io/v1', 'docker.io'],
    ['index.docker.io', 'docker.io'],
    ['docker.io', 'docker.io'],
    ['registry-1.docker.io', 'docker.io'],
    ['https://registry-1.docker.io/v2/', 'docker.io'],
    ['DOCKER.IO', 'docker.io'],
    // Scheme, trailing slash and /v1, /v2 (any path) dropped.
    ['https://ghcr.io', 'ghcr.io'],
    ['https://ghcr.io/', 'ghcr.io'],
    ['http://ghcr.io/v2/', 'ghcr.io'],
    ['ghcr.io/v1/', 'ghcr.io'],
    ['ghcr.io/owner/image', 'ghcr.io'],
    ['  ghcr.io\n', 'ghcr.io'],
    ['HTTPS://GHCR.IO/', 'ghcr.io'],
    // Ports kept, never confused with another registry.
    ['127.0.0.1:5000', '127.0.0.1:5000'],
    ['https://registry.example.com:5000/v2/', 'registry.example.com:5000'],
    ['docker.io:443', 'docker.io:443'],
    ['localhost:5000', 'localhost:5000'],
    ['[::1]:5000', '[::1]:5000'],
  ];
  for (const [input, expected] of cases) {
    it(`${JSON.stringify(input)} → ${expected}`, () => {
      expect(normalizeRegistry(input)).to.equal(expected);
    });
  }

  it('leaves garbage recognizable as not a host', () => {
    for (const bad of ['', 'user@ghcr.io', 'ghcr.io:abc', 'gh cr.io', 'ghcr.io:99999', '-bad.io', 'a..b', '*.example.com']) {
      expect(isRegistryHost(normalizeRegistry(bad)), bad).to.equal(false);
    }
    for (const good of ['ghcr.io', '127.0.0.1:5000', 'localhost', '[::1]:5000', 'a-b.c-d.io:1']) {
      expect(isRegistryHost(normalizeRegistry(good)), good).to.equal(true);
    }
  });

  it('asks host helpers for Docker Hub under the address docker login stores', () => {
    expect(serverAddressFor('docker.io')).to.equal('https://index.docker.io/v1/');
    expect(serverAddressFor('ghcr.io')).to.equal('ghcr.io');
    expect(serverAddressFor('127.0.0.1:5000')).to.equal('127.0.0.1:5000');
  });
});

describe('docker rules: registryDecision', () => {
  it('allows exact entries, normalizing the policy entry too', () => {
    expect(registryDecision(docker({ registries: ['ghcr.io'] }), 'ghcr.io')).to.deep.include({ allowed: true });
    expect(registryDecision(docker({ registries: ['index.docker.io'] }), 'docker.io').allowed).to.equal(true);
    expect(registryDecision(docker({ registries: ['docker.io'] }), normalizeRegistry('https://index.docker.io/v1/')).allowed).to.equal(true);
  });

  it('refuses what the list does not cover, with the code and the rule', () => {
    const d = registryDecision(docker({ registries: ['ghcr.io'] }), 'quay.io');
    expect(d).to.include({ allowed: false, code: 'REGISTRY_NOT_ALLOWED' });
    expect(d.rule).to.contain('quay.io');
    expect(registryDecision(docker(), 'ghcr.io')).to.include({ allowed: false, code: 'REGISTRY_NOT_ALLOWED' });
  });

  it('matches ports exactly', () => {
    expect(registryDecision(docker({ registries: ['registry.example.com'] }), 'registry.example.com:5000').allowed).to.equal(false);
    expect(registryDecision(docker({ registries: ['registry.example.com:5000'] }), 'registry.example.com').allowed).to.equal(false);
    expect(registryDecision(docker({ registries: ['registry.example.com:5000'] }), 'registry.example.com:5000').allowed).to.equal(true);
    expect(registryDecision(docker({ registries: ['127.0.0.1:5000'] }), '127.0.0.1:5001').allowed).to.equal(false);
  });

  it('wildcards cover names below the domain, not the domain or look-alikes', () => {
    const d = docker({ registries: ['*.example.com'] });
    expect(registryDecision(d, 'registry.example.com')).to.deep.include({ allowed: true, rule: 'registries entry *.example.com covers registry.example.com' });
    expect(registryDecision(d, 'a.b.example.com').allowed).to.equal(true);
    expect(registryDecision(d, 'example.com').allowed).to.equal(false);
    expect(registryDecision(d, 'evilexample.com').allowed).to.equal(false);
    expect(registryDecision(d, 'example.com.evil.io').allowed).to.equal(false);
    expect(registryDecision(d, 'registry.example.com:5000').allowed).to.equal(false);
    expect(patternMatches('*.example.com:5000', 'registry.example.com:5000')).to.equal(true);
    expect(patternMatches('*.example.com:5000', 'registry.example.com')).to.equal(false);
  });

  it('allow_all allows any valid host but not garbage', () => {
    expect(registryDecision(docker({ allow_all: true }), 'quay.io')).to.deep.equal({ allowed: true, rule: 'allow_all is true' });
    expect(registryDecision(docker({ allow_all: true }), 'user@quay.io')).to.include({ allowed: false, code: 'INVALID_REQUEST' });
  });

  it('a disabled namespace allows nothing', () => {
    expect(registryDecision(docker({ enabled: false, allow_all: true }), 'ghcr.io')).to.include({ allowed: false, code: 'NAMESPACE_DISABLED' });
  });
});
