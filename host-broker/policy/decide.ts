/**
 * The shed-level part of every decision: is the shed admitted, and is the
 * namespace served and enabled for it. The dispatcher and `shed-host-agent
 * explain` both call this, so a dry run refuses exactly what the broker does.
 */
import { CommonCode } from '../../protocol/codes.js';
import { isNamespace } from '../../protocol/envelope.js';
import type { Decision } from '../handler.js';
import { SECTION_OF, type EffectiveShed } from './effective.js';
import type { Policy } from './policy.js';
import { shedKey, type ShedOrigin } from '../origin.js';

export interface ShedDecision extends Decision {
  /** The text the guest gets when refused. */
  message?: string;
  /** The shed's effective policy, when admitted. */
  shed?: EffectiveShed;
}

/** `served`: whether this broker has a handler for `namespace`. */
export function shedDecision(policy: Policy, origin: Pick<ShedOrigin, 'name' | 'server'>, namespace: string, served: boolean): ShedDecision {
  const shed = shedKey(origin);
  const effective = policy.resolve(origin.name);
  if (!effective) {
    return {
      allowed: false,
      code: CommonCode.SHED_NOT_ALLOWED,
      rule: `no sheds entry for ${shed} and no "*" entry`,
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
  const via = effective.matched === 'named' ? `its own entry sheds.${shed}` : 'the "*" entry';
  return { allowed: true, rule: `shed ${shed} is admitted by ${via}; ${section} is enabled`, shed: effective };
}
