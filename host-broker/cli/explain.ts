/**
 * `shed-host-agent explain <shed> <namespace> <operation> [--key FP]
 * [--registry HOST] [--host NAME] [--signing-namespace NS] [--url URL]`: the decision the
 * broker would make, step by step, with the rule that decided it, without
 * touching any backend. Every step calls the function the broker itself
 * calls (shedDecision, the namespaces' rules, the approval gate's `gated`).
 */
import { CommonCode, DockerCode, SshCode } from '../../protocol/codes.js';
import { isNamespace, OPERATIONS } from '../../protocol/envelope.js';
import { gated } from '../approval/approvals.js';
import { roleDecision } from '../aws/rules.js';
import { normalizeRegistry, registryDecision } from '../docker/rules.js';
import { DEFAULT_TOKEN_USERNAME } from '../git/handler.js';
import { HOST_PROGRAM_TIMEOUT_MS } from '../git/host-process.js';
import { describeTarget, gitDecision, gitTarget, parseGitUrl, sourceFor } from '../git/rules.js';
import type { Decision } from '../handler.js';
import { shedDecision } from '../policy/decide.js';
import type { EffectiveApproval } from '../policy/effective.js';
import type { Policy } from '../policy/policy.js';
import { formatDuration, FINGERPRINT_RE } from '../policy/schema.js';
import { hostDecision, keyDecision, signingNamespaceDecision } from '../ssh/rules.js';

export interface ExplainRequest {
  shed: string;
  /** The named server the shed belongs to (undefined: direct sockets or the top-level server:). */
  server?: string;
  namespace: string;
  operation: string;
  /** SHA256 fingerprint of the key to sign with. */
  key?: string;
  registry?: string;
  /** The server an ssh login goes to. */
  host?: string;
  /** The SSHSIG namespace (`ssh-keygen -Y sign -n`). */
  signingNamespace?: string;
  /** The repository URL a git credential is asked for: `https://github.com/acme/app.git`. */
  url?: string;
}

export interface Step extends Decision {
  /** What was checked: shed, key, host, registry, role, approval… */
  check: string;
}

export interface Explanation {
  allowed: boolean;
  /** The error code the guest would get, when refused. */
  code?: string;
  steps: Step[];
  /** What happens next at request time (backends, approval prompts, rate limits). */
  then: string[];
}

/** Thrown for a request explain cannot decide without more input (a usage error). */
export class ExplainUsage extends Error {}

/** The namespaces this broker serves (the dispatcher's handlers). */
export type Served = (namespace: string) => boolean;

export function explain(policy: Policy, req: ExplainRequest, served: Served): Explanation {
  const steps: Step[] = [];
  const then: string[] = [];
  const finish = (): Explanation => {
    const refused = steps.find((s) => !s.allowed);
    return refused ? { allowed: false, code: refused.code, steps, then: [] } : { allowed: true, steps, then };
  };
  const step = (check: string, d: Decision): boolean => {
    steps.push({ check, ...d });
    return d.allowed;
  };

  const shed = shedDecision(policy, { name: req.shed, server: req.server }, req.namespace, served(req.namespace));
  if (!step('shed', { allowed: shed.allowed, code: shed.code, rule: shed.rule }) || !shed.shed) return finish();
  const e = shed.shed;
  const op = req.operation;
  if (!op) {
    step('operation', { allowed: false, code: CommonCode.INVALID_REQUEST, rule: 'the payload has no "operation"' });
    return finish();
  }
  if (op === 'ping') {
    step('operation', { allowed: true, rule: 'ping is answered by the broker itself' });
    return finish();
  }
  const unknown = () => step('operation', {
    allowed: false,
    code: CommonCode.UNKNOWN_OPERATION,
    rule: `${req.namespace} has no operation ${JSON.stringify(op.slice(0, 64))}; its operations: ${isNamespace(req.namespace) ? [...OPERATIONS[req.namespace], 'ping'].join(', ') : 'none'}`,
  });
  const approval = (namespace: 'ssh-agent' | 'aws-credentials' | 'git-credentials', subject: string) => {
    if (gated(e.approval, namespace)) then.push(`the ${describeGate(e.approval)} must approve ${subject}; a refusal or timeout (${formatDuration(e.approval.timeout)}) is APPROVAL_DENIED`);
  };
  const limits = (bucket: 'ssh' | 'aws' | 'docker' | 'git') => {
    const b = e.limits[bucket];
    then.push(`rate limit: ${b.per_minute}/min (burst ${b.burst}) for ${bucket}, ${e.limits.max_concurrent} requests of the shed at once; more is RATE_LIMITED`);
  };

  switch (req.namespace) {
    case 'ssh-agent': {
      const ssh = e.ssh;
      if (op === 'status' || op === 'bind') {
        step('operation', { allowed: true, rule: op === 'status' ? 'status reports the backend and the number of allowed keys' : 'bind records the server host key of an ssh session (checked against allowed_hosts at sign time)' });
        break;
      }
      if (op === 'list') {
        step('operation', { allowed: true, rule: 'list shows the backend\'s keys that allowed_keys admits' });
        if (req.key) {
          const d = keyDecision(ssh, req.key);
          then.push(`${req.key} ${d.allowed ? 'is listed' : 'is hidden'}: ${d.rule}`);
        }
        limits('ssh');
        break;
      }
      if (op !== 'sign') {
        unknown();
        break;
      }
      if (!req.key) throw new ExplainUsage('explain ssh-agent sign needs --key <SHA256 fingerprint> (as `ssh-keygen -lf key.pub` prints it)');
      if (!FINGERPRINT_RE.test(req.key)) throw new ExplainUsage(`--key ${JSON.stringify(req.key)} is not a SHA256 fingerprint like SHA256:<43 base64 characters>; see \`ssh-keygen -lf key.pub\``);
      if (!step('key', keyDecision(ssh, req.key))) break;
      if (req.signingNamespace !== undefined) {
        if (!step('signing namespace', signingNamespaceDecision(ssh, req.signingNamespace))) break;
      } else if (req.host !== undefined) {
        if (!step('host', hostDecision(ssh, req.host))) break;
        if (ssh.allowed_hosts !== undefined) then.push('the broker matches the server by the host key the ssh session was bound to (OpenSSH 8.9+ in the shed)');
      } else if (ssh.allowed_hosts !== undefined) {
        step('data', { allowed: false, code: SshCode.HOST_NOT_ALLOWED, rule: 'allowed_hosts is set: only ssh logins to those hosts (give --host) and SSHSIG signatures (give --signing-namespace) are signed' });
        break;
      } else {
        step('data', { allowed: true, rule: 'no allowed_hosts: any data (logins to any host, SSHSIG subject to signing_namespaces)' });
      }
      approval('ssh-agent', `a signature with ${req.key}`);
      then.push(`the ${ssh.mode} backend signs with the key (KEY_NOT_FOUND when it does not hold it)`);
      limits('ssh');
      break;
    }
    case 'aws-credentials': {
      if (op === 'status') {
        step('operation', { allowed: true, rule: 'status reports the role and how long cached credentials last' });
        break;
      }
      if (op !== 'get_credentials') {
        unknown();
        break;
      }
      if (e.aws.mode === 'passthrough') {
        if (!step('mode', roleDecision(e.aws))) break;
        approval('aws-credentials', `the session credentials of profile ${e.aws.source_profile}`);
        then.push(`the session credentials of source profile ${e.aws.source_profile} are read afresh, nothing cached (SOURCE_CREDENTIALS_FAILED when the profile cannot be loaded or its session has ended, LONG_LIVED_CREDENTIALS when it holds long-lived keys, which never enter a shed)`);
        limits('aws');
        break;
      }
      if (!step('role', roleDecision(e.aws))) break;
      approval('aws-credentials', `credentials for ${e.aws.role}`);
      then.push(`STS AssumeRole with source profile ${e.aws.source_profile} (SOURCE_CREDENTIALS_FAILED when that profile cannot be loaded, ASSUME_ROLE_FAILED when STS refuses); cached per shed and role until ${formatDuration(e.aws.refresh_before)} before expiry`);
      limits('aws');
      break;
    }
    case 'docker-credentials': {
      if (op === 'status') {
        step('operation', { allowed: true, rule: 'status reports allow_all and the number of registries' });
        break;
      }
      if (op === 'store' || op === 'erase') {
        step('operation', { allowed: false, code: DockerCode.READ_ONLY, rule: 'the broker is read-only: store and erase are always refused' });
        break;
      }
      if (op === 'list') {
        step('operation', { allowed: true, rule: 'list shows the host\'s registries that the allowlist covers' });
        if (req.registry) {
          const registry = normalizeRegistry(req.registry);
          const d = registryDecision(e.docker, registry);
          then.push(`${registry} ${d.allowed ? 'is listed if the host has credentials for it' : 'is not listed'}: ${d.rule}`);
        }
        limits('docker');
        break;
      }
      if (op !== 'get') {
        unknown();
        break;
      }
      if (!req.registry) throw new ExplainUsage('explain docker-credentials get needs --registry HOST (like ghcr.io or registry.example.com:5000)');
      const registry = normalizeRegistry(req.registry);
      if (!step('registry', registryDecision(e.docker, registry))) break;
      then.push(`credentials for ${registry} come from the host's Docker config (credHelpers, credsStore, auths); CREDENTIALS_NOT_FOUND when it has none`);
      limits('docker');
      break;
    }
    case 'git-credentials': {
      if (op === 'status') {
        step('operation', { allowed: true, rule: 'status reports the number of git.allowed entries and token commands' });
        break;
      }
      if (op !== 'get') {
        unknown();
        break;
      }
      if (!req.url) throw new ExplainUsage('explain git-credentials get needs --url URL, the repository as git names it (like https://github.com/acme/app.git)');
      const url = parseGitUrl(req.url);
      if ('problem' in url) throw new ExplainUsage(`--url: ${url.problem}`);
      const judged = gitTarget(url);
      if ('problem' in judged) {
        step('url', { allowed: false, code: CommonCode.INVALID_REQUEST, rule: judged.problem });
        break;
      }
      const target = judged.target;
      if (!step('url', gitDecision(e.git, target))) break;
      approval('git-credentials', `git credentials for ${describeTarget(target)}`);
      const source = sourceFor(e.git, target);
      then.push(source
        ? `git.sources.${source.key} runs ${source.command.join(' ')} (no shell, stdin closed, ${HOST_PROGRAM_TIMEOUT_MS / 1000} s at most); its one line of output is the token, sent with username ${source.username ?? DEFAULT_TOKEN_USERNAME} (HELPER_FAILED when it fails or prints nothing)`
        : `the host's \`git credential fill\` is asked with protocol=${target.protocol} and host=${target.host} only, never prompting, ${HOST_PROGRAM_TIMEOUT_MS / 1000} s at most; CREDENTIALS_NOT_FOUND when its helpers have nothing, HELPER_FAILED when it fails`);
      limits('git');
      break;
    }
    default:
      unknown();
  }
  return finish();
}

function describeGate(a: EffectiveApproval): string {
  const remember = a.policy === 'per-request' ? 'asked every time' : `remembered ${a.policy} for ${formatDuration(a.ttl)}`;
  return `approval gate ${a.gate}${a.gate === 'command' && a.command ? ` (${a.command.join(' ')})` : ''}, ${remember},`;
}

/** The explanation as text: one line per step, the verdict, and what follows. */
export function formatExplanation(req: ExplainRequest, x: Explanation): string {
  const args = [req.key && `--key ${req.key}`, req.registry && `--registry ${req.registry}`, req.host && `--host ${req.host}`,
    req.signingNamespace !== undefined && `--signing-namespace ${req.signingNamespace}`, req.url && `--url ${req.url}`].filter(Boolean).join(' ');
  const lines = [`shed ${req.shed}${req.server !== undefined ? ` of server ${req.server}` : ''}: ${req.namespace} ${req.operation}${args ? ` ${args}` : ''}`];
  for (const s of x.steps) lines.push(`  ${s.allowed ? 'allowed' : 'denied '}  ${s.check}: ${s.rule}`);
  lines.push(`verdict: ${x.allowed ? 'allowed' : `denied ${x.code ?? ''}`.trim()}`);
  for (const t of x.then) lines.push(`  then: ${t}`);
  return `${lines.join('\n')}\n`;
}
