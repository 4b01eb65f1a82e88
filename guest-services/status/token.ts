/**
 * `shed-ext init-token FILE`: the AWS endpoint's authorization token, created
 * once per boot by shed-ext-aws-token.service (before the endpoint starts).
 *
 * The token is what stops a server-side request forgery in the VM (a web app
 * tricked into fetching http://127.0.0.1:499/credentials) from reading
 * credentials: such a request cannot add the Authorization header. The file is
 * 0600, owned by the user the services run as, and has NO trailing newline:
 * botocore and the JS SDK send the file's bytes as a header value and refuse
 * a newline in it.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** What a token file must hold (what `newToken` makes, and what other setups may supply). */
export const TOKEN_RE = /^[A-Za-z0-9_-]{32,256}$/;

export interface TokenResult {
  created: boolean;
  path: string;
}

/** A fresh token: 32 random bytes, base64url without padding (43 header-safe characters). */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

/**
 * Make sure `file` holds a valid token. A valid one already there is kept (so
 * a restart of the unit does not invalidate tokens shells have exported);
 * anything else is replaced atomically. Refuses a symlink or a non-file.
 */
export function initToken(file: string): TokenResult {
  if (!path.isAbsolute(file)) throw new Error(`the token file must be an absolute path, not ${JSON.stringify(file)}`);
  const dir = path.dirname(file);
  let dirStat: fs.Stats;
  try {
    dirStat = fs.statSync(dir);
  } catch {
    throw new Error(`the directory ${dir} does not exist; the unit's RuntimeDirectory= creates it (or create it, mode 0755, owned by the service user)`);
  }
  if (!dirStat.isDirectory()) throw new Error(`${dir} is not a directory`);
  if ((dirStat.mode & 0o002) !== 0 && (dirStat.mode & 0o1000) === 0) {
    throw new Error(`${dir} is writable by everyone: refusing to keep a credential token there`);
  }

  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (existing) {
    if (!existing.isFile()) throw new Error(`${file} exists and is not a regular file (a symlink?); remove it and retry`);
    const uid = process.getuid?.();
    if (uid !== undefined && existing.uid === uid && TOKEN_RE.test(fs.readFileSync(file, 'latin1'))) {
      if ((existing.mode & 0o777) !== 0o600) fs.chmodSync(file, 0o600);
      return { created: false, path: file };
    }
  }

  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}`);
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | (fs.constants.O_NOFOLLOW ?? 0), 0o600);
  try {
    fs.writeSync(fd, newToken());
    fs.fchmodSync(fd, 0o600);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  return { created: true, path: file };
}
