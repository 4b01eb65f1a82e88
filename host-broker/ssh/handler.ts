/**
 * The ssh-agent namespace: signatures with the host's SSH keys for a shed,
 * decided by the shed's `ssh:` policy. No private key ever leaves this
 * process: the guest gets public keys and signatures.
 *
 * Where keys and signatures come from is a backend (backends.ts:
 * agent-forward, local-keys, auto). Keys are opaque blobs: certificates and
 * security keys pass through, and a certificate counts as the key it
 * certifies (its fingerprint is that key's, as `ssh-keygen -lf` prints it).
 *
 * Rules (rules.ts): `allowed_keys` filters `list` and refuses `sign`;
 * `signing_namespaces` governs SSHSIG data; `allowed_hosts` restricts user
 * authentication to servers whose host key is listed, proven by a `bind`
 * (session-bind@openssh.com) whose server signature verified. Whether a
 * human approves is the approval module's one decision (`gated`).
 */
import os from 'node:os';
import { CommonCode, SshCode } from '../../protocol/codes.js';
import { compiledOnceHot } from '../../protocol/compiled.js';
import { describeIssues, OPERATIONS, type Payload } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import { SshBindRequest, SshSignRequest, type SshBindResponse, type SshKey, type SshListResponse, type SshSignResponse, type SshStatusResponse } from '../../protocol/ssh-agent.js';
import { gated } from '../approval/approvals.js';
import { BrokerError, unknownOperation, type NamespaceHandler, type RequestContext } from '../handler.js';
import type { AgentClientOptions } from './agent-client.js';
import { SshBackends, type Identity, type SshBackend } from './backends.js';
import { MAX_SESSION_ID, SessionBindings, verifySessionSignature } from './bindings.js';
import { hostKeyDecision, keyDecision, signingNamespaceDecision } from './rules.js';
import { blobType, describeKey, fingerprint, keyFingerprint, looksLikeSshsig, parseCertificate, parseSshsigNamespace, parseUserAuthRequest } from './wire.js';

const NS = 'ssh-agent';
const signRequest = compiledOnceHot(SshSignRequest);
const bindRequest = compiledOnceHot(SshBindRequest);

export interface SshHandlerDeps {
  log: Logger;
  /** `SSH_AUTH_SOCK` comes from here; the broker's own environment by default. */
  env?: NodeJS.ProcessEnv;
  /** Whose `~/.ssh` local-keys reads; `os.homedir()` at each request by default. */
  homedir?: () => string;
  bindings?: SessionBindings;
  agent?: AgentClientOptions;
}

export function createSshHandler(deps: SshHandlerDeps): NamespaceHandler {
  const bindings = deps.bindings ?? new SessionBindings();
  const backends = new SshBackends({ log: deps.log, env: deps.env, homedir: deps.homedir ?? (() => os.homedir()), agent: deps.agent });
  const backendOf = (ctx: RequestContext): SshBackend => backends.for(ctx.policy.ssh, { shed: ctx.shed, log: ctx.log });

  async function list(ctx: RequestContext): Promise<SshListResponse> {
    const keys = await backendOf(ctx).list(ctx.signal);
    const shown = keys.filter((k) => keyDecision(ctx.policy.ssh, k.fingerprint).allowed);
    const hidden = keys.length - shown.length;
    ctx.detail = `${shown.map((k) => k.fingerprint).join(',') || '(no keys)'}${hidden ? ` (+${hidden} not in allowed_keys)` : ''}`.slice(0, 900);
    return { keys: shown.map(toWireKey) };
  }

  async function status(ctx: RequestContext): Promise<SshStatusResponse> {
    const backend = backendOf(ctx);
    try {
      const keys = await backend.list(ctx.signal);
      const allowed = keys.filter((k) => keyDecision(ctx.policy.ssh, k.fingerprint).allowed);
      return { connected: true, mode: backend.mode, key_count: allowed.length };
    } catch (err) {
      if (!(err instanceof BrokerError)) throw err;
      return { connected: false, mode: ctx.policy.ssh.mode, key_count: 0, problem: err.message };
    }
  }

  /**
   * What the data to sign is, checked against the shed's rules. Returns a
   * description for the approval prompt; throws the refusal.
   */
  function checkData(ctx: RequestContext, key: Buffer, fp: string, data: Buffer): string {
    const ssh = ctx.policy.ssh;
    const refuse = (code: string, message: string, rule: string): BrokerError =>
      new BrokerError(code, message, { detail: `${fp}: ${rule}`.slice(0, 900) });

    const namespace = parseSshsigNamespace(data);
    if (namespace !== undefined) {
      const d = signingNamespaceDecision(ssh, namespace);
      if (!d.allowed) {
        throw refuse(d.code ?? SshCode.SIGNING_NAMESPACE_NOT_ALLOWED,
          `shed ${ctx.shed} may not make SSHSIG signatures in namespace ${JSON.stringify(namespace.slice(0, 64))}; the host policy's ssh.signing_namespaces decides (${d.rule})`, d.rule);
      }
      return `an SSHSIG signature in namespace ${JSON.stringify(namespace.slice(0, 64))}`;
    }
    if (looksLikeSshsig(data) && ssh.signing_namespaces !== undefined) {
      throw refuse(SshCode.SIGNING_NAMESPACE_NOT_ALLOWED, 'the data starts like an SSHSIG signature but does not parse as one; refused because ssh.signing_namespaces is set', 'malformed SSHSIG data');
    }

    const auth = parseUserAuthRequest(data);
    if (auth) {
      // ssh logs in with a certificate by asking its plain key to sign a
      // request that names the certificate: the audit line names it.
      const cert = parseCertificate(auth.key);
      const certified = cert?.key.equals(key) === true;
      if (certified) ctx.detail = describeKey(auth.key);
      const who = `an ssh login as ${JSON.stringify(auth.user.slice(0, 64))}${certified ? ` with certificate ${JSON.stringify(cert!.keyId.slice(0, 64))}` : ''}`;
      if (ssh.allowed_hosts === undefined) return who;
      if (!auth.key.equals(key) && !certified) {
        throw refuse(SshCode.HOST_NOT_ALLOWED, 'the login request names another key than the one asked to sign it; refused', 'user-auth request for another key');
      }
      const bound = bindings.lookup(ctx.shed, auth.sessionId);
      if (!bound) {
        throw refuse(SshCode.HOST_NOT_ALLOWED,
          `logins from shed ${ctx.shed} are restricted to the servers in ssh.allowed_hosts, and this ssh session was not bound to a server host key; use OpenSSH 8.9 or newer in the shed, talking to this agent directly`,
          'session not bound (no session-bind, or it expired)');
      }
      if (bound.forwarding) {
        throw refuse(SshCode.HOST_NOT_ALLOWED, 'this session id was bound for agent forwarding, not for a login; refused', 'session bound for forwarding');
      }
      if (auth.hostkey && !auth.hostkey.equals(bound.hostkey)) {
        throw refuse(SshCode.HOST_NOT_ALLOWED, 'the server host key in the login request differs from the one the session was bound to; refused', 'hostbound key differs from the session binding');
      }
      const hostFp = fingerprint(bound.hostkey);
      const d = hostKeyDecision(ssh, bound.hostkey);
      if (!d.allowed) {
        throw refuse(d.code ?? SshCode.HOST_NOT_ALLOWED,
          `shed ${ctx.shed} may not log in to the server with host key ${hostFp}: it is not in the host policy's ssh.allowed_hosts`, d.rule);
      }
      return `${who} to the server with host key ${hostFp}`;
    }

    if (ssh.allowed_hosts !== undefined) {
      throw refuse(SshCode.HOST_NOT_ALLOWED,
        `shed ${ctx.shed}'s keys are restricted by ssh.allowed_hosts, and this data is neither an ssh login nor an SSHSIG signature; refused`,
        'unidentified data under allowed_hosts');
    }
    return 'arbitrary data';
  }

  async function sign(payload: Payload, ctx: RequestContext): Promise<SshSignResponse> {
    const parsed = signRequest.safeParse(payload);
    if (!parsed.success) {
      throw new BrokerError(CommonCode.INVALID_REQUEST, `sign needs {"public_key","data","flags"} in base64: ${describeIssues(parsed.error)}`);
    }
    const blob = Buffer.from(parsed.data.public_key, 'base64');
    const data = Buffer.from(parsed.data.data, 'base64');
    const flags = parsed.data.flags;
    if (!blobType(blob)) throw new BrokerError(CommonCode.INVALID_REQUEST, 'public_key is not an SSH public key blob');
    // A certificate counts as the key it certifies; the audit line names it too.
    const fp = keyFingerprint(blob);
    ctx.detail = parseCertificate(blob) ? describeKey(blob) : fp;

    const kd = keyDecision(ctx.policy.ssh, fp);
    if (!kd.allowed) {
      throw new BrokerError(kd.code ?? SshCode.KEY_NOT_ALLOWED, `key ${fp} is not allowed for shed ${ctx.shed}; add it to ssh.allowed_keys in the host policy`, { detail: `${ctx.detail}: ${kd.rule}` });
    }
    const purpose = checkData(ctx, blob, fp, data);
    const backend = backendOf(ctx);
    // Do not ask a human to approve a key the host does not hold; without a gate, the sign itself finds out.
    if (gated(ctx.policy.approval, NS) && !(await backend.holds(blob, ctx.signal))) {
      throw new BrokerError(SshCode.KEY_NOT_FOUND, `the host has no key ${fp} (${backend.describe()}); load it on the host (ssh-add) or check ssh.keys`, { result: 'error', detail: `${ctx.detail}: not held by the host` });
    }
    await ctx.approve({ subject: fp, description: `sign with ${describeKey(blob)} for ${purpose}` });
    const sig = await backend.sign(blob, data, flags, ctx.signal);
    return { format: sig.format, blob: sig.blob.toString('base64'), rest: sig.rest.toString('base64') };
  }

  async function bind(payload: Payload, ctx: RequestContext): Promise<SshBindResponse> {
    const parsed = bindRequest.safeParse(payload);
    if (!parsed.success) {
      throw new BrokerError(CommonCode.INVALID_REQUEST, `bind needs {"hostkey","session_id","signature"} in base64 and "is_forwarding": ${describeIssues(parsed.error)}`);
    }
    const hostkey = Buffer.from(parsed.data.hostkey, 'base64');
    const sessionId = Buffer.from(parsed.data.session_id, 'base64');
    const signature = Buffer.from(parsed.data.signature, 'base64');
    const hostFp = blobType(hostkey) ? fingerprint(hostkey) : '(not a key)';
    ctx.detail = `host key ${hostFp}`;
    if (sessionId.length > MAX_SESSION_ID) {
      throw new BrokerError(SshCode.BIND_FAILED, `session id of ${sessionId.length} bytes is longer than ${MAX_SESSION_ID}`, { detail: `host key ${hostFp}: session id too long` });
    }
    if (!verifySessionSignature(hostkey, sessionId, signature)) {
      throw new BrokerError(SshCode.BIND_FAILED, 'the server\'s signature over the session id does not verify with the given host key; the session is not bound', { detail: `host key ${hostFp}: signature does not verify` });
    }
    bindings.bind(ctx.shed, sessionId, hostkey, parsed.data.is_forwarding);
    const ssh = ctx.policy.ssh;
    if (ssh.allowed_hosts !== undefined) {
      const d = hostKeyDecision(ssh, hostkey);
      ctx.detail = `host key ${hostFp}${parsed.data.is_forwarding ? ' (forwarding)' : ''}: ${d.allowed ? 'in allowed_hosts' : 'not in allowed_hosts'}`;
    } else if (parsed.data.is_forwarding) {
      ctx.detail += ' (forwarding)';
    }
    return { bound: true };
  }

  return {
    namespace: NS,
    operations: OPERATIONS[NS],
    async handle(operation, payload, ctx) {
      switch (operation) {
        case 'list':
          return list(ctx);
        case 'sign':
          return sign(payload, ctx);
        case 'bind':
          return bind(payload, ctx);
        case 'status':
          return status(ctx);
        default:
          throw unknownOperation(NS, operation);
      }
    },
    async close() {
      backends.close();
      bindings.clear();
    },
  };
}

function toWireKey(k: Identity): SshKey {
  return { format: blobType(k.blob) ?? 'unknown', blob: k.blob.toString('base64'), comment: k.comment };
}
