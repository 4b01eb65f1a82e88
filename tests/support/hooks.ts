/** Root hooks: whatever a test leaves running or lying around is cleaned up at the end of the run. */
import { stopAll } from './procs.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

export const mochaHooks = {
  async afterAll(): Promise<void> {
    await stopAll();
  },
};
