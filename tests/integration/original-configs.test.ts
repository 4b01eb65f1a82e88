/**
 * Files in the original shed-extensions format, written as its users write
 * them (every version of the Go host agent, tests/fixtures/original-configs/),
 * each loaded by the real `shed-host-agent check --json` (exit 0) and
 * compared with the effective policy written beside it in NAME.expected.json:
 *
 *   { "server": url | null, "direct": bool, "discovery": {source, servers} | null,
 *     "audit_dir": path, "sheds": { name: overrides }, "server_sheds": { server: { name: overrides } },
 *     "warnings": [[line, "key.path"], …], "notices": n,
 *     "darwin": { "sheds": …, "server_sheds": …, "warnings": … } }
 *
 * A shed's overrides are what differs from the built-in defaults (durations
 * as text); every shed the policy lists must be there, with nothing else
 * different. Paths are under HOME (`~`), a temp directory for the run.
 * `warnings` are the warning lines the load prints (file line and key, one
 * line each); `notices` the count of notice lines besides the one saying
 * the file is in the original format. Expectations are for a host without
 * Touch ID; `darwin` holds what differs on macOS, checked in-process.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { BUILTIN_DEFAULTS, mergeSections, type EffectiveShed } from '../../host-broker/policy/effective.js';
import { loadPolicyFile, type Policy } from '../../host-broker/policy/policy.js';
import { parseDuration } from '../../host-broker/policy/schema.js';
import { binCommand, REPO_ROOT, run, tempDir } from '../support/procs.js';

const DIR = path.join(REPO_ROOT, 'tests', 'fixtures', 'original-configs');
const DURATION_KEYS = new Set(['session_duration', 'refresh_before', 'ttl', 'timeout']);

type Plain = Record<string, unknown>;
interface Expected {
  server: string | null;
  direct: boolean;
  discovery: { source: string; servers: 'all' | string[] } | null;
  audit_dir: string;
  sheds: Record<string, Plain>;
  server_sheds?: Record<string, Record<string, Plain>>;
  warnings: Array<[number, string]>;
  notices?: number;
  darwin?: { sheds?: Record<string, Plain>; server_sheds?: Record<string, Record<string, Plain>>; warnings?: Array<[number, string]> };
}

interface Report {
  files: string[];
  direct: { enabled: boolean };
  audit: { dir: string };
  servers: Array<{ name: string; url: string }>;
  discovery: { source: string; servers: 'all' | string[] } | null;
  sheds: Record<string, EffectiveShed>;
  server_sheds: Record<string, Record<string, EffectiveShed>>;
}

function isMap(v: unknown): v is Plain {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Durations written as text in the expectations, as milliseconds. */
function parsed(value: unknown, key?: string): unknown {
  if (typeof value === 'string' && key && DURATION_KEYS.has(key)) {
    const ms = parseDuration(value);
    if (ms === undefined) throw new Error(`bad duration ${value} in an expectation`);
    return ms;
  }
  if (isMap(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, parsed(v, k)]));
  return value;
}

function home(p: string, dir: string): string {
  return p === '~' ? dir : p.startsWith('~/') ? path.join(dir, p.slice(2)) : p;
}

/** The full effective policy a shed's overrides describe. */
function effectiveOf(name: string, overrides: Plain, homeDir: string, server?: string): Plain {
  const merged = mergeSections(BUILTIN_DEFAULTS, parsed(overrides) as never) as unknown as Record<string, Plain>;
  const ssh = merged.ssh!;
  return {
    // A named server's shed is keyed `name@server` (host-broker/origin.ts).
    name: server === undefined ? name : `${name}@${server}`,
    matched: name === '*' ? 'wildcard' : 'named',
    ...merged,
    ssh: { ...ssh, keys: (ssh.keys as string[]).map((k) => home(k, homeDir)), agent_socket: ssh.agent_socket && home(ssh.agent_socket as string, homeDir) },
    aws: { ...merged.aws, tags: { shed: name, ...(merged.aws!.tags as Plain) } },
  };
}

/** JSON's view (undefined keys dropped), as the report has it. */
function json(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value)) as unknown;
}

function compareSheds(actual: Record<string, unknown>, expected: Record<string, Plain>, homeDir: string, where: string, server?: string): void {
  expect(Object.keys(actual).sort(), `${where}: the sheds listed`).to.deep.equal(Object.keys(expected).sort());
  for (const [name, overrides] of Object.entries(expected)) {
    expect(json(actual[name]), `${where}: shed ${name}`).to.deep.equal(json(effectiveOf(name, overrides, homeDir, server)));
  }
}

function warningsOf(lines: string[], file: string): Array<[number, string]> {
  return lines.filter((l) => l.startsWith('warning: ')).map((l) => {
    const m = new RegExp(`^warning: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:(\\d+): (\\S+): `).exec(l);
    if (!m) throw new Error(`a warning line not of the form "warning: file:line: key: …": ${l}`);
    return [Number(m[1]), m[2]!];
  });
}

const files = fs.readdirSync(DIR).filter((f) => f.endsWith('.yaml')).sort();

describe('the original format: a corpus of its users\' files, checked by the real CLI', function () {
  this.timeout(120_000);
  const homeDir = tempDir('shed-home');
  const results = new Map<string, { copy: string; code: number | null; stdout: string; stderr: string }>();

  before(async () => {
    // Several CLI processes at once: each is a node start-up.
    const queue = [...files];
    const worker = async () => {
      for (let name = queue.shift(); name; name = queue.shift()) {
        const dir = tempDir('shed-oc');
        const copy = path.join(dir, 'extensions.yaml');
        fs.copyFileSync(path.join(DIR, name), copy);
        fs.chmodSync(copy, 0o600);
        const [cmd, args] = binCommand('shed-host-agent', ['check', '--json', '-config', copy]);
        const res = await run(cmd, args, { env: { ...process.env, HOME: homeDir, DOCKER_CONFIG: '', XDG_CONFIG_HOME: '' } });
        results.set(name, { copy, code: res.code, stdout: res.stdout, stderr: res.stderr });
      }
    };
    await Promise.all([worker(), worker(), worker()]);
  });

  it('holds at least 20 files, each with its expected policy beside it', () => {
    expect(files.length).to.be.at.least(20);
    for (const f of files) expect(fs.existsSync(path.join(DIR, f.replace(/\.yaml$/, '.expected.json'))), f).to.equal(true);
  });

  for (const name of files) {
    it(`${name}: check exits 0 with the same effective policy, and one warning line per key it does not keep`, () => {
      const expected = JSON.parse(fs.readFileSync(path.join(DIR, name.replace(/\.yaml$/, '.expected.json')), 'utf8')) as Expected;
      const res = results.get(name)!;
      expect(res.code, res.stderr).to.equal(0);
      const report = JSON.parse(res.stdout) as Report;
      const top = report.servers.find((s) => s.name === 'default');
      expect(top?.url ?? null, 'server').to.equal(expected.server);
      expect(report.servers.filter((s) => s.name !== 'default'), 'servers with a url').to.deep.equal([]);
      expect(report.direct.enabled, 'direct').to.equal(expected.direct);
      expect(report.discovery, 'discovery').to.deep.equal(expected.discovery && { ...expected.discovery, source: home(expected.discovery.source, homeDir) });
      expect(report.audit.dir, 'audit dir').to.equal(home(expected.audit_dir, homeDir));
      compareSheds(report.sheds, expected.sheds, homeDir, name);
      const serverSheds = expected.server_sheds ?? {};
      expect(Object.keys(report.server_sheds).sort(), 'servers with a policy layer').to.deep.equal(Object.keys(serverSheds).sort());
      for (const [server, sheds] of Object.entries(serverSheds)) compareSheds(report.server_sheds[server]!, sheds, homeDir, `${name} server ${server}`, server);
      const lines = res.stderr.trim().split('\n');
      expect(lines[0], 'the format notice first').to.match(/^notice: .* is in the original shed-extensions format; it is read as this version 1 policy/);
      expect(warningsOf(lines, res.copy), 'warnings').to.deep.equal(expected.warnings);
      expect(lines.filter((l) => l.startsWith('notice: ')).length - 1, 'other notices').to.equal(expected.notices ?? 0);
      expect(lines.filter((l) => !/^(notice|warning): /.test(l)), 'nothing else on stderr').to.deep.equal([]);
    });
  }

  it('reads Touch ID approvals as macOS reads them (in-process, for platform darwin)', () => {
    for (const name of files) {
      const expected = JSON.parse(fs.readFileSync(path.join(DIR, name.replace(/\.yaml$/, '.expected.json')), 'utf8')) as Expected;
      if (!expected.darwin) continue;
      const copy = results.get(name)!.copy;
      const policy: Policy = loadPolicyFile(copy, { platform: 'darwin' });
      const report = {
        sheds: Object.fromEntries(policy.listedSheds().map((s) => [s, policy.resolve(s)])),
        server_sheds: Object.fromEntries(policy.serverScopes().map((sv) => [sv, Object.fromEntries(policy.listedSheds(sv).map((s) => [s, policy.resolve(s, sv)]))])),
      };
      const homeNow = process.env.HOME ?? '';
      compareSheds(report.sheds, expected.darwin.sheds ?? expected.sheds, homeNow, `${name} (darwin)`);
      for (const [server, sheds] of Object.entries(expected.darwin.server_sheds ?? expected.server_sheds ?? {})) {
        compareSheds(report.server_sheds[server]!, sheds, homeNow, `${name} (darwin) server ${server}`);
      }
      expect(warningsOf(policy.notices, copy), `${name} (darwin) warnings`).to.deep.equal(expected.darwin.warnings ?? expected.warnings);
    }
  });
});
