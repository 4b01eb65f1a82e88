/**
 * bench/RESULTS.md: each bench's section, between `<!-- bench:NAME -->`
 * markers, replaced when the bench runs again (appended the first time).
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'RESULTS.md');

/** Print `section` and write it as bench `name`'s part of RESULTS.md. */
export function writeSection(name: string, section: string): void {
  process.stdout.write(`${section}\n`);
  const text = fs.existsSync(FILE) ? fs.readFileSync(FILE, 'utf8') : '# Benchmark results\n';
  const block = `<!-- bench:${name} -->\n${section}\n<!-- /bench:${name} -->`;
  const re = new RegExp(`<!-- bench:${name} -->[\\s\\S]*?<!-- /bench:${name} -->`);
  fs.writeFileSync(FILE, re.test(text) ? text.replace(re, () => block) : `${text.trimEnd()}\n\n${block}\n`);
}
