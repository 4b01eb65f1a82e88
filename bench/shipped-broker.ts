/**
 * shed-host-agent as it ships, for the benches: its tsc build (rebuilt
 * here), `run` in its own process with a policy whose sockets and audit log
 * live in separate directories, as the defaults put them.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { capture, REPO_ROOT, spawnTracked, waitFor } from '../tests/support/procs.js';

export interface ShippedBroker {
  child: ChildProcess;
  out: ReturnType<typeof capture>;
  auditDir: string;
  socketPath(shed: string): string;
}

/** Build, write `policy` (direct sockets and audit dir filled in), start, and wait for `shed`'s socket. */
export async function startShippedBroker(dir: string, policy: Record<string, unknown>, shed: string, nodeArgs: string[] = []): Promise<ShippedBroker> {
  execFileSync(process.execPath, [path.join(REPO_ROOT, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO_ROOT, 'tsconfig.build.json')], { stdio: 'inherit' });
  const socks = path.join(dir, 'state', 'socks');
  const auditDir = path.join(dir, 'state', 'audit');
  const config = path.join(dir, 'config', 'extensions.yaml');
  fs.mkdirSync(path.dirname(config), { mode: 0o700 });
  fs.writeFileSync(config, JSON.stringify({ version: 1, direct: { sockets_dir: socks }, audit: { dir: auditDir }, ...policy }), { mode: 0o600 });
  const child = spawnTracked(process.execPath, [...nodeArgs, path.join(REPO_ROOT, 'dist/host-broker/cli/main.js'), 'run', '--config', config, '--state-dir', path.join(dir, 'state')], { env: { ...process.env, SHED_LOG_LEVEL: 'warn' } });
  const out = capture(child);
  const socketPath = (name: string) => path.join(socks, name, 'bus.sock');
  await waitFor(() => fs.existsSync(socketPath(shed)) || child.exitCode !== null, 20_000, 'shed-host-agent');
  if (child.exitCode !== null) throw new Error(`shed-host-agent exited: ${out.stderr()}`);
  return { child, out, auditDir, socketPath };
}
