/**
 * A shed server as the transports use it, resolved from the policy
 * (`server:`, `servers.<name>:`) or found by discovery (~/.shed/config.yaml):
 * where it is, how to trust it, and where its bearer token comes from.
 * Paths are absolute with `~` expanded.
 */

export type TokenSourceSpec =
  | { kind: 'file'; path: string }                      // absolute, ~ expanded
  | { kind: 'command'; argv: string[] }
  | { kind: 'bootstrap'; host: string; port: number; user: string; identityFile: string; knownHosts: string; clientName: string };

export interface ServerConnection {
  /** `default` for the top-level `server:`; the key under `servers:` or in ~/.shed/config.yaml. */
  name: string;
  /** Where the name's sheds resolve their policy: undefined for the top-level server (global defaults/sheds only). */
  policyScope?: string;
  url: string;
  tlsPin?: string;
  clientCert?: string;
  clientKey?: string;
  namespaces?: string[];
  token?: TokenSourceSpec;
}

export interface DiscoverySpec {
  source: string;                 // absolute path
  servers: 'all' | string[];
  bootstrap?: { identityFile?: string; knownHosts?: string; clientName?: string };
}
