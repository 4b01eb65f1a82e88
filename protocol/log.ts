/**
 * One-line logs to stderr, shared by both sides. Callers pass facts, never
 * secrets: key fingerprints, role ARNs, registry hosts, codes. Whatever a
 * message quotes, it cannot pass for another entry or drive a terminal:
 * control characters are escaped here, the continuation lines of a
 * multi-line message (a policy's list of problems) are indented, and a
 * message is cut at MAX_LINE characters. Callers still quote others' text
 * with `printable()`, which bounds it.
 */
import { escapeControls } from './text.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** The longest message written; the rest is cut. */
export const MAX_LINE = 4096;

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export interface LoggerOptions {
  level?: LogLevel;
  /** Where lines go; stderr by default. Tests pass an array sink. */
  write?: (line: string) => void;
}

export function createLogger(program: string, options: LoggerOptions = {}): Logger {
  const envLevel = process.env.SHED_LOG_LEVEL as LogLevel | undefined;
  const min = ORDER[options.level ?? (envLevel && envLevel in ORDER ? envLevel : 'info')];
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const emit = (level: LogLevel, message: string) => {
    if (ORDER[level] < min) return;
    const cut = message.length > MAX_LINE ? `${message.slice(0, MAX_LINE)}…` : message;
    const text = cut.split('\n').map(escapeControls).join('\n    ');
    write(`${new Date().toISOString()} ${program} ${level.toUpperCase()} ${text}`);
  };
  return {
    debug: (m) => emit('debug', m),
    info: (m) => emit('info', m),
    warn: (m) => emit('warn', m),
    error: (m) => emit('error', m),
  };
}

/** A logger that keeps lines in memory (tests). */
export function memoryLogger(program = 'test'): Logger & { lines: string[] } {
  const lines: string[] = [];
  return Object.assign(createLogger(program, { level: 'debug', write: (l) => lines.push(l) }), { lines });
}

/**
 * Log lines that a peer can cause at will (a refused connection, a refused
 * request), bounded: the first line of a kind is written at once, the
 * others of that kind within `intervalMs` are counted, and one line at the
 * end of the interval says how many there were. Past `maxKinds` kinds at
 * once, new kinds share one count.
 */
export class LogThrottle {
  private readonly kinds = new Map<string, { count: number; first: string; timer: NodeJS.Timeout }>();

  constructor(
    private readonly log: Logger,
    private readonly intervalMs = 60_000,
    private readonly maxKinds = 256,
  ) {}

  warn(kind: string, message: string): void {
    const key = this.kinds.has(kind) || this.kinds.size < this.maxKinds ? kind : '(other)';
    const seen = this.kinds.get(key);
    if (seen) {
      seen.count += 1;
      return;
    }
    this.log.warn(message);
    const state = { count: 0, first: message, timer: undefined as unknown as NodeJS.Timeout };
    const report = () => {
      if (state.count === 0) {
        this.kinds.delete(key);
        return;
      }
      this.log.warn(`${state.count} more like this in the last ${Math.round(this.intervalMs / 1000)} s: ${state.first}`);
      state.count = 0;
      state.timer = setTimeout(report, this.intervalMs);
      state.timer.unref();
    };
    state.timer = setTimeout(report, this.intervalMs);
    state.timer.unref();
    this.kinds.set(key, state);
  }

  /** Forget every count (shutdown). */
  close(): void {
    for (const { timer } of this.kinds.values()) clearTimeout(timer);
    this.kinds.clear();
  }
}
