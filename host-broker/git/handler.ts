/**
 * The git-credentials namespace: credentials for git over HTTPS, for the
 * hosts and repositories the shed's policy allows (`git.allowed`), from
 * the host's own git (`git credential fill`, with whatever helpers the host
 * user has: osxkeychain, libsecret, Git Credential Manager, store) or from
 * a per-host `command` in `git.sources` (`gh auth token`).
 *
 * The host side never asks a person: `git credential fill` gets only the
 * protocol and host on stdin, runs with prompts and askpass turned off, in
 * its own session (no terminal), under a timeout, and with one last helper
 * of ours that answers "nothing" so git never reaches its prompt at all
 * (host-process.ts). Read-only: the guest's `store` and `erase` never
 * reach the host.
 */
import { GitCode } from '../../protocol/codes.js';
import { compiledOnceHot } from '../../protocol/compiled.js';
import { describeIssues, OPERATIONS, type Payload } from '../../protocol/envelope.js';
import { GitGetRequest, isCredentialValue, type GitGetResponse, type GitStatusResponse } from '../../protocol/git-credentials.js';
import type { Logger } from '../../protocol/log.js';
import { printable } from '../../protocol/text.js';
import { gated } from '../approval/approvals.js';
import { findExecutable } from '../approval/gates.js';
import { BrokerError, unknownOperation, type NamespaceHandler, type RequestContext } from '../handler.js';
import { HOST_PROGRAM_TIMEOUT_MS, ProgramError, runProgram, type ProgramResult } from './host-process.js';
import { describeTarget, gitDecision, gitTarget, sourceFor, type GitTarget, type SourceChoice } from './rules.js';

export interface GitHandlerDeps {
  log: Logger;
  /** The environment host programs run with (PATH, HOME, the keyring's variables); the broker's own by default. */
  env?: NodeJS.ProcessEnv;
  /** How long `git credential fill` or a source command may take; 10 s. */
  timeoutMs?: number;
  /** The git to run; `git` on PATH by default. */
  git?: string;
}

/** The username sent with a `command` source's token when the policy names none (GitHub's convention; GitLab, Gitea and Azure DevOps take any). */
export const DEFAULT_TOKEN_USERNAME = 'x-access-token';

/**
 * The last helper `git credential fill` runs: when none of the host's
 * helpers had a password, it answers an empty one (and an empty username
 * when there is none yet), so git returns at once instead of prompting.
 * Its input is read to the blank line that ends it, as git expects.
 */
export const NO_ANSWER_HELPER = '!f() { u=; while IFS= read -r l && [ -n "$l" ]; do case "$l" in username=*) u=1;; esac; done; [ -n "$u" ] || echo username=; echo password=; }; f';

const NS = 'git-credentials';
const getRequest = compiledOnceHot(GitGetRequest);

interface Found {
  username: string;
  password: string;
  password_expiry_utc?: string;
  authtype?: string;
}

/** `key=value` lines as git's credential protocol writes them; a later key wins, as in git. */
export function parseCredentialLines(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') break;
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    out.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return out;
}

export function createGitHandler(deps: GitHandlerDeps): NamespaceHandler {
  const env = deps.env ?? process.env;
  const timeoutMs = deps.timeoutMs ?? HOST_PROGRAM_TIMEOUT_MS;
  const git = deps.git ?? 'git';

  const failed = (what: string, why: string, detail: string, ctx: RequestContext): BrokerError => {
    ctx.log.warn(`shed ${ctx.shed}: ${what} ${why}`);
    return new BrokerError(GitCode.HELPER_FAILED, `the host's ${what} failed (${detail}); see the shed-host-agent log on the host`, { result: 'error', detail: `${what}: ${detail}` });
  };

  async function run(argv: string[], input: string | undefined, what: string, ctx: RequestContext): Promise<ProgramResult> {
    try {
      return await runProgram(argv, { env, input, timeoutMs, signal: ctx.signal });
    } catch (err) {
      if (!(err instanceof ProgramError)) throw err;
      if (err.kind === 'aborted') throw new BrokerError('INTERNAL_ERROR', 'shed-host-agent is stopping; retry once it is back', { result: 'error', detail: `${what}: aborted` });
      const detail = { 'not-found': 'not installed', 'cannot-start': `cannot start: ${err.errno ?? 'error'}`, timeout: `no answer within ${timeoutMs / 1000} s`, 'too-much-output': 'printed too much', 'no-exit': 'no exit status' }[err.kind];
      throw failed(what, err.message, detail, ctx);
    }
  }

  /** `git credential fill` with only protocol and host: the host's helpers' answer, or undefined for none. */
  async function fill(target: GitTarget, ctx: RequestContext): Promise<Found | undefined> {
    const what = 'git credential fill';
    const input = `protocol=${target.protocol}\nhost=${target.host}\n\n`;
    const result = await run([git, '-c', `credential.helper=${NO_ANSWER_HELPER}`, 'credential', 'fill'], input, what, ctx);
    if (result.code !== 0) {
      // Our last helper answers before git could prompt; should a git be older or odd, its refusal to prompt is "none" too.
      if (/terminal prompts disabled/.test(result.stderrTail)) return undefined;
      throw failed(what, `for ${target.host} exited ${result.signal ?? result.code}: ${printable(result.stderrTail, 300)}`, `exit ${result.signal ?? result.code}`, ctx);
    }
    const fields = parseCredentialLines(result.stdout);
    const password = fields.get('password') ?? '';
    if (password === '') return undefined;
    const found: Found = { username: fields.get('username') ?? '', password };
    const expiry = fields.get('password_expiry_utc');
    if (expiry !== undefined && /^\d{1,20}$/.test(expiry)) found.password_expiry_utc = expiry;
    const authtype = fields.get('authtype');
    if (authtype !== undefined && authtype.length <= 64) found.authtype = authtype;
    if (!Object.values(found).every((v) => isCredentialValue(v))) {
      throw failed(what, `for ${target.host} answered a value git's credential protocol cannot carry (a line break, NUL or over 16 KiB)`, 'unusable answer', ctx);
    }
    return found;
  }

  /** A policy `command` source: its stdout, one line, is the token. */
  async function fromCommand(source: SourceChoice, target: GitTarget, ctx: RequestContext): Promise<Found> {
    const what = `git.sources.${source.key} command`;
    const result = await run(source.command, undefined, what, ctx);
    if (result.code !== 0) {
      throw failed(what, `(${source.command[0]}) for ${target.host} exited ${result.signal ?? result.code}${result.stderrTail ? `: ${printable(result.stderrTail, 300)}` : ''}`, `exit ${result.signal ?? result.code}`, ctx);
    }
    const token = result.stdout.trim();
    if (token === '') throw failed(what, `(${source.command[0]}) for ${target.host} printed nothing`, 'no token', ctx);
    if (!isCredentialValue(token)) throw failed(what, `(${source.command[0]}) for ${target.host} printed more than one line (or a NUL, or over 16 KiB); it must print the token alone`, 'not one line', ctx);
    return { username: source.username ?? DEFAULT_TOKEN_USERNAME, password: token };
  }

  async function get(payload: Payload, ctx: RequestContext): Promise<GitGetResponse> {
    const parsed = getRequest.safeParse(payload);
    if (!parsed.success) {
      throw new BrokerError('INVALID_REQUEST', `get needs {"protocol": "https", "host": "<host[:port]>", "path": "<repository path>"}: ${describeIssues(parsed.error)}`);
    }
    const judged = gitTarget(parsed.data);
    if ('problem' in judged) {
      throw new BrokerError('INVALID_REQUEST', `cannot judge the request: ${judged.problem}`, { detail: judged.problem });
    }
    const target = judged.target;
    const url = describeTarget(target);
    ctx.detail = url;
    const decision = gitDecision(ctx.policy.git, target);
    if (!decision.allowed) {
      const code = decision.code ?? GitCode.GIT_HOST_NOT_ALLOWED;
      const message = code === GitCode.GIT_HOST_NOT_ALLOWED
        ? `no git credentials for ${url} in shed ${ctx.shed}: ${decision.rule}; change git.allowed in the host policy if it should have them`
        : `git-credentials is disabled for shed ${ctx.shed} by the host policy`;
      throw new BrokerError(code, message, { detail: `${url}: ${decision.rule} (${code})` });
    }
    if (gated(ctx.policy.approval, NS)) await ctx.approve({ subject: url, description: `git credentials for ${url}` });
    const source = sourceFor(ctx.policy.git, target);
    const found = source ? await fromCommand(source, target, ctx) : await fill(target, ctx);
    if (!found) {
      throw new BrokerError(GitCode.CREDENTIALS_NOT_FOUND, `the host has no git credentials for ${target.protocol}://${target.host}; store them on the host (a git clone there, \`gh auth login\`, \`git credential approve\`), or name a command in git.sources`, {
        result: 'error',
        detail: `${url}: no credentials (git credential fill)`,
      });
    }
    ctx.detail = `${url} via ${source ? `git.sources.${source.key} command` : 'git credential fill'}`;
    return found;
  }

  function status(ctx: RequestContext): GitStatusResponse {
    const policy = ctx.policy.git;
    const sources = Object.keys(policy.sources).length;
    const answer: GitStatusResponse = { connected: true, allowed_count: policy.allowed.length, source_count: sources };
    const missing = findExecutable(git, env.PATH ?? '');
    if (missing && sources === 0) {
      return { ...answer, connected: false, problem: 'git is not installed on the host (not on shed-host-agent\'s PATH): install git there, or name a command in git.sources' };
    }
    return answer;
  }

  return {
    namespace: NS,
    operations: OPERATIONS[NS],
    async handle(operation, payload, ctx) {
      switch (operation) {
        case 'get':
          return get(payload, ctx);
        case 'status':
          return status(ctx);
        default:
          throw unknownOperation(NS, operation);
      }
    },
  };
}
