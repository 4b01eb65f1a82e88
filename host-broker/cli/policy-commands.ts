/**
 * The admin's policy commands: `check` (validate, one line per shed),
 * `policy list` (every shed's effective settings in a table) and
 * `policy show <shed>` (the merged policy, each value with its origin).
 */
import { SHED_NAME_RE } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { Approvals } from '../approval/approvals.js';
import type { EffectiveShed } from '../policy/effective.js';
import { loadPolicyFile, PolicyError, type Policy } from '../policy/policy.js';
import { DEFAULT_SERVER_NAME } from '../policy/schema.js';
import { listedSheds, listedShedsOf, renderShed, showShed, summarizeShed } from '../policy/show.js';
import { table, type Io } from './io.js';

/** The policy, or undefined with every problem written to stderr. */
export function loadForCli(config: string, io: Io): Policy | undefined {
  try {
    const policy = loadPolicyFile(config);
    for (const notice of policy.notices) io.err(`${notice}\n`);
    return policy;
  } catch (err) {
    if (!(err instanceof PolicyError)) throw err;
    for (const problem of err.problems) io.err(`${problem}\n`);
    io.err(`${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}: the policy was not loaded\n`);
    return undefined;
  }
}

/** The transports in a few words: direct sockets, each shed server, discovery. */
export function describeTransports(policy: Policy): string {
  const discovery = policy.discovery();
  return [
    policy.direct.enabled ? `direct sockets in ${policy.direct.socketsDir}` : '',
    ...policy.servers().map((s) => `shed-server ${s.name === DEFAULT_SERVER_NAME ? '' : `${s.name} `}${s.url}`),
    discovery ? `the servers of ${discovery.source} (${discovery.servers === 'all' ? 'all' : discovery.servers.join(', ') || 'none'})` : '',
  ].filter(Boolean).join(' and ') || 'no transport';
}

/** Everything `check --json` prints: what the broker would run with. */
export function policyReport(policy: Policy): Record<string, unknown> {
  const sheds = (names: string[], server?: string) =>
    Object.fromEntries(names.map((name): [string, EffectiveShed] => [name, policy.resolve(name, server)!]));
  return {
    files: policy.files,
    notices: policy.notices,
    direct: policy.direct,
    audit: policy.audit,
    servers: policy.servers(),
    discovery: policy.discovery() ?? null,
    server_settings: Object.fromEntries(policy.serverScopes().map((name) => [name, policy.serverSettings(name)])),
    sheds: sheds(listedSheds(policy)),
    server_sheds: Object.fromEntries(policy.serverScopes().map((name) => [name, sheds(listedShedsOf(policy, name), name)])),
  };
}

/** `check`: exit 0 and one line per shed, or 1 and every problem (file:line:col). */
export async function checkCommand(config: string, io: Io, options: { json?: boolean } = {}): Promise<number> {
  const policy = loadForCli(config, io);
  if (!policy) return 1;
  // The approval gates the broker would refuse to start with.
  const approvals = new Approvals({ log: memoryLogger('check') });
  const gateProblems = await approvals.check(policy).finally(() => approvals.close());
  if (gateProblems.length) {
    for (const p of gateProblems) io.err(`${policy.files[0]}: ${p}\n`);
    io.err(`${gateProblems.length} problem${gateProblems.length === 1 ? '' : 's'}: shed-host-agent run would refuse this policy on this host\n`);
    return 1;
  }
  if (options.json) {
    io.out(`${JSON.stringify(policyReport(policy))}\n`);
    return 0;
  }
  const sheds = listedSheds(policy);
  io.out(`${policy.files.join(', ')}: ok, ${policy.namedSheds().length} named shed${policy.namedSheds().length === 1 ? '' : 's'}${policy.hasWildcard() ? ' and "*"' : ' (no "*": other sheds are refused)'}; ${describeTransports(policy)}\n`);
  for (const shed of sheds) {
    const s = summarizeShed(policy, shed)!;
    io.out(`${s.shed}: aws ${s.role}; ssh ${s.ssh}; docker ${s.registries}; git ${s.git}; approval ${s.approval}; ${s.socket === '-' ? 'no socket' : `socket ${s.socket}`}\n`);
  }
  for (const server of policy.serverScopes()) {
    for (const shed of listedShedsOf(policy, server)) {
      const s = summarizeShed(policy, shed, server)!;
      io.out(`${s.shed} of server ${server}: aws ${s.role}; ssh ${s.ssh}; docker ${s.registries}; git ${s.git}; approval ${s.approval}\n`);
    }
  }
  return 0;
}

/** `policy list`: one row per shed (and per shed of each server under servers:). */
export function policyListCommand(config: string, io: Io): number {
  const policy = loadForCli(config, io);
  if (!policy) return 1;
  const scoped = policy.serverScopes();
  const rows = [[...(scoped.length ? ['SERVER'] : []), 'SHED', 'ROLE', 'SSH', 'REGISTRIES', 'GIT', 'APPROVAL', 'SOCKET']];
  const add = (shed: string, server?: string) => {
    const s = summarizeShed(policy, shed, server)!;
    rows.push([...(scoped.length ? [server ?? '-'] : []), s.shed, s.role, s.ssh, s.registries, s.git, s.approval, s.socket]);
  };
  for (const shed of listedSheds(policy)) add(shed);
  for (const server of scoped) for (const shed of listedShedsOf(policy, server)) add(shed, server);
  io.out(table(rows));
  if (!policy.hasWildcard()) io.out('(no "*" entry: sheds not listed are refused with SHED_NOT_ALLOWED)\n');
  return 0;
}

/** A `--server` value: a server name, or undefined for `default` (the top-level server:) and none. */
export function serverOption(server: string | undefined, io: Io, command: string): { ok: true; server?: string } | { ok: false } {
  if (server === undefined || server === DEFAULT_SERVER_NAME) return { ok: true };
  if (!SHED_NAME_RE.test(server)) {
    io.err(`shed-host-agent ${command}: --server takes a server name (lowercase letters, digits, hyphens), not ${JSON.stringify(server)}\n`);
    return { ok: false };
  }
  return { ok: true, server };
}

/** `policy show <shed> [--server S] [--json]`: the merged effective policy as YAML, each value with its origin. */
export function policyShowCommand(config: string, shed: string | undefined, io: Io, options: { server?: string; json?: boolean } = {}): number {
  if (!shed || (shed !== '*' && !SHED_NAME_RE.test(shed))) {
    io.err(`shed-host-agent policy show: give a shed name (lowercase letters, digits, hyphens) or "*"${shed ? `, not ${JSON.stringify(shed)}` : ''}\n`);
    return 2;
  }
  const opt = serverOption(options.server, io, 'policy show');
  if (!opt.ok) return 2;
  const server = opt.server;
  const policy = loadForCli(config, io);
  if (!policy) return 1;
  if (server !== undefined && !policy.serverScopes().includes(server) && !policy.discovery()) {
    io.err(`note: ${policy.files[0]} has no servers.${server} section and no discovery: block; showing the global policy\n`);
  }
  const shown = showShed(policy, shed, server);
  if (!shown) {
    const where = server !== undefined && policy.serverScopes().includes(server) ? ` (nor under servers.${server}.sheds)` : '';
    io.err(`shed ${shed} is not admitted by ${policy.files[0]}: it has no entry under sheds${where} and there is no "*" entry, so its requests are refused with SHED_NOT_ALLOWED; add it under sheds: (or a sheds.d/${shed}.yaml)\n`);
    return 1;
  }
  if (options.json) {
    io.out(`${JSON.stringify({ shed, server: server ?? null, entry: shown.entry, layers: shown.layers, effective: shown.effective, origins: Object.fromEntries(shown.origins) })}\n`);
    return 0;
  }
  io.out(renderShed(policy, shed, server)!);
  return 0;
}
