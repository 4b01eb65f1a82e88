/**
 * Reading files that someone else could have swapped for something else: a
 * FIFO put where a file is expected would block a plain read for ever. The
 * file is opened without blocking and checked on the same descriptor.
 */
import fs from 'node:fs';

/** The path is not a regular file. `kind` says what it is: directory, FIFO, socket, device. */
export class NotRegularFile extends Error {
  override readonly name = 'NotRegularFile';
  constructor(readonly file: string, readonly kind: string) {
    super(`${file} is a ${kind}, not a regular file`);
  }
}

/** What a file that is not a regular file is, in words. */
export function fileKind(st: fs.Stats): string {
  if (st.isFile()) return 'regular file';
  if (st.isDirectory()) return 'directory';
  if (st.isFIFO()) return 'FIFO';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'device';
  return 'special file';
}

/** A regular file's bytes and status; throws NotRegularFile for anything else, and fs errors as they are. */
export function readRegularFile(file: string): { st: fs.Stats; data: Buffer } {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new NotRegularFile(file, fileKind(st));
    return { st, data: fs.readFileSync(fd) };
  } finally {
    fs.closeSync(fd);
  }
}

/** The account files soleMemberGroup reads (tests pass their own). */
export interface AccountFiles {
  passwd: string;
  group: string;
}

function readAccounts(): AccountFiles | undefined {
  try {
    return { passwd: fs.readFileSync('/etc/passwd', 'utf8'), group: fs.readFileSync('/etc/group', 'utf8') };
  } catch {
    return undefined;
  }
}

/**
 * Whether group `gid` has exactly one member and that member is `uid`: a
 * user private group, as a umask of 002 makes files group-writable in. The
 * rule OpenSSH applies to its own config files: a group that is some user's
 * primary group must be only `uid`'s, its member list must name only that
 * user, and it must have a member. A group the account files do not know
 * (NSS: LDAP, sssd) counts as shared: refusing is the safe side.
 */
export function soleMemberGroup(gid: number, uid: number, files: AccountFiles | undefined = readAccounts()): boolean {
  if (!files) return false;
  const rows = (text: string) => text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
  const group = rows(files.group).find((g) => Number(g[2]) === gid);
  if (!group) return false;
  const users = rows(files.passwd);
  const name = users.find((u) => Number(u[2]) === uid)?.[0];
  if (name === undefined) return false;
  let members = 0;
  for (const u of users) {
    if (Number(u[3]) !== gid) continue;
    if (Number(u[2]) !== uid) return false;
    members += 1;
  }
  const listed = (group[3] ?? '').split(',').filter(Boolean);
  if (listed.length > 0) {
    if (listed.length > 1 || listed[0] !== name) return false;
    members += 1;
  }
  return members > 0;
}
