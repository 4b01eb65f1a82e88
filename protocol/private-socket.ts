/**
 * Binding a unix socket only its owner may use, shared by the guest ssh agent
 * and the broker's direct sockets: a file left by a process that died is
 * removed, a live socket or a non-socket file is refused, and the socket is
 * bound under a umask that leaves only the owner's bits, then set 0600
 * explicitly, so there is no window where another user could connect.
 */
import fs from 'node:fs';
import net from 'node:net';

export interface PrivateSocketOptions {
  /** The error when the path exists and is not a socket, with the fix. */
  notSocket: string;
  /** The error when another process answers on the path, with the fix. */
  live: string;
  /** Told when a stale socket file was removed. */
  onStale?: (socketPath: string) => void;
}

export async function listenPrivate(server: net.Server, socketPath: string, options: PrivateSocketOptions): Promise<void> {
  await removeStaleSocket(socketPath, options);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // A unix socket is bound inside listen(): the umask is restored right after.
    const umask = process.umask(0o177);
    try {
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    } finally {
      process.umask(umask);
    }
  });
  fs.chmodSync(socketPath, 0o600);
}

async function removeStaleSocket(socketPath: string, options: PrivateSocketOptions): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(options.notSocket);
  if (await socketAnswers(socketPath)) throw new Error(options.live);
  fs.unlinkSync(socketPath);
  options.onStale?.(socketPath);
}

/** Whether a process accepts connections on the socket (0.5 s at most). */
export function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(socketPath);
    const done = (live: boolean) => {
      sock.destroy();
      resolve(live);
    };
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
    sock.setTimeout(500, () => done(false));
  });
}
