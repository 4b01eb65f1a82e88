/**
 * The admin's policy commands: `check` (validate, one line per shed),
 * `policy list` (every shed's effective settings in a table) and
 * `policy show <shed>` (the merged policy, each value with its origin).
 */
import { SHED_NAME_RE } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { Approvals } from '../approval/approvals.js';
import { loadPolicyFile, PolicyError, type Policy } from '../policy/policy.js';
import { listedSheds, renderShed, summarizeShed } from '../policy/show.js';
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

/** `check`: exit 0 and one line per shed, or 1 and every problem (file:line:col). */
export async function checkCommand(config: string, io: Io): Promise<number> {
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
  const sheds = listedSheds(policy);
  const transports = [
    policy.direct.enabled ? `direct sockets in ${policy.direct.socketsDir}` : '',
    policy.server ? `shed-server ${policy.server.url}` : '',
  ].filter(Boolean).join(' and ');
  io.out(`${policy.files.join(', ')}: ok, ${policy.namedSheds().length} named shed${policy.namedSheds().length === 1 ? '' : 's'}${policy.hasWildcard() ? ' and "*"' : ' (no "*": other sheds are refused)'}; ${transports || 'no transport'}\n`);
  for (const shed of sheds) {
    const s = summarizeShed(policy, shed)!;
    io.out(`${s.shed}: aws ${s.role}; ssh ${s.ssh}; docker ${s.registries}; approval ${s.approval}; ${s.socket === '-' ? 'no socket' : `socket ${s.socket}`}\n`);
  }
  return 0;
}

/** `policy list`: one row per shed. */
export function policyListCommand(config: string, io: Io): number {
  const policy = loadForCli(config, io);
  if (!policy) return 1;
  const rows = [['SHED', 'ROLE', 'SSH', 'REGISTRIES', 'APPROVAL', 'SOCKET']];
  for (const shed of listedSheds(policy)) {
    const s = summarizeShed(policy, shed)!;
    rows.push([s.shed, s.role, s.ssh, s.registries, s.approval, s.socket]);
  }
  io.out(table(rows));
  if (!policy.hasWildcard()) io.out('(no "*" entry: sheds not listed are refused with SHED_NOT_ALLOWED)\n');
  return 0;
}

/** `policy show <shed>`: the merged effective policy as YAML, each value with its origin. */
export function policyShowCommand(config: string, shed: string | undefined, io: Io): number {
  if (!shed || (shed !== '*' && !SHED_NAME_RE.test(shed))) {
    io.err(`shed-host-agent policy show: give a shed name (lowercase letters, digits, hyphens) or "*"${shed ? `, not ${JSON.stringify(shed)}` : ''}\n`);
    return 2;
  }
  const policy = loadForCli(config, io);
  if (!policy) return 1;
  const text = renderShed(policy, shed);
  if (!text) {
    io.err(`shed ${shed} is not admitted by ${policy.files[0]}: it has no entry under sheds and there is no "*" entry, so its requests are refused with SHED_NOT_ALLOWED; add it under sheds: (or a sheds.d/${shed}.yaml)\n`);
    return 1;
  }
  io.out(text);
  return 0;
}
