/**
 * The namespace handlers this broker serves. Each namespace folder exports a
 * factory; the dispatcher routes by `handler.namespace`.
 */
import type { Logger } from '../protocol/log.js';
import { createAwsHandler } from './aws/handler.js';
import { createDockerHandler } from './docker/handler.js';
import { createGitHandler } from './git/handler.js';
import type { NamespaceHandler } from './handler.js';
import { createSshHandler } from './ssh/handler.js';

export interface HandlerDeps {
  log: Logger;
}

export function createHandlers(deps: HandlerDeps): NamespaceHandler[] {
  return [
    createSshHandler({ log: deps.log }),
    createAwsHandler({ log: deps.log }),
    createDockerHandler({ log: deps.log }),
    createGitHandler({ log: deps.log }),
  ];
}
