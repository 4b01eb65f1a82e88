/**
 * A hostile guest against the git-credentials surface, with the real
 * broker in its own process and real token commands behind it: thousands
 * of generated git-credentials requests on its bus socket, and generated
 * stdin for the guest's git-credential-shed (the shipped bundle). The
 * broker stays up and lets go of everything; another shed (alice) keeps
 * getting her own credentials in time; no token reaches a log, an audit
 * line, an error, or a shed the policy does not give it to.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { BusClient, BusError } from '../../guest-services/bus-client.js';
import { GitGetResponse } from '../../protocol/git-credentials.js';
import { bundleGitCredentialShed } from '../support/git-http.js';
import { auditOf, expectUnharmed, gitCredentialPayload, gitHelperInput, probeWhile, procStats, prng, startBrokerProcess, type BrokerProcess } from '../support/hostile.js';
import { run, tempDir, waitFor } from '../support/procs.js';

const SEED = Number(process.env.SHED_FUZZ_SEED ?? 0x617c);
const MALLORY_TOKEN = 'mal-SECRET-3e9b0c71';
const ALICE_TOKEN = 'alice-SECRET-5d2a8f46';
const MALLORY_HOST = 'git.mallory.example';
const ALICE_HOST = 'git.alice.example';
/** What a refusal of a hostile request may be: never INTERNAL_ERROR, never a hang. */
const REFUSALS = new Set(['INVALID_REQUEST', 'GIT_HOST_NOT_ALLOWED', 'UNKNOWN_OPERATION']);

describe('a hostile guest on the git-credentials surface', function () {
  this.timeout(240_000);
  let broker: BrokerProcess;
  let alice: BusClient;
  let bundle: string;
  let baseline: { fds: number };

  const aliceGets = async () => {
    const answer = await alice.publish('git-credentials', { operation: 'get', protocol: 'https', host: ALICE_HOST, path: 'team/app.git' });
    expect(answer).to.deep.equal({ username: 'alice-bot', password: ALICE_TOKEN });
  };

  /** Nothing secret anywhere the host writes. */
  const noTokenWritten = () => {
    for (const token of [MALLORY_TOKEN, ALICE_TOKEN]) {
      expect(broker.stderr(), 'the broker log').to.not.contain(token);
      for (const shed of ['mallory', 'alice']) expect(JSON.stringify(auditOf(broker.auditDir, shed)), `${shed}'s audit`).to.not.contain(token);
    }
  };

  before(async function () {
    this.timeout(60_000);
    const bin = tempDir('shed-adv-g');
    const script = (name: string, token: string) => {
      const file = path.join(bin, name);
      fs.writeFileSync(file, `#!/bin/sh\necho '${token}'\n`, { mode: 0o755 });
      return file;
    };
    broker = await startBrokerProcess({
      version: 1,
      sheds: {
        // mallory may have one host's credentials, under acme/; everything else it asks for is refused. No rate
        // limit to hide behind: every generated request reaches the handler.
        mallory: {
          git: { allowed: [`${MALLORY_HOST}/acme/*`], sources: { [MALLORY_HOST]: { command: [script('mallory-token', MALLORY_TOKEN)] } } },
          limits: { git: { per_minute: 100_000, burst: 10_000 } },
        },
        // alice asks every 25 ms throughout: her own rate limit must not be what answers.
        alice: {
          git: { allowed: [ALICE_HOST], sources: { [ALICE_HOST]: { command: [script('alice-token', ALICE_TOKEN)], username: 'alice-bot' } } },
          limits: { git: { per_minute: 100_000, burst: 10_000 } },
        },
      },
    }, { GIT_CONFIG_NOSYSTEM: '1', PATH: '/usr/bin:/bin' });
    alice = new BusClient({ publishUrl: `unix:${broker.socketPath('alice')}`, deadlineMs: 10_000 });
    bundle = (await bundleGitCredentialShed()).file;
    for (let i = 0; i < 10; i++) await aliceGets();
    baseline = procStats(broker.pid);
  });

  after(async () => {
    alice?.close();
    const code = await broker?.stop();
    expect(code, 'the broker stops cleanly after it all').to.equal(0);
  });

  it('5,000 generated requests on the bus: each answered with credentials it may have or a plain refusal, alice unharmed, nothing leaked or kept', async () => {
    const r = prng(SEED);
    const payloads = Array.from({ length: 5000 }, () => gitCredentialPayload(r, MALLORY_HOST));
    const mallory = new BusClient({ publishUrl: `unix:${broker.socketPath('mallory')}`, deadlineMs: 20_000 });
    const outcomes = new Map<string, number>();
    const count = (k: string) => outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
    try {
      const run = await probeWhile(async () => {
        let next = 0;
        await Promise.all(Array.from({ length: 16 }, async () => {
          while (next < payloads.length) {
            const payload = payloads[next++]!;
            try {
              const answer = await mallory.publish('git-credentials', payload);
              if (payload.operation === 'status') {
                expect(answer).to.deep.equal({ connected: true, allowed_count: 1, source_count: 1 });
                count('status');
                continue;
              }
              // Served only what the policy gives mallory: its own host, under acme/, by its own source.
              const served = GitGetResponse.safeParse(answer);
              expect(served.success, JSON.stringify(answer).slice(0, 200)).to.equal(true);
              expect(answer).to.deep.equal({ username: 'x-access-token', password: MALLORY_TOKEN });
              expect(String(payload.host).toLowerCase().replace(/:443$/, ''), JSON.stringify(payload).slice(0, 200)).to.equal(MALLORY_HOST);
              const servedPath = String(payload.path);
              // eslint-disable-next-line no-control-regex
              expect(servedPath, JSON.stringify(payload).slice(0, 200)).to.match(/^acme\/[^\0-\x1f\x7f\\%]+$/);
              expect(servedPath.split('/').some((seg) => seg === '.' || seg === '..')).to.equal(false);
              count('ok');
            } catch (err) {
              if (!(err instanceof BusError) || err.kind !== 'host') throw err;
              expect(REFUSALS.has(err.code), `${err.code}: ${err.message.slice(0, 300)}`).to.equal(true);
              expect(err.message).to.not.contain(MALLORY_TOKEN).and.not.contain(ALICE_TOKEN);
              count(err.code);
            }
          }
        }));
      }, aliceGets);
      expectUnharmed(run, 'alice');
    } finally {
      mallory.close();
    }
    // The generator makes every kind: some served, most refused for each reason.
    for (const kind of ['ok', 'INVALID_REQUEST', 'GIT_HOST_NOT_ALLOWED', 'UNKNOWN_OPERATION']) expect(outcomes.get(kind) ?? 0, `${kind} in ${JSON.stringify([...outcomes])}`).to.be.above(0);
    await waitFor(() => procStats(broker.pid).fds <= baseline.fds, 30_000, 'the broker\'s descriptors to come back');
    // Every token command it ran has ended: no process of the broker's is left.
    const children = fs.readFileSync(`/proc/${broker.pid}/task/${broker.pid}/children`, 'utf8').trim();
    expect(children, 'processes the broker started and left').to.equal('');
    // Each line one line, escaped, bounded.
    for (const line of auditOf(broker.auditDir, 'mallory')) {
      expect(JSON.stringify(line)).to.not.match(/\\u001b|\\n/);
      expect(String(line.detail).length).to.be.at.most(1025);
    }
    expect(broker.stderr().split('\n').filter((l) => l.includes('mallory')).length, 'log lines about mallory').to.be.below(50);
    noTokenWritten();
  });

  it('300 generated stdins for the guest\'s git-credential-shed: exit 0, no answer but for an allowed repository, one line on stderr, alice unharmed', async function () {
    this.timeout(200_000);
    const r = prng(SEED + 1);
    const inputs = Array.from({ length: 300 }, () => gitHelperInput(r, MALLORY_HOST));
    const env = { PATH: '/usr/bin:/bin', SHED_PUBLISH_URL: `unix:${broker.socketPath('mallory')}` };
    let answered = 0;
    const probe = await probeWhile(async () => {
      let next = 0;
      await Promise.all(Array.from({ length: 4 }, async () => {
        while (next < inputs.length) {
          const input = inputs[next++]!;
          const started = Date.now();
          const res = await run(process.execPath, [bundle, 'get'], { env, input: input.toString('latin1'), timeoutMs: 30_000 });
          const what = JSON.stringify(input.toString('latin1').slice(0, 120));
          expect(res.code, `${what}: ${res.stderr}`).to.equal(0);
          expect(Date.now() - started, what).to.be.below(15_000);
          expect(res.stderr, what).to.match(/^(|git-credential-shed: [^\n]*\n)$/);
          expect(res.stderr).to.not.contain(MALLORY_TOKEN).and.not.contain(ALICE_TOKEN);
          if (res.stdout !== '') {
            expect(res.stdout, what).to.equal(`username=x-access-token\npassword=${MALLORY_TOKEN}\n`);
            answered += 1;
          } else {
            expect(res.stderr, what).to.not.equal('');
          }
        }
      }));
    }, aliceGets);
    expectUnharmed(probe, 'alice');
    expect(answered, 'the well-formed requests for an allowed repository were answered').to.be.above(0);
    await waitFor(() => procStats(broker.pid).fds <= baseline.fds, 30_000, 'the broker\'s descriptors to come back');
    noTokenWritten();
  });
});
