/**
 * shed-host-agent as a command people type and pipe: its version, a reader
 * that stops early, and an explain of an operation that does not exist.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { VERSION } from '../../protocol/version.js';
import { binCommand, run, spawnTracked, tempDir } from '../support/procs.js';

function policy(text: string): string {
  const dir = tempDir('shed-cli');
  const file = path.join(dir, 'extensions.yaml');
  fs.writeFileSync(file, text, { mode: 0o600 });
  return file;
}

describe('shed-host-agent on the command line', function () {
  this.timeout(30_000);

  it('prints its version for --version, -V, -version and version', async () => {
    for (const flag of ['--version', '-V', '-version', 'version']) {
      const [cmd, args] = binCommand('shed-host-agent', [flag]);
      const res = await run(cmd, args);
      expect([res.code, res.stdout, res.stderr], flag).to.deep.equal([0, `shed-host-agent ${VERSION}\n`, '']);
    }
  });

  it('stops quietly when its reader goes away (`policy list | head -1`)', async () => {
    const sheds = Array.from({ length: 3000 }, (_, i) => `  shed-${i}: {}`).join('\n');
    const file = policy(`version: 1\ndirect: { sockets_dir: /tmp/x }\nsheds:\n${sheds}\n`);
    const [cmd, args] = binCommand('shed-host-agent', ['policy', 'list', '--config', file]);
    const child = spawnTracked(cmd, args);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    // Read the first chunk, as head -1 does, then close the pipe.
    await new Promise((resolve) => child.stdout!.once('data', resolve));
    child.stdout!.destroy();
    const code = await new Promise((resolve) => child.once('close', resolve));
    expect(stderr, 'nothing on stderr').to.equal('');
    expect(code).to.equal(0);
  });

  it('names the operations a namespace has when explain is asked for one it does not', async () => {
    const file = policy('version: 1\nsheds:\n  alpha: {}\n');
    const [cmd, args] = binCommand('shed-host-agent', ['explain', 'alpha', 'ssh-agent', 'sgin', '--config', file]);
    const res = await run(cmd, args);
    expect(res.code).to.equal(1);
    expect(res.stdout).to.include('ssh-agent has no operation "sgin"; its operations: list, sign, bind, status, ping');
  });
});
