/** aws-credentials namespace payloads (PROTOCOL.md section 4). The request never names a role. */
import * as z from 'zod/mini';

export const AwsCredentialsResponse = z.object({
  access_key_id: z.string().check(z.minLength(1)),
  secret_access_key: z.string().check(z.minLength(1)),
  session_token: z.string().check(z.minLength(1)),
  expiration: z.string().check(z.minLength(1)),
});
export type AwsCredentialsResponse = z.infer<typeof AwsCredentialsResponse>;

export const AwsStatusResponse = z.looseObject({
  connected: z.boolean(),
  role: z.nullable(z.string()),
  cached_until: z.nullable(z.string()),
});
export type AwsStatusResponse = z.infer<typeof AwsStatusResponse>;

/** What the AWS SDKs' container-credentials provider reads. */
export interface ContainerCredentials {
  AccessKeyId: string;
  SecretAccessKey: string;
  Token: string;
  Expiration: string;
}

export function toContainerCredentials(c: AwsCredentialsResponse): ContainerCredentials {
  return { AccessKeyId: c.access_key_id, SecretAccessKey: c.secret_access_key, Token: c.session_token, Expiration: c.expiration };
}
