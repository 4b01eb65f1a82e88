import { expect } from 'chai';
import * as z from 'zod/mini';
import { AwsCredentialsResponse } from '../../protocol/aws-credentials.js';
import { COMPILE_AFTER, compiledOnceHot, compileHotSchemas } from '../../protocol/compiled.js';
import { DockerGetRequest } from '../../protocol/docker-credentials.js';
import { Envelope } from '../../protocol/envelope.js';
import { requestEnvelope } from '../../protocol/messages.js';
import { SshBindRequest, SshListResponse, SshSignRequest, SshSignResponse } from '../../protocol/ssh-agent.js';

const envelope = requestEnvelope('ssh-agent', { operation: 'sign', data: 'AAAA' }, { name: 'alpha', backend: 'direct-socket' });

/** Values each schema must judge the same way compiled as interpreted: accepted ones (with defaults filled in), refused ones. */
const CASES: Array<[string, z.ZodMiniType, unknown[]]> = [
  ['Envelope', Envelope, [
    envelope,
    { ...envelope, final: undefined, in_reply_to: 'x' },
    { ...envelope, shed: { name: 'alpha', backend: 'x', extra: { kept: true } } },
    { ...envelope, id: 'not-a-uuid' },
    { ...envelope, namespace: '' },
    { ...envelope, namespace: 'n'.repeat(129) },
    { ...envelope, type: 'other' },
    { ...envelope, payload: [] },
    { ...envelope, payload: null },
    { ...envelope, shed: { name: 'Not A Shed' } },
    { ...envelope, timestamp: 7 },
    { ...envelope, final: 'true' },
    { ...envelope, shed: null },
    JSON.parse(`{"__proto__":{"polluted":true},${JSON.stringify(envelope).slice(1)}`),
    { ...envelope, payload: JSON.parse('{"__proto__":{"operation":"sign"}}') },
    null, 'text', [],
  ]],
  ['SshSignRequest', SshSignRequest, [
    { public_key: 'AAAA', data: 'YWJj' },
    { public_key: 'AAAA', data: '', flags: 4, extra: 1 },
    { public_key: '', data: 'YWJj' },
    { public_key: 'AAAA', data: 'not base64!' },
    { public_key: 'AAAA', data: 'YWJj', flags: -1 },
    { public_key: 'AAAA', data: 'YWJj', flags: 1.5 },
    { public_key: 'AAAA', data: 'YWJj', flags: '2' },
    { public_key: 'AAAA', data: 'YWJj', flags: Infinity },
    { public_key: 'AAAA', data: 'YWJj', flags: Number.NaN },
    { public_key: 'AAAA', data: 'YWJj', flags: 2 ** 53 },
    { public_key: ['AAAA'], data: 'YWJj' },
    JSON.parse('{"public_key":"AAAA","data":"YWJj","__proto__":{"flags":4}}'),
    { data: 'YWJj' },
  ]],
  ['SshSignResponse', SshSignResponse, [
    { format: 'ssh-ed25519', blob: 'AAAA' },
    { format: 'rsa-sha2-512', blob: 'AAAA', rest: 'x' },
    { format: 'ssh-ed25519', blob: '%%' },
    { format: 1, blob: 'AAAA' },
  ]],
  ['SshListResponse', SshListResponse, [
    { keys: [] },
    { keys: [{ format: 'ssh-ed25519', blob: 'AAAA', comment: 'me@host' }] },
    { keys: [{ format: 'ssh-ed25519', blob: 'AAAA' }] },
    { keys: {} },
  ]],
  ['SshBindRequest', SshBindRequest, [
    { hostkey: 'AAAA', session_id: 'AAAA', signature: 'AAAA' },
    { hostkey: 'AAAA', session_id: 'AAAA', signature: 'AAAA', is_forwarding: true },
    { hostkey: 'AAAA', session_id: '', signature: 'AAAA' },
    { hostkey: 'AAAA', session_id: 'AAAA', signature: 'AAAA', is_forwarding: 'yes' },
  ]],
  ['AwsCredentialsResponse', AwsCredentialsResponse, [
    { access_key_id: 'a', secret_access_key: 'b', session_token: 'c', expiration: 'd' },
    { access_key_id: 'a', secret_access_key: '', session_token: 'c', expiration: 'd' },
    { access_key_id: 'a', secret_access_key: 'b', session_token: 'c' },
  ]],
  ['DockerGetRequest', DockerGetRequest, [
    { server_url: 'registry.example.com' },
    { server_url: '' },
    { server_url: 'x'.repeat(2049) },
    {},
  ]],
];

describe('schemas compiled once hot', () => {
  before(() => compileHotSchemas(z.compile));

  for (const [name, schema, values] of CASES) {
    it(`${name}: the compiled parser judges every value as the schema does`, () => {
      const hot = compiledOnceHot(schema);
      for (let i = 0; i < COMPILE_AFTER; i++) hot.safeParse(values[0]);
      expect(hot.compiled).to.equal(true);
      for (const value of values) {
        const expected = schema.safeParse(value);
        const got = hot.safeParse(value);
        expect(got.success, JSON.stringify(value)).to.equal(expected.success);
        if (expected.success) expect(got.data, JSON.stringify(value)).to.deep.equal(expected.data);
        else expect(got.error!.issues, JSON.stringify(value)).to.deep.equal(expected.error!.issues);
      }
    });
  }

  it('every schema on a request path compiles whole (none falls back to the interpreter for good)', () => {
    for (const [name, schema] of CASES) expect(() => z.compile(schema, { strict: true }), name).not.to.throw();
  });

  it('interprets until the schema has parsed COMPILE_AFTER values', () => {
    const hot = compiledOnceHot(SshSignResponse);
    for (let i = 1; i < COMPILE_AFTER; i++) {
      expect(hot.safeParse({ format: 'x', blob: 'AAAA' }).success).to.equal(true);
      expect(hot.compiled).to.equal(false);
    }
    hot.safeParse({});
    expect(hot.compiled).to.equal(true);
  });
});
