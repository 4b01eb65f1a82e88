/**
 * The system gitconfig install-guest writes for git-credential-shed:
 * `credential.helper = shed` and `credential.useHttpPath = true` in
 * `<root>/etc/gitconfig`, as `git config --system --replace-all` would set
 * them, without needing git on the machine that builds the image.
 *
 * Everything else in an existing file is kept byte for byte: other
 * sections, `[credential "https://…"]` subsections, comments. Only the two
 * keys of the plain `[credential]` section are replaced (every value they
 * had: the image's git asks shed, and the helpers a user adds in
 * ~/.gitconfig come after it). Idempotent: the output of one run is the
 * input that the next run leaves unchanged.
 */

/** The keys set, as git config writes them. */
export const GIT_CREDENTIAL_SETTINGS: ReadonlyArray<[string, string]> = [
  ['helper', 'shed'],
  ['useHttpPath', 'true'],
];

/** `[credential]` (any case, no subsection), possibly followed by a comment. */
const PLAIN_CREDENTIAL_HEADER = /^\s*\[\s*credential\s*\]\s*(?:[#;].*)?$/i;
/** Any section header. */
const HEADER = /^\s*\[/;

function keyOf(line: string): string | undefined {
  return /^\s*([A-Za-z][A-Za-z0-9-]*)\s*(?:=|$|[#;])/.exec(line)?.[1]?.toLowerCase();
}

/** The file's text with the credential settings in place. */
export function withGitCredentialSettings(existing: string | undefined): string {
  const settings = GIT_CREDENTIAL_SETTINGS.map(([k, v]) => `\t${k} = ${v}`);
  if (existing === undefined || existing.trim() === '') return `[credential]\n${settings.join('\n')}\n`;
  const replaced = new Set(GIT_CREDENTIAL_SETTINGS.map(([k]) => k.toLowerCase()));
  const lines = existing.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const out: string[] = [];
  let inPlain = false;
  let placed = false;
  let continued = false;
  let dropping = false;
  for (const line of lines) {
    if (continued) {
      // The rest of a value that ended in a backslash: it goes (or stays) with its key.
      continued = line.endsWith('\\');
      if (!dropping) out.push(line);
      continue;
    }
    dropping = false;
    if (HEADER.test(line)) {
      inPlain = PLAIN_CREDENTIAL_HEADER.test(line);
      out.push(line);
      if (inPlain && !placed) {
        out.push(...settings);
        placed = true;
      }
      continue;
    }
    continued = line.endsWith('\\');
    const key = keyOf(line);
    if (inPlain && key !== undefined && replaced.has(key)) {
      dropping = true;
      continue;
    }
    out.push(line);
  }
  if (!placed) out.push('[credential]', ...settings);
  return `${out.join('\n')}\n`;
}
