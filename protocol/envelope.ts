/**
 * The bus envelope and shed-agent's publish API (PROTOCOL.md sections 1 and 2).
 *
 * Schemas use zod/mini: the guest's one-shot docker helper imports this module,
 * and full zod costs ~60 ms of start-up where zod/mini costs a few.
 */
import * as z from 'zod/mini';

export const NAMESPACES = ['ssh-agent', 'aws-credentials', 'docker-credentials', 'git-credentials'] as const;
export type Namespace = (typeof NAMESPACES)[number];

export function isNamespace(value: string): value is Namespace {
  return (NAMESPACES as readonly string[]).includes(value);
}

/** Each namespace's operations (PROTOCOL.md section 4, and `bind`); `ping` is every namespace's. */
export const OPERATIONS: Record<Namespace, readonly string[]> = {
  'ssh-agent': ['list', 'sign', 'bind', 'status'],
  'aws-credentials': ['get_credentials', 'status'],
  'docker-credentials': ['get', 'list', 'status', 'store', 'erase'],
  'git-credentials': ['get', 'status'],
};

export function isOperation(namespace: string, operation: string): boolean {
  return operation === 'ping' || (isNamespace(namespace) && OPERATIONS[namespace].includes(operation));
}

/** shed's rule: lowercase letters, digits, hyphens; starts with a letter; no trailing hyphen; at most 63. */
export const SHED_NAME_RE = /^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export function isShedName(value: string): boolean {
  return SHED_NAME_RE.test(value);
}

/** Largest publish body shed-agent accepts, and largest SSE data line shed-server sends. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** The longest namespace name an envelope may carry. */
export const MAX_NAMESPACE_LENGTH = 128;

/** shed-agent's own wait limit for a request. */
export const AGENT_WAIT_LIMIT_MS = 30_000;

export const MessageType = z.enum(['request', 'response', 'event']);
export type MessageType = z.infer<typeof MessageType>;

/** `shed` as set by shed-server; extra fields are kept (shed may add more). */
export const ShedInfo = z.looseObject({
  name: z.string().check(z.regex(SHED_NAME_RE)),
  backend: z.optional(z.string()),
  server: z.optional(z.string()),
});
export type ShedInfo = z.infer<typeof ShedInfo>;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const Payload = z.record(z.string(), z.unknown());
export type Payload = z.infer<typeof Payload>;

export const Envelope = z.object({
  id: z.string().check(z.regex(UUID_RE)),
  namespace: z.string().check(z.minLength(1), z.maxLength(MAX_NAMESPACE_LENGTH)),
  type: MessageType,
  in_reply_to: z.optional(z.string()),
  final: z._default(z.boolean(), true),
  timestamp: z.string().check(z.minLength(1)),
  payload: Payload,
  shed: z.optional(ShedInfo),
});
export type Envelope = z.infer<typeof Envelope>;

/** Body of `POST /v1/publish`. `type` defaults to `request`. */
export const PublishRequest = z.object({
  namespace: z.string(),
  type: z.optional(z.string()),
  payload: z.optional(Payload),
});
export type PublishRequest = z.infer<typeof PublishRequest>;

/** Error body of the publish API and of shed-server's plugin API. */
export const ApiErrorBody = z.object({
  error: z.object({ code: z.string(), message: z.string() }),
});
export type ApiErrorBody = z.infer<typeof ApiErrorBody>;

/** An error answered inside a response payload (HTTP 200: the bus delivered it). */
export const ErrorPayload = z.looseObject({ error: z.string(), code: z.string() });
export type ErrorPayload = z.infer<typeof ErrorPayload>;

export function isErrorPayload(payload: Payload): payload is ErrorPayload {
  return typeof payload.error === 'string' && typeof payload.code === 'string';
}

export function errorPayload(code: string, message: string): ErrorPayload {
  return { error: message, code };
}

export function apiErrorBody(code: string, message: string): ApiErrorBody {
  return { error: { code, message } };
}

/** Short description of why a value failed a schema, safe to show (paths and issue kinds, never values). */
export function describeIssues(error: { issues: ReadonlyArray<{ path: PropertyKey[]; code: string; message: string }> }): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => {
      const where = issue.path.length ? issue.path.map(String).join('.') : '(root)';
      return `${where}: ${issue.code.replace(/_/g, ' ')}`;
    })
    .join('; ');
}
