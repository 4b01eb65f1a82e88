/**
 * Host-side AWS fixtures for the aws-credentials tests: a test STS with a
 * source key, and shared config/credentials files whose profiles use it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from './procs.js';
import { StsEmulator, type SourceKey } from './sts-emulator.js';

export const SOURCE: SourceKey = {
  accessKeyId: 'AKIASHEDTESTSOURCE01',
  secretAccessKey: 'hostSourceSecret/DoNotLeak0123456789abcd',
  arn: 'arn:aws:iam::111122223333:user/developer',
};

export const ROLE_DEV = 'arn:aws:iam::123456789012:role/dev';
export const ROLE_STAGING = 'arn:aws:iam::123456789012:role/staging-readonly';
export const ROLE_OTHER = 'arn:aws:iam::123456789012:role/other';

export interface AwsHostFixture {
  sts: StsEmulator;
  dir: string;
  configFile: string;
  credentialsFile: string;
  stop(): Promise<void>;
}

/** What the failing `leaky` credential_process prints on stdout and stderr before it fails: must reach no guest and no log. */
export const LEAKED = 'leakedSessionToken/DoNotShowThis0123456789';

/**
 * Profiles: `default` (static source keys in the credentials file), `proc`
 * (the same keys from credential_process, to show the SDK's own chain is
 * what loads them), and `leaky` (a credential_process that prints a secret
 * and fails, as a broken SSO or vault helper does).
 */
export async function startAwsHost(options: { assumeDelayMs?: number } = {}): Promise<AwsHostFixture> {
  const sts = new StsEmulator({ sourceKeys: [SOURCE], roles: [ROLE_DEV, ROLE_STAGING], assumeDelayMs: options.assumeDelayMs });
  await sts.start();
  const dir = tempDir('aws-host');
  const configFile = path.join(dir, 'config');
  const credentialsFile = path.join(dir, 'credentials');
  const procJson = JSON.stringify({ Version: 1, AccessKeyId: SOURCE.accessKeyId, SecretAccessKey: SOURCE.secretAccessKey });
  const procScript = path.join(dir, 'creds.sh');
  fs.writeFileSync(procScript, `#!/bin/sh\nprintf '%s' '${procJson}'\n`, { mode: 0o700 });
  const leakyScript = path.join(dir, 'leaky.sh');
  fs.writeFileSync(leakyScript, `#!/bin/sh\necho 'partial {"SessionToken":"${LEAKED}"'\necho 'token ${LEAKED} expired' >&2\nexit 3\n`, { mode: 0o700 });
  fs.writeFileSync(configFile, `[default]\nregion = us-east-1\n\n[profile proc]\ncredential_process = ${procScript}\n\n[profile leaky]\ncredential_process = ${leakyScript}\n`, { mode: 0o600 });
  fs.writeFileSync(credentialsFile, `[default]\naws_access_key_id = ${SOURCE.accessKeyId}\naws_secret_access_key = ${SOURCE.secretAccessKey}\n`, { mode: 0o600 });
  return { sts, dir, configFile, credentialsFile, stop: () => sts.stop() };
}
