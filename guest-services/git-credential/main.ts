#!/usr/bin/env node
/** git-credential-shed: see helper.ts. */
import { runOneShot } from '../one-shot.js';
import { MAX_STDIN_BYTES, PROGRAM, runHelper } from './helper.js';

runOneShot(PROGRAM, MAX_STDIN_BYTES + 1, runHelper);
