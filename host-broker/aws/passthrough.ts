/**
 * `aws.mode: passthrough`: the source profile's own session credentials,
 * handed to the shed as they are (SSO, SAML, `credential_process`, a
 * session written into ~/.aws/credentials), for setups where there is no
 * role to assume. They are loaded afresh on every request with the SDK's own
 * provider chain (files re-read, nothing cached here), so a fresh `aws sso
 * login` on the host shows in the next answer.
 *
 * Only session credentials pass: a profile that yields long-lived keys (no
 * session token) is refused, since long-lived keys never enter a VM.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fromIni } from '@aws-sdk/credential-providers';
import { AwsCode } from '../../protocol/codes.js';
import { BrokerError } from '../handler.js';
import type { EffectiveAws } from '../policy/effective.js';
import type { IssuedCredentials } from './cache.js';
import { DEFAULT_STS_REGION, describeSourceError, SourceCredentialsError } from './sts.js';

export interface PassthroughOptions {
  /** The shared config file (`$AWS_CONFIG_FILE`, else `~/.aws/config`, when unset). */
  configFile?: string;
  /** The shared credentials file (`$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`, when unset). */
  credentialsFile?: string;
  now: () => number;
}

/**
 * How long a guest may keep session credentials whose end nobody wrote
 * down (a session pasted into ~/.aws/credentials without an expiry key):
 * short, so the guest asks again soon and sees what the host has then.
 */
export const UNKNOWN_EXPIRY_MS = 20 * 60_000;

/** The keys tools write beside a session in the shared files to say when it ends (saml2aws, gimme-aws-creds, aws-vault…). */
const EXPIRY_KEYS = ['aws_session_expiration', 'x_security_token_expires', 'aws_expiration', 'aws_credential_expiration', 'expiration'];

export interface PassthroughCredentials extends IssuedCredentials {
  /** False when the expiry is this broker's guess (UNKNOWN_EXPIRY_MS), not the credentials'. */
  expiryKnown: boolean;
}

/**
 * The source profile's session credentials, read now. Throws
 * SourceCredentialsError when the profile cannot be loaded, and a
 * BrokerError (whose text holds no secret) for long-lived keys and for a
 * session that has already ended.
 */
export async function passthroughCredentials(shed: string, aws: EffectiveAws, options: PassthroughOptions): Promise<PassthroughCredentials> {
  const profile = aws.source_profile;
  let c;
  try {
    c = await fromIni({
      profile,
      filepath: options.credentialsFile,
      configFilepath: options.configFile,
      ignoreCache: true,
      clientConfig: { region: aws.region ?? DEFAULT_STS_REGION },
    })();
  } catch (err) {
    throw new SourceCredentialsError(profile, describeSourceError(err, profile));
  }
  if (!c.sessionToken) {
    throw new BrokerError(AwsCode.LONG_LIVED_CREDENTIALS,
      `AWS profile ${profile} on the host holds long-lived keys (no session token), and long-lived keys never enter a shed: `
      + `give shed ${shed} a profile with session credentials (SSO, SAML, credential_process), or use aws.mode assume-role with an aws.role`,
      { result: 'denied', detail: `passthrough ${profile}: long-lived keys refused` });
  }
  const now = options.now();
  const written = c.expiration ? undefined : expiryWritten(profile, options);
  const expiresAt = c.expiration?.getTime() ?? written ?? now + UNKNOWN_EXPIRY_MS;
  if (expiresAt <= now) {
    throw new BrokerError(AwsCode.SOURCE_CREDENTIALS_FAILED,
      `the session credentials of AWS profile ${profile} on the host ended at ${new Date(expiresAt).toISOString()}: refresh them on the host (aws sso login --profile ${profile}, or the tool that wrote them), then retry`,
      { result: 'error', detail: `passthrough ${profile}: session ended` });
  }
  return {
    accessKeyId: c.accessKeyId,
    secretAccessKey: c.secretAccessKey,
    sessionToken: c.sessionToken,
    expiresAt,
    issuedAt: now,
    expiryKnown: c.expiration !== undefined || written !== undefined,
  };
}

/**
 * The end of a session pasted into the shared files, from the key the tool
 * that wrote it put beside it; undefined when there is none (or it is not a date).
 */
export function expiryWritten(profile: string, options: Pick<PassthroughOptions, 'configFile' | 'credentialsFile'>, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const home = os.homedir();
  const credentials = options.credentialsFile ?? env.AWS_SHARED_CREDENTIALS_FILE ?? path.join(home, '.aws', 'credentials');
  const config = options.configFile ?? env.AWS_CONFIG_FILE ?? path.join(home, '.aws', 'config');
  const sections = [
    iniSection(credentials, profile),
    iniSection(config, profile === 'default' ? 'default' : `profile ${profile}`),
  ];
  for (const section of sections) {
    for (const key of EXPIRY_KEYS) {
      const value = section?.get(key);
      if (value === undefined) continue;
      const ms = Date.parse(value);
      if (!Number.isNaN(ms)) return ms;
    }
  }
  return undefined;
}

/** One section of an AWS shared config/credentials file (the INI subset they use); undefined when the file or section is not there. */
function iniSection(file: string, name: string): Map<string, string> | undefined {
  let text: string;
  try {
    if (!fs.statSync(file).isFile()) return undefined;
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  let current: Map<string, string> | undefined;
  let found: Map<string, string> | undefined;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[\s*([^\]]+?)\s*\]$/.exec(line);
    if (header) {
      current = header[1] === name ? (found ??= new Map()) : undefined;
      continue;
    }
    const eq = line.indexOf('=');
    if (current && eq > 0) current.set(line.slice(0, eq).trim().toLowerCase(), line.slice(eq + 1).trim());
  }
  return found;
}
