/**
 * Guest binaries as single-file bundles: a guest image needs only `node`,
 * no node_modules. `npm run bundle` writes build/guest/:
 *
 *   shed-ext-ssh-agent.mjs  shed-ext-aws-credentials.mjs  docker-credential-shed.cjs  git-credential-shed.cjs  shed-ext.mjs
 *   systemd/guest/...       the guest units and config (install-guest reads them from here)
 *
 * then `node build/guest/shed-ext.mjs install-guest --root DIR` lays them into an image root.
 */
import { build, type Metafile } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleFile, GUEST_BINARIES, GUEST_FILES, GUEST_FILES_DIR, type GuestBinary } from './status/install.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const ENTRY_POINTS: Record<GuestBinary, string> = {
  'shed-ext-ssh-agent': 'guest-services/ssh-agent/main.ts',
  'shed-ext-aws-credentials': 'guest-services/aws-credentials/main.ts',
  'docker-credential-shed': 'guest-services/docker-credential/main.ts',
  'git-credential-shed': 'guest-services/git-credential/main.ts',
  'shed-ext': 'guest-services/status/main.ts',
};

export const DEFAULT_OUT_DIR = path.join(REPO_ROOT, 'build', 'guest');

/**
 * Some dependencies are CommonJS and call require() on node built-ins; an
 * ESM bundle has no require, so it is given one. The services are ESM
 * (install-guest finds its bundles through import.meta.url); the docker
 * and git helpers are CommonJS, which needs neither banner nor ESM loader (bundleFile).
 */
const BANNER = "import { createRequire as __shedCreateRequire } from 'node:module'; const require = __shedCreateRequire(import.meta.url);";

export interface BundleResult {
  outDir: string;
  bundles: Array<{ name: GuestBinary; file: string; bytes: number; inputs: string[] }>;
}

export async function bundleGuest(options: { outDir?: string; only?: GuestBinary[] } = {}): Promise<BundleResult> {
  const outDir = path.resolve(options.outDir ?? DEFAULT_OUT_DIR);
  const names = options.only ?? [...GUEST_BINARIES];
  const missing = names.filter((n) => !fs.existsSync(path.join(REPO_ROOT, ENTRY_POINTS[n])));
  if (missing.length) {
    throw new Error(`cannot bundle ${missing.join(', ')}: ${missing.map((n) => ENTRY_POINTS[n]).join(', ')} not found`);
  }
  fs.mkdirSync(outDir, { recursive: true });
  const result: BundleResult = { outDir, bundles: [] };
  for (const name of names) {
    const file = path.join(outDir, bundleFile(name));
    const cjs = file.endsWith('.cjs');
    const built = await build({
      entryPoints: [path.join(REPO_ROOT, ENTRY_POINTS[name])],
      outfile: file,
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: cjs ? 'cjs' : 'esm',
      banner: cjs ? undefined : { js: BANNER },
      // Smaller and quicker to load, with every name kept: a stack trace from a guest still reads.
      minifyWhitespace: true,
      minifySyntax: true,
      legalComments: 'eof',
      metafile: true,
      logLevel: 'error',
      absWorkingDir: REPO_ROOT,
    });
    fs.chmodSync(file, 0o755);
    result.bundles.push({ name, file, bytes: fs.statSync(file).size, inputs: inputsOf(built.metafile) });
  }
  copyGuestFiles(outDir);
  return result;
}

function inputsOf(metafile: Metafile | undefined): string[] {
  return Object.keys(metafile?.inputs ?? {});
}

/** systemd/guest/* → <outDir>/systemd/guest/*, the set install-guest installs. */
function copyGuestFiles(outDir: string): void {
  for (const file of GUEST_FILES) {
    const dest = path.join(outDir, GUEST_FILES_DIR, file.src);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.copyFileSync(path.join(REPO_ROOT, GUEST_FILES_DIR, file.src), dest);
    fs.chmodSync(dest, 0o644);
  }
}

async function main(): Promise<number> {
  const outDir = process.argv[2] ?? DEFAULT_OUT_DIR;
  try {
    const result = await bundleGuest({ outDir });
    for (const b of result.bundles) {
      process.stdout.write(`${path.relative(process.cwd(), b.file)}  ${(b.bytes / 1024).toFixed(0)} KiB, ${b.inputs.length} modules\n`);
    }
    process.stdout.write(`guest bundles in ${result.outDir}; next: node ${path.relative(process.cwd(), path.join(result.outDir, 'shed-ext.mjs'))} install-guest --root DIR\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`bundle: ${(err as Error).message}\n`);
    return 1;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main();
}
