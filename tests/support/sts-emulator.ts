/**
 * A loopback STS for tests: the Query API (form-encoded POST, XML answers) for
 * AssumeRole and GetCallerIdentity, and it VERIFIES every call's SigV4
 * signature, written here from AWS's published Signature Version 4 spec with
 * node:crypto (not the SDK's signer, or a test would prove nothing):
 *
 *   canonical request = method \n canonical URI \n canonical query \n
 *                       canonical headers \n signed headers \n hex(sha256(body))
 *   string to sign    = AWS4-HMAC-SHA256 \n X-Amz-Date \n scope \n hex(sha256(canonical request))
 *   signing key       = HMAC chain "AWS4"+secret → date → region → service → "aws4_request"
 *
 * AssumeRole must be signed with a known source key (no session token);
 * GetCallerIdentity with either a source key or credentials this emulator
 * issued (with their X-Amz-Security-Token, signed, unexpired).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SourceKey {
  accessKeyId: string;
  secretAccessKey: string;
  /** The IAM user the key belongs to, e.g. arn:aws:iam::111122223333:user/dev. */
  arn: string;
}

export interface IssuedSession {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  expiration: Date;
  roleArn: string;
  sessionName: string;
  assumedRoleArn: string;
  /** Every AssumeRole parameter as received (RoleArn, DurationSeconds, Tags.member.1.Key, …). */
  params: Record<string, string>;
}

export interface StsCall {
  action: string;
  accessKeyId?: string;
  region?: string;
  ok: boolean;
  code?: string;
}

export interface StsFailure {
  code: string;
  message: string;
  status: number;
  /** Fail this many calls, then answer normally again; forever when unset. */
  times?: number;
}

export interface StsEmulatorOptions {
  sourceKeys: SourceKey[];
  /** Roles that may be assumed; any role ARN when unset. */
  roles?: string[];
  /** Delay before each AssumeRole answer, to let concurrent callers pile up. */
  assumeDelayMs?: number;
}

const XMLNS = 'https://sts.amazonaws.com/doc/2011-06-15/';
const MAX_SKEW_MS = 15 * 60_000;

export class StsEmulator {
  readonly calls: StsCall[] = [];
  readonly issued: IssuedSession[] = [];
  private readonly sessions = new Map<string, IssuedSession>();
  private server: http.Server | undefined;
  private failure: StsFailure | undefined;
  url = '';

  constructor(private readonly options: StsEmulatorOptions) {}

  /** Number of AssumeRole calls answered with credentials. */
  get assumeRoleCount(): number {
    return this.calls.filter((c) => c.action === 'AssumeRole' && c.ok).length;
  }

  /**
   * Accept calls signed with session credentials this STS did not issue, as
   * AWS accepts an SSO or SAML session: the test hands it the secret and
   * token it wrote into a profile, and GetCallerIdentity answers `arn`.
   */
  knowSession(session: { accessKeyId: string; secretAccessKey: string; sessionToken: string; expiration: Date; arn: string }): void {
    const [, , , , , resource] = session.arn.split(':');
    const parts = resource!.split('/');
    this.sessions.set(session.accessKeyId, {
      ...session,
      roleArn: `arn:aws:iam::${session.arn.split(':')[4]}:role/${parts[1]}`,
      sessionName: parts[2] ?? 'session',
      assumedRoleArn: session.arn,
      params: {},
    });
  }

  /** Answer the next AssumeRole calls with this error. */
  failAssumeRole(failure: StsFailure | undefined): void {
    this.failure = failure;
  }

  async start(): Promise<string> {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        this.handle(req, Buffer.concat(chunks)).then(
          ({ status, xml }) => {
            res.writeHead(status, { 'content-type': 'text/xml', 'x-amzn-requestid': requestId() });
            res.end(xml);
          },
          (err: Error) => {
            res.writeHead(500, { 'content-type': 'text/xml' });
            res.end(errorXml('Receiver', 'InternalFailure', err.message));
          },
        );
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, body: Buffer): Promise<{ status: number; xml: string }> {
    const params = Object.fromEntries(new URLSearchParams(body.toString('utf8')));
    const action = params.Action ?? '';
    const call: StsCall = { action, ok: false };
    this.calls.push(call);
    const fail = (status: number, code: string, message: string) => {
      call.code = code;
      return { status, xml: errorXml(status >= 500 ? 'Receiver' : 'Sender', code, message) };
    };
    if (req.method !== 'POST') return fail(400, 'InvalidAction', 'STS takes POST requests');
    if (params.Version !== '2011-06-15') return fail(400, 'InvalidAction', `unsupported Version ${params.Version}`);

    const auth = verifySigV4(req, body, (id) => this.secretOf(id));
    call.accessKeyId = auth.accessKeyId;
    call.region = auth.region;
    if (!auth.ok) return fail(auth.status, auth.code, auth.message);

    const session = this.sessions.get(auth.accessKeyId);
    if (session) {
      const token = headerValue(req, 'x-amz-security-token');
      if (!token || !safeEqual(token, session.sessionToken)) return fail(403, 'InvalidClientTokenId', 'The security token included in the request is invalid.');
      if (!auth.signedHeaders.includes('x-amz-security-token')) return fail(403, 'SignatureDoesNotMatch', 'X-Amz-Security-Token is not signed.');
      if (session.expiration.getTime() <= Date.now()) return fail(403, 'ExpiredToken', 'The security token included in the request is expired');
    }

    if (action === 'GetCallerIdentity') {
      const arn = session ? session.assumedRoleArn : this.sourceOf(auth.accessKeyId)!.arn;
      const account = arn.split(':')[4]!;
      const userId = session ? `AROA${roleId(session.roleArn)}:${session.sessionName}` : `AIDA${roleId(arn)}`;
      call.ok = true;
      return { status: 200, xml: `<GetCallerIdentityResponse xmlns="${XMLNS}"><GetCallerIdentityResult><Arn>${esc(arn)}</Arn><UserId>${esc(userId)}</UserId><Account>${account}</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>${requestId()}</RequestId></ResponseMetadata></GetCallerIdentityResponse>` };
    }
    if (action !== 'AssumeRole') return fail(400, 'InvalidAction', `Could not find operation ${action} for version 2011-06-15`);

    if (session) return fail(403, 'AccessDenied', 'this test STS takes AssumeRole only from source keys');
    if (this.options.assumeDelayMs) await new Promise((r) => setTimeout(r, this.options.assumeDelayMs));
    if (this.failure) {
      const f = this.failure;
      if (f.times !== undefined && --f.times <= 0) this.failure = undefined;
      return fail(f.status, f.code, f.message);
    }
    const roleArn = params.RoleArn ?? '';
    const sessionName = params.RoleSessionName ?? '';
    const duration = Number(params.DurationSeconds ?? 3600);
    if (!/^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]+$/.test(roleArn)) return fail(400, 'ValidationError', 'RoleArn is not a role ARN');
    if (!/^[\w+=,.@-]{2,64}$/.test(sessionName)) return fail(400, 'ValidationError', `1 validation error detected: Value '${sessionName}' at 'roleSessionName' failed to satisfy constraint`);
    if (!Number.isInteger(duration) || duration < 900 || duration > 43_200) return fail(400, 'ValidationError', 'DurationSeconds must be between 900 and 43200');
    if (this.options.roles && !this.options.roles.includes(roleArn)) {
      return fail(403, 'AccessDenied', `User: ${this.sourceOf(auth.accessKeyId)!.arn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`);
    }
    const [, , , , account, resource] = roleArn.split(':');
    const roleName = resource!.split('/').pop()!;
    const issued: IssuedSession = {
      accessKeyId: `ASIA${randomId(16)}`,
      secretAccessKey: randomBytes(30).toString('base64'),
      sessionToken: `IQoJ${randomBytes(180).toString('base64')}`,
      expiration: new Date(Math.floor(Date.now() / 1000) * 1000 + duration * 1000),
      roleArn,
      sessionName,
      assumedRoleArn: `arn:aws:sts::${account}:assumed-role/${roleName}/${sessionName}`,
      params,
    };
    this.sessions.set(issued.accessKeyId, issued);
    this.issued.push(issued);
    call.ok = true;
    const sourceIdentity = params.SourceIdentity ? `<SourceIdentity>${esc(params.SourceIdentity)}</SourceIdentity>` : '';
    return {
      status: 200,
      xml: `<AssumeRoleResponse xmlns="${XMLNS}"><AssumeRoleResult>${sourceIdentity}<AssumedRoleUser><AssumedRoleId>AROA${roleId(roleArn)}:${esc(sessionName)}</AssumedRoleId><Arn>${esc(issued.assumedRoleArn)}</Arn></AssumedRoleUser>`
        + `<Credentials><AccessKeyId>${issued.accessKeyId}</AccessKeyId><SecretAccessKey>${esc(issued.secretAccessKey)}</SecretAccessKey><SessionToken>${esc(issued.sessionToken)}</SessionToken><Expiration>${issued.expiration.toISOString().replace(/\.\d{3}Z$/, 'Z')}</Expiration></Credentials>`
        + `<PackedPolicySize>6</PackedPolicySize></AssumeRoleResult><ResponseMetadata><RequestId>${requestId()}</RequestId></ResponseMetadata></AssumeRoleResponse>`,
    };
  }

  private sourceOf(accessKeyId: string): SourceKey | undefined {
    return this.options.sourceKeys.find((k) => k.accessKeyId === accessKeyId);
  }

  private secretOf(accessKeyId: string): string | undefined {
    return this.sourceOf(accessKeyId)?.secretAccessKey ?? this.sessions.get(accessKeyId)?.secretAccessKey;
  }
}

type Verdict =
  | { ok: true; accessKeyId: string; region: string; signedHeaders: string[] }
  | { ok: false; status: number; code: string; message: string; accessKeyId?: string; region?: string };

/** Check a request's `Authorization: AWS4-HMAC-SHA256 …` header against the body as received. */
export function verifySigV4(req: http.IncomingMessage, body: Buffer, secretOf: (accessKeyId: string) => string | undefined, now = Date.now()): Verdict & { signedHeaders: string[] } {
  const deny = (status: number, code: string, message: string, extra: { accessKeyId?: string; region?: string } = {}) =>
    ({ ok: false as const, status, code, message, signedHeaders: [] as string[], ...extra });
  const authorization = headerValue(req, 'authorization');
  if (!authorization) return deny(400, 'MissingAuthenticationToken', 'Request is missing Authentication Token');
  const m = /^AWS4-HMAC-SHA256 Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$/.exec(authorization);
  if (!m) return deny(400, 'IncompleteSignature', 'Authorization header is not a complete AWS4-HMAC-SHA256 signature');
  const [, credential, signedHeaderList, signature] = m as unknown as [string, string, string, string];
  const scopeParts = credential.split('/');
  if (scopeParts.length !== 5 || scopeParts[4] !== 'aws4_request') return deny(400, 'IncompleteSignature', 'malformed credential scope');
  const [accessKeyId, scopeDate, region, service] = scopeParts as [string, string, string, string, string];
  const extra = { accessKeyId, region };
  if (service !== 'sts') return deny(403, 'SignatureDoesNotMatch', `credential scope names service ${service}, not sts`, extra);
  const amzDate = headerValue(req, 'x-amz-date');
  if (!amzDate || !/^\d{8}T\d{6}Z$/.test(amzDate)) return deny(400, 'IncompleteSignature', 'X-Amz-Date is missing or malformed', extra);
  if (amzDate.slice(0, 8) !== scopeDate) return deny(403, 'SignatureDoesNotMatch', 'credential scope date differs from X-Amz-Date', extra);
  const signedAt = Date.parse(`${amzDate.slice(0, 4)}-${amzDate.slice(4, 6)}-${amzDate.slice(6, 8)}T${amzDate.slice(9, 11)}:${amzDate.slice(11, 13)}:${amzDate.slice(13, 15)}Z`);
  if (Math.abs(now - signedAt) > MAX_SKEW_MS) return deny(403, 'SignatureDoesNotMatch', 'Signature expired: the request time is too far from the server time', extra);
  const secret = secretOf(accessKeyId);
  if (!secret) return deny(403, 'InvalidClientTokenId', 'The security token included in the request is invalid.', extra);

  const signedHeaders = signedHeaderList.split(';');
  if (!signedHeaders.includes('host')) return deny(403, 'SignatureDoesNotMatch', 'the host header must be signed', extra);
  if ([...signedHeaders].sort().join(';') !== signedHeaderList) return deny(403, 'SignatureDoesNotMatch', 'SignedHeaders must be sorted', extra);
  const grouped = groupHeaders(req.rawHeaders);
  const canonicalHeaders: string[] = [];
  for (const name of signedHeaders) {
    const values = grouped.get(name);
    if (!values) return deny(403, 'SignatureDoesNotMatch', `signed header ${name} is not in the request`, extra);
    canonicalHeaders.push(`${name}:${values.map((v) => v.trim().replace(/\s+/g, ' ')).join(',')}\n`);
  }
  const rawUrl = req.url ?? '/';
  const q = rawUrl.indexOf('?');
  const rawPath = q < 0 ? rawUrl : rawUrl.slice(0, q);
  const rawQuery = q < 0 ? '' : rawUrl.slice(q + 1);
  const canonicalRequest = [
    req.method,
    canonicalUri(rawPath),
    canonicalQuery(rawQuery),
    canonicalHeaders.join(''),
    signedHeaderList,
    sha256Hex(body),
  ].join('\n');
  const scope = `${scopeDate}/${region}/${service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  let key: Buffer = hmac(`AWS4${secret}`, scopeDate);
  for (const part of [region, service, 'aws4_request']) key = hmac(key, part);
  const expected = hmac(key, stringToSign).toString('hex');
  if (!safeEqual(expected, signature)) {
    return deny(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.', extra);
  }
  return { ok: true, accessKeyId, region, signedHeaders };
}

/** RFC 3986 encoding as SigV4 specifies: unreserved characters as they are, everything else %XX uppercase. */
export function uriEncode(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** Each path segment encoded again (services other than S3 double-encode the path as sent). */
function canonicalUri(rawPath: string): string {
  const path = rawPath || '/';
  return path.split('/').map(uriEncode).join('/');
}

function canonicalQuery(rawQuery: string): string {
  if (!rawQuery) return '';
  const pairs = rawQuery.split('&').filter(Boolean).map((p) => {
    const eq = p.indexOf('=');
    const k = decodeURIComponent((eq < 0 ? p : p.slice(0, eq)).replace(/\+/g, ' '));
    const v = eq < 0 ? '' : decodeURIComponent(p.slice(eq + 1).replace(/\+/g, ' '));
    return [uriEncode(k), uriEncode(v)] as const;
  });
  pairs.sort((a, b) => (a[0] === b[0] ? cmp(a[1], b[1]) : cmp(a[0], b[0])));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function groupHeaders(raw: string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const list = out.get(name) ?? [];
    list.push(raw[i + 1]!);
    out.set(name, list);
  }
  return out;
}

function headerValue(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function hmac(key: string | Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function errorXml(type: string, code: string, message: string): string {
  return `<ErrorResponse xmlns="${XMLNS}"><Error><Type>${type}</Type><Code>${esc(code)}</Code><Message>${esc(message)}</Message></Error><RequestId>${requestId()}</RequestId></ErrorResponse>`;
}

function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function randomId(n: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  return [...randomBytes(n)].map((b) => alphabet[b % 32]).join('');
}

function roleId(arn: string): string {
  return createHash('sha256').update(arn).digest('hex').slice(0, 17).toUpperCase();
}

function requestId(): string {
  const h = randomBytes(16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
