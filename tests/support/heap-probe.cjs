// Loaded into a broker under test (NODE_OPTIONS=--expose-gc --require …): on
// SIGUSR2, collect garbage and write the heap in use to stderr, so a test can
// tell a leak (heap that stays) from memory the allocator keeps (RSS).
process.on('SIGUSR2', () => {
  if (global.gc) global.gc();
  process.stderr.write(`HEAP_USED ${process.memoryUsage().heapUsed}\n`);
});
