/**
 * The shed-level part of every decision: is the shed admitted, and is the
 * namespace served and enabled for it. The dispatcher and `shed-host-agent
 * explain` both call this, so a dry run refuses exactly what the broker does.
 */
import { CommonCode } from '../../protocol/codes.js';
import { isNamespace } from '../../protocol/envelope.js';
import type { Decision } from '../handler.js';
import { SECTION_OF, shedLayers, type EffectiveShed } from './effective.js';
import { formatPath } from './source.js';
import type { Policy } from './policy.js';
import { shedKey, type ShedOrigin } from '../origin.js';

export interface ShedDecision extends Decision {
  /** The text the guest gets when refused. */
  message?: string;
  /** The shed's effective policy, when admitted. */
  shed?: EffectiveShed;
}

/**
 * `served`: whether this broker has a handler for `namespace`; the origin's
 * `server`: the named server the shed belongs to (undefined for direct
 * sockets and the top-level `server:`).
 */
export function shedDecision(policy: Policy, origin: Pick<ShedOrigin, 'name' | 'server'>, namespace: string, served: boolean): ShedDecision {
  const { name, server } = origin;
  // Messages name the shed by its key: `alice`, or `alice@mini2` for a named server's.
  const shed = shedKey(origin);
  const effective = policy.resolve(name, server);
  if (!effective) {
    const scoped = server !== undefined && policy.serverScopes().includes(server);
    return {
      allowed: false,
      code: CommonCode.SHED_NOT_ALLOWED,
      rule: `no sheds entry for ${name} and no "*" entry${scoped ? `, in sheds or in servers.${server}.sheds` : ''}`,
      message: `shed ${shed} is not in the host policy; add it (or a "*" entry) to the policy file`,
    };
  }
  if (!isNamespace(namespace) || !served) {
    return {
      allowed: false,
      code: CommonCode.NAMESPACE_DISABLED,
      rule: `this broker serves no ${namespace.slice(0, 64)} namespace`,
      message: `this host does not serve the ${namespace.slice(0, 64)} namespace`,
      shed: effective,
    };
  }
  const section = SECTION_OF[namespace];
  if (!effective[section].enabled) {
    return {
      allowed: false,
      code: CommonCode.NAMESPACE_DISABLED,
      rule: `${section}.enabled is false`,
      message: `${namespace} is disabled for shed ${shed} by the host policy`,
      shed: effective,
    };
  }
  const via = describeEntry(policy, name, server);
  return { allowed: true, rule: `shed ${shed} is admitted by ${via}; ${section} is enabled`, shed: effective };
}

/** Which `sheds` entries admit `shed`: `its own entry sheds.web`, `the "*" entry servers.mini2.sheds."*"`… */
export function describeEntry(policy: Policy, shed: string, server?: string): string {
  const found = shedLayers(policy.doc, shed, server);
  const entries = (found?.layers ?? []).filter((l) => l.at[l.at.length - 2] === 'sheds').map((l) => l.at);
  const own = entries.filter((at) => at[at.length - 1] === shed && shed !== '*');
  if (own.length) return `its own entry ${own.map(formatPath).join(' and ')}`;
  return `the "*" entry ${entries.map(formatPath).join(' and ')}`.trim();
}
