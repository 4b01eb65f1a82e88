// Loaded into shed-host-agent by bench/hostile-guest.ts (node --require): the
// event loop's delay, from Node's own histogram, written to stderr on SIGUSR2
// and reset. The histogram records the time between its samples, so the
// sampling interval is taken off: 0 is a loop that never waited. Bench-only;
// the broker knows nothing of it.
const { monitorEventLoopDelay } = require('node:perf_hooks');
const RESOLUTION_MS = 5;
const h = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
h.enable();
process.on('SIGUSR2', () => {
  const ms = (ns) => Math.max(0, Math.round(ns / 1e4) / 100 - RESOLUTION_MS);
  process.stderr.write(`ELD ${JSON.stringify({ p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) })}\n`);
  h.reset();
});
