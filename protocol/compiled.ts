/**
 * Schemas on a request's path, compiled once they are in steady use.
 *
 * zod's `compile` generates the parser of a schema as code (`new Function`):
 * the same answers, with the interpreted parser behind it for everything the
 * generated one does not accept, and 3 to 4 times faster, which is ~10 µs a
 * request per schema on a small VM between two other processes' work. It
 * costs 1 to 8 ms to generate, so a schema is compiled only after it has
 * parsed COMPILE_AFTER values: the services compile theirs in their first
 * requests, and a one-shot program (docker-credential-shed) never pays.
 */
import * as z from 'zod/mini';

export const COMPILE_AFTER = 8;

export interface CompiledSchema<T extends z.ZodMiniType> {
  safeParse(value: unknown): ReturnType<T['safeParse']>;
  /** Whether the generated parser is in use yet. */
  readonly compiled: boolean;
}

export function compiledOnceHot<T extends z.ZodMiniType>(schema: T): CompiledSchema<T> {
  let uses = 0;
  let fast: T | undefined;
  return {
    safeParse(value: unknown) {
      if (!fast && ++uses >= COMPILE_AFTER) fast = z.compile(schema);
      return (fast ?? schema).safeParse(value) as ReturnType<T['safeParse']>;
    },
    get compiled() {
      return fast !== undefined;
    },
  };
}
