/**
 * shed-agent's reading of /etc/shed-extensions.d, as a program: the Go file
 * beside this one (shed-agent/manifests.go), built once per test run with
 * Debian's Go and gopkg.in/yaml.v3, the YAML library shed-agent itself uses.
 * shed-agent cannot run here (it needs a shed VM), so this is the part of it
 * the guest packaging must satisfy, with the same decoder, fields and rules.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, tempDir } from './procs.js';

/** Where Debian's golang-gopkg-yaml.v3-dev puts the library (a GOPATH). */
const DEBIAN_GOPATH = '/usr/share/gocode';
const SOURCE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'shed-agent', 'manifests.go');

export interface ShedAgentManifests {
  /** By namespace: the manifests shed-agent accepts. */
  manifests: Record<string, { file: string; namespace: string; systemd_unit: string; description: string }>;
  /** What it logs and skips (unreadable, not YAML, a required field empty, a namespace twice). */
  warnings: string[];
  /** What it runs for each enabled namespace that has a manifest. */
  enable: Array<{ namespace: string; command: string[] }>;
  /** Enabled namespaces it finds no manifest for (never started, never reported). */
  missing: string[];
}

let built: Promise<string> | undefined;

function build(): Promise<string> {
  built ??= (async () => {
    const dir = tempDir('shed-go');
    const bin = path.join(dir, 'manifests');
    const yamlLib = path.join(DEBIAN_GOPATH, 'src', 'gopkg.in', 'yaml.v3');
    const r = await run('go', ['build', '-o', bin, SOURCE], {
      cwd: dir,
      env: { PATH: process.env.PATH, HOME: dir, GO111MODULE: 'off', GOPATH: DEBIAN_GOPATH, GOCACHE: path.join(dir, 'cache'), GOFLAGS: '', CGO_ENABLED: '0' },
      timeoutMs: 120_000,
    }).catch((err: NodeJS.ErrnoException) => ({ code: -1, stderr: err.code === 'ENOENT' ? 'go is not installed' : err.message, stdout: '' }));
    if (r.code !== 0 || !fs.existsSync(bin)) {
      const hint = fs.existsSync(yamlLib) ? '' : ` (${yamlLib} is missing)`;
      throw new Error(`cannot build the shed-agent manifest reader${hint}: ${r.stderr.trim()}; install Go and yaml.v3: apt-get install golang-go golang-gopkg-yaml.v3-dev (.ci/run does)`);
    }
    return bin;
  })();
  return built;
}

/** Read `dir` as shed-agent reads /etc/shed-extensions.d, with `enabled` the server's extensions.enabled. */
export async function readAsShedAgent(dir: string, enabled: string[] = []): Promise<ShedAgentManifests> {
  const bin = await build();
  const r = await run(bin, [dir, ...enabled], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`the shed-agent manifest reader failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as ShedAgentManifests;
}
