/** docker-credentials namespace payloads (PROTOCOL.md section 4). */
import * as z from 'zod/mini';

export const DockerGetRequest = z.object({ server_url: z.string().check(z.minLength(1), z.maxLength(2048)) });
export type DockerGetRequest = z.infer<typeof DockerGetRequest>;

export const DockerGetResponse = z.object({ server_url: z.string(), username: z.string(), secret: z.string() });
export type DockerGetResponse = z.infer<typeof DockerGetResponse>;

export const DockerListResponse = z.object({ registries: z.record(z.string(), z.string()) });
export type DockerListResponse = z.infer<typeof DockerListResponse>;

export const DockerStatusResponse = z.looseObject({ connected: z.boolean(), allow_all: z.boolean(), registry_count: z.int() });
export type DockerStatusResponse = z.infer<typeof DockerStatusResponse>;

/** Docker's own text for "no credentials here"; Docker and skopeo then go anonymous. */
export const CREDENTIALS_NOT_FOUND_TEXT = 'credentials not found in native keychain';
