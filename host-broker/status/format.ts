/**
 * `shed-host-agent status` for a human: a short report, each section's
 * values aligned. The daemon escaped what others wrote (printable(), with
 * backslashes doubled); every string is checked again here with
 * escapeControls, which leaves those escapes as they are, so what is printed
 * cannot drive the terminal whatever the socket sent.
 */
import { escapeControls } from '../../protocol/text.js';
import type { StatusAnswer } from './answer.js';

/** Sheds without a gate named on the `no gate` line; the rest are counted. */
const MAX_UNGATED_NAMES = 12;

function esc(text: string, max = 300): string {
  const safe = escapeControls(text);
  return safe.length > max ? `${Array.from(safe).slice(0, max).join('')}…` : safe;
}

/** Rows as aligned columns (the last not padded), each line indented. */
function aligned(rows: string[][], indent = ''): string[] {
  if (rows.length === 0) return [];
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, [...cell].length)));
  return rows.map((row) => indent + row.map((cell, i) => (i === row.length - 1 ? cell : cell + ' '.repeat(widths[i]! - [...cell].length))).join('  ').trimEnd());
}

export function formatUptime(ms: number): string {
  if (!(ms >= 0)) return 'unknown';
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}

export function formatStatus(a: StatusAnswer, now = Date.now()): string {
  const out: string[] = [];
  const up = formatUptime(now - Date.parse(a.started_at));
  out.push(`shed-host-agent ${esc(a.version, 40)}, pid ${a.pid}: ${a.phase}, up ${up} (since ${esc(a.started_at, 40)})`);

  const config: string[][] = [['config', esc(a.config.path)]];
  a.config.files.forEach((f, i) => config.push([i === 0 ? 'policy files' : '', esc(f)]));
  if (a.config.loaded_at) config.push(['loaded', esc(a.config.loaded_at, 40)]);
  const reload = a.config.last_reload;
  if (reload) {
    if (reload.result === 'applied') config.push(['last reload', `${esc(reload.at, 40)} applied`]);
    else {
      config.push(['last reload', `${esc(reload.at, 40)} REFUSED (the policy loaded before stays in force):`]);
      for (const line of (reload.reason ?? 'no reason given').split('\n')) config.push(['', `  ${esc(line)}`]);
    }
  }
  out.push(...aligned(config));

  out.push('');
  if (a.servers.length === 0) out.push('servers: none (direct sockets only)');
  for (const server of a.servers) {
    out.push(`server ${esc(server.name, 64)}  ${esc(server.url)}${server.problem !== undefined ? `  not served: ${esc(server.problem)}` : ''}`);
    const rows = Object.entries(server.namespaces).map(([ns, state]) => [esc(ns, 64), esc(state)]);
    out.push(...(rows.length ? aligned(rows, '  ') : ['  no namespaces subscribed']));
  }

  out.push('');
  const d = a.direct;
  if (!d.enabled) out.push('direct sockets: off');
  else {
    const limit = d.max_connections !== undefined ? ` of at most ${d.max_connections}` : '';
    out.push(`direct sockets  ${esc(d.sockets_dir ?? '')} (${d.connections} connection${d.connections === 1 ? '' : 's'} open${limit})`);
    const rows = d.sheds.map((s) => [esc(s.name, 64), esc(s.state)]);
    out.push(...(rows.length ? aligned(rows, '  ') : ['  no sheds named in the policy']));
  }

  out.push('');
  out.push('approval gates');
  const gated = a.approvals.filter((g) => g.gate !== 'none');
  const ungated = a.approvals.filter((g) => g.gate === 'none').map((g) => (g.shed === '*' ? '"*"' : esc(g.shed, 64)));
  const rows = gated.map((g) => [g.shed === '*' ? '"*"' : esc(g.shed, 64), esc(g.gate, 32), esc(g.policy, 32), `for ${g.applies_to.map((n) => esc(n, 64)).join(', ') || 'nothing'}`]);
  if (ungated.length) {
    const names = ungated.slice(0, MAX_UNGATED_NAMES).join(', ') + (ungated.length > MAX_UNGATED_NAMES ? ` and ${ungated.length - MAX_UNGATED_NAMES} more` : '');
    rows.push(['no gate', names]);
  }
  out.push(...(rows.length ? aligned(rows, '  ') : ['  no sheds in the policy']));

  out.push('');
  const au = a.audit;
  out.push(`audit  ${esc(au.dir)}${au.writable ? '' : ' NOT WRITABLE'}${au.required ? ' (audit.required: requests are refused while it cannot be written)' : ''}`);
  const audit: string[][] = [];
  if (au.writable_problem) audit.push(['problem', esc(au.writable_problem)]);
  audit.push(['last write error', au.last_error !== undefined ? `${esc(au.last_error)}${au.last_error_at ? ` (${esc(au.last_error_at, 40)})` : ''}` : 'none']);
  audit.push(['lines not written', String(au.failed_lines)]);
  audit.push(['denials summarised', `${au.summarised_denials} (in ${au.summary_lines} summary line${au.summary_lines === 1 ? '' : 's'}; over audit.denials_per_minute)`]);
  out.push(...aligned(audit, '  '));
  return `${out.join('\n')}\n`;
}
