export * from './codes.js';
export * from './envelope.js';
export * from './messages.js';
export * from './ssh-agent.js';
export * from './aws-credentials.js';
export * from './docker-credentials.js';
export * from './git-credentials.js';
