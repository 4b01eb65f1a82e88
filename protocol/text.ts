/**
 * Text that someone else wrote (a guest, a helper program, a server), made
 * safe to put where a human or a terminal reads it: a log line, the audit
 * timeline, an approval dialog. Nothing here can start a new line, move the
 * cursor, change colours, reorder text (bidi controls) or hide characters.
 */

/** C0/C1 controls, format characters (bidi, zero-width), line and paragraph separators, lone surrogates. */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/u;
const UNSAFE_ALL = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;
const UNSAFE_OR_BACKSLASH = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\\]/gu;
const UNSAFE_OR_BACKSLASH_ONE = /^[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\\]$/u;
const HAS_UNSAFE_OR_BACKSLASH = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\\]/u;

function escapeChar(c: string): string {
  if (c === '\\') return '\\\\';
  const code = c.codePointAt(0)!;
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
}

/**
 * Every unsafe character as `\xNN` or `\u{NNNN}`; the rest unchanged. For
 * text of our own that may quote others' (log lines): backslashes stay as
 * they are.
 */
export function escapeControls(text: string): string {
  return UNSAFE.test(text) ? text.replace(UNSAFE_ALL, escapeChar) : text;
}

/**
 * Someone else's text as one printable line of at most `max` characters
 * (cut with `…`, never inside an escape): unsafe characters escaped as
 * `\xNN` or `\u{NNNN}`, and backslashes doubled so an escape cannot be forged.
 */
export function printable(text: string, max = 200): string {
  if (text.length <= max && !HAS_UNSAFE_OR_BACKSLASH.test(text)) return text;
  const head = text.length > max ? text.slice(0, max) : text;
  const escaped = head.replace(UNSAFE_OR_BACKSLASH, escapeChar);
  if (escaped.length <= max && head.length === text.length) return escaped;
  // Cut at the last whole character or escape that fits, and say so.
  let out = '';
  for (const c of head) {
    const piece = UNSAFE_OR_BACKSLASH_ONE.test(c) ? escapeChar(c) : c;
    if (out.length + piece.length > max) break;
    out += piece;
  }
  return `${out}…`;
}

/** What JSON.stringify leaves raw that a terminal acts on (it escapes C0 controls itself; the raw ones left are its own line breaks). */
const JSON_UNSAFE = /[\u007f-\u009f\p{Cf}\p{Zl}\p{Zp}]/gu;

/**
 * A value as JSON that is also safe on a terminal: the characters JSON
 * leaves raw but a terminal acts on (C1 controls, bidi and zero-width
 * format characters, line and paragraph separators) are written as `\uXXXX`
 * escapes, so the text parses to the very same value.
 */
export function terminalSafeJson(value: unknown, space?: number): string {
  const json = JSON.stringify(value, null, space);
  return json.replace(JSON_UNSAFE, (c) => {
    let out = '';
    for (let i = 0; i < c.length; i++) out += `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`;
    return out;
  });
}
