/**
 * Stop signals for the long-running programs. The handlers are installed at
 * once, before start-up: a SIGTERM that arrives while a program is still
 * starting must stop it cleanly (socket and status files removed), not hit
 * the default disposition and kill it mid-way.
 */
export function untilStopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onInt = () => stop('SIGINT');
    const onTerm = () => stop('SIGTERM');
    const stop = (signal: NodeJS.Signals) => {
      // A second signal falls back to the default: a stuck shutdown can still be interrupted.
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve(signal);
    };
    process.once('SIGINT', onInt);
    process.once('SIGTERM', onTerm);
  });
}
