/**
 * Schemas on a request's path, compiled once they are in steady use.
 *
 * zod's `compile` generates the parser of a schema as code (`new Function`):
 * the same answers, with the interpreted parser behind it for everything the
 * generated one does not accept, and 3 to 4 times faster, which is ~10 µs a
 * request per schema on a small VM between two other processes' work. It
 * costs 1 to 8 ms to generate, so a schema is compiled only after it has
 * parsed COMPILE_AFTER values, and only in a program that opted in at start
 * with `compileHotSchemas(z.compile)`: the services do; the one-shot docker
 * helper does not, and its bundle leaves zod's compiler out (it would double
 * the file it loads on every registry operation).
 */
import type * as z from 'zod/mini';

export const COMPILE_AFTER = 8;

type Compile = <T extends z.ZodMiniType>(schema: T) => T;
let compile: Compile | undefined;

/** Let schemas wrapped by compiledOnceHot compile from now on (pass zod/mini's `compile`). */
export function compileHotSchemas(fn: Compile): void {
  compile = fn;
}

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
      if (!fast && compile && ++uses >= COMPILE_AFTER) fast = compile(schema);
      return (fast ?? schema).safeParse(value) as ReturnType<T['safeParse']>;
    },
    get compiled() {
      return fast !== undefined;
    },
  };
}
