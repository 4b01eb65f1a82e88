/**
 * /etc/shed-extensions/guest.env: what `shed-ext install-guest` decided for
 * this guest (where the agent socket and the AWS endpoint are, and the
 * publish URL), as `KEY=VALUE` lines. Every guest program falls back to its
 * SHED_PUBLISH_URL when neither a flag nor the environment gives one, so a
 * session that missed the environment (a non-login `ssh vm cmd`, `sudo -u`,
 * a cron job) still reaches the broker the guest was set up for.
 *
 * node:fs only: the docker helper imports this and starts once per registry
 * operation.
 */
import fs from 'node:fs';

export const GUEST_ENV_FILE = '/etc/shed-extensions/guest.env';

/** The largest guest.env read; it is a few lines. */
const MAX_BYTES = 16 * 1024;

/** `KEY=VALUE` lines of `file`; comments and blank lines skipped; {} when it is absent or unreadable. */
export function readGuestEnv(file: string = GUEST_ENV_FILE): Record<string, string> {
  let text: string;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const buf = Buffer.alloc(MAX_BYTES);
      text = buf.toString('utf8', 0, fs.readSync(fd, buf, 0, MAX_BYTES, 0));
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return {};
  }
  return parseGuestEnv(text);
}

export function parseGuestEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/** `KEY=VALUE` lines under a comment header. */
export function formatGuestEnv(header: string, vars: ReadonlyArray<[string, string]>): string {
  return `${header.split('\n').map((l) => `# ${l}`.trimEnd()).join('\n')}\n${vars.map(([k, v]) => `${k}=${v}\n`).join('')}`;
}
