/**
 * Go's flag spellings, as the original shed-host-agent's service files and
 * scripts use them: `-config FILE` and `-config=FILE` (one dash, a long
 * name). node's parseArgs reads `-config` as the short options -c -o -n …,
 * so a one-dash long option this command knows is rewritten to two dashes
 * first. Everything after `--` is left alone.
 */
export function goStyleArgs(argv: readonly string[], longOptions: Iterable<string>): string[] {
  const known = new Set(longOptions);
  const out: string[] = [];
  let rest = false;
  for (const arg of argv) {
    if (rest || arg === '--') {
      rest = true;
      out.push(arg);
      continue;
    }
    const m = /^-([a-z][a-z0-9-]+)(=.*)?$/s.exec(arg);
    out.push(m && known.has(m[1]!) ? `-${arg}` : arg);
  }
  return out;
}
