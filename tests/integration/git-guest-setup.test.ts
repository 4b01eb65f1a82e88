/**
 * The guest's git setup as install-guest lays it: the system gitconfig
 * (credential.helper=shed, credential.useHttpPath=true), read by real git,
 * with whatever the image had kept; and the installed git-credential-shed
 * launcher answering real `git credential fill` against a broker.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { bundleGuest } from '../../guest-services/bundle.js';
import { withGitCredentialSettings } from '../../guest-services/status/gitconfig.js';
import { installGuest, LIB_DIR, SYSTEM_GITCONFIG } from '../../guest-services/status/install.js';
import { createGitHandler } from '../../host-broker/git/handler.js';
import { memoryLogger } from '../../protocol/log.js';
import { VERSION } from '../../protocol/version.js';
import { git, gitEnv } from '../support/git-http.js';
import { startDirectBroker } from '../support/harness.js';
import { run, tempDir } from '../support/procs.js';

/** What real git reads from `file` as the system config: every key, in order. */
async function gitReads(file: string): Promise<string[]> {
  const home = tempDir('shed-gcfg');
  const out = await git(['config', '--system', '--list'], gitEnv(home, {}, file));
  return out.split('\n').filter(Boolean);
}

describe('the guest\'s git setup', function () {
  this.timeout(60_000);

  describe('the system gitconfig', () => {
    const file = () => path.join(tempDir('shed-gcfg'), 'gitconfig');

    it('on an image without one: the two settings, as git config --system would write them', async () => {
      const f = file();
      fs.writeFileSync(f, withGitCredentialSettings(undefined));
      expect(await gitReads(f)).to.deep.equal(['credential.helper=shed', 'credential.usehttppath=true']);
      // What `git config --system` itself writes for the same two keys.
      const g = file();
      const env = gitEnv(tempDir('shed-gcfg'), {}, g);
      await git(['config', '--system', 'credential.helper', 'shed'], env);
      await git(['config', '--system', 'credential.useHttpPath', 'true'], env);
      expect(fs.readFileSync(f, 'utf8')).to.equal(fs.readFileSync(g, 'utf8'));
    });

    it('keeps everything else of an existing file, replaces every value of the two keys, and a second run changes nothing', async () => {
      const f = file();
      const before = [
        '# the image\'s own settings',
        '[core]',
        '\teditor = vim',
        '[credential]',
        '\thelper = cache --timeout=3600',
        '\thelper = osxkeychain',
        '\tuseHttpPath = false',
        '\tusername = builder',
        '[credential "https://example.com"]',
        '\thelper = !example-helper',
        '[Credential]',
        '\tHELPER = "long \\',
        'value"',
        '[user]',
        '\tname = Image Builder',
        '',
      ].join('\n');
      const once = withGitCredentialSettings(before);
      fs.writeFileSync(f, once);
      expect(await gitReads(f)).to.deep.equal([
        'core.editor=vim',
        'credential.helper=shed',
        'credential.usehttppath=true',
        'credential.username=builder',
        'credential.https://example.com.helper=!example-helper',
        'user.name=Image Builder',
      ]);
      expect(once).to.contain('# the image\'s own settings\n');
      expect(withGitCredentialSettings(once)).to.equal(once);
    });
  });

  describe('install-guest', () => {
    let bundles: string;
    before(async function () {
      this.timeout(60_000);
      bundles = (await bundleGuest({ outDir: path.join(tempDir('shed-gpk'), 'guest') })).outDir;
    });

    it('writes /etc/gitconfig and the git-credential-shed launcher; the image\'s git then asks the broker', async () => {
      const root = tempDir('shed-groot');
      fs.mkdirSync(path.join(root, 'etc'));
      fs.writeFileSync(path.join(root, 'etc', 'gitconfig'), '[user]\n\tname = Image Builder\n[credential]\n\thelper = cache\n');
      const first = installGuest({ root, from: bundles });
      expect(first.entries.find((e) => e.path === SYSTEM_GITCONFIG)).to.deep.equal({ path: SYSTEM_GITCONFIG, action: 'updated' });
      const gitconfig = path.join(root, SYSTEM_GITCONFIG);
      expect(fs.statSync(gitconfig).mode & 0o777).to.equal(0o644);
      expect(await gitReads(gitconfig)).to.deep.equal(['user.name=Image Builder', 'credential.helper=shed', 'credential.usehttppath=true']);
      const again = installGuest({ root, from: bundles });
      expect(again.entries.filter((e) => e.action !== 'unchanged')).to.deep.equal([]);

      const launcher = fs.readFileSync(path.join(root, 'usr/local/bin/git-credential-shed'), 'utf8');
      expect(launcher).to.include(`exec node ${LIB_DIR}/git-credential-shed.cjs "$@"\n`);
      expect(fs.statSync(path.join(root, 'usr/local/bin/git-credential-shed')).mode & 0o777).to.equal(0o755);

      // The image's git, its system config and launcher (pointed at this root's bundle, with this node), against a broker.
      const bin = tempDir('shed-gbin');
      fs.writeFileSync(path.join(bin, 'node'), `#!/bin/sh\nexec '${process.execPath}' "$@"\n`, { mode: 0o755 });
      fs.writeFileSync(path.join(bin, 'git-credential-shed'), launcher.replaceAll(LIB_DIR, path.join(root, LIB_DIR)), { mode: 0o755 });
      // What its unit (shed-ext-git-credentials.service) runs once per boot.
      const version = await run(path.join(bin, 'git-credential-shed'), ['version'], { env: { PATH: `${bin}:/usr/bin:/bin` } });
      expect(version.stdout).to.equal(`git-credential-shed (shed-extensions) ${VERSION}\n`);
      const bin2 = tempDir('shed-gsrc');
      fs.writeFileSync(path.join(bin2, 'token'), '#!/bin/sh\necho image-test-token\n', { mode: 0o755 });
      const h = await startDirectBroker({
        policy: { version: 1, sheds: { img: { git: { allowed: ['git.example.com/acme/*'], sources: { 'git.example.com': { command: [path.join(bin2, 'token')] } } } } } },
        handlers: [createGitHandler({ log: memoryLogger('test'), env: { PATH: '/usr/bin:/bin' } })],
      });
      try {
        const env = gitEnv(tempDir('shed-gguest'), { PATH: `${bin}:/usr/bin:/bin`, SHED_PUBLISH_URL: h.publishUrl('img') }, gitconfig);
        const filled = await run('git', ['credential', 'fill'], { env, input: 'url=https://git.example.com/acme/app.git\n\n' });
        expect(filled.code, filled.stderr).to.equal(0);
        // useHttpPath: the path reached the broker (the policy names one), and came back in git's answer.
        expect(filled.stdout).to.equal('protocol=https\nhost=git.example.com\npath=acme/app.git\nusername=x-access-token\npassword=image-test-token\n');
        const refused = await run('git', ['credential', 'fill'], { env, input: 'url=https://git.example.com/other/app.git\n\n' });
        expect(refused.code).to.equal(128);
        expect(refused.stderr).to.contain('GIT_HOST_NOT_ALLOWED').and.contain('terminal prompts disabled');
      } finally {
        await h.stop();
      }
    });

    it('refuses an /etc/gitconfig that is a symlink rather than follow it out of the root, before writing anything', () => {
      const root = tempDir('shed-groot');
      fs.mkdirSync(path.join(root, 'etc'));
      const outside = path.join(tempDir('shed-gout'), 'gitconfig');
      fs.writeFileSync(outside, '[user]\n\tname = host\n');
      fs.symlinkSync(outside, path.join(root, 'etc', 'gitconfig'));
      expect(() => installGuest({ root, from: bundles })).to.throw(/etc\/gitconfig is not a regular file/);
      expect(fs.readFileSync(outside, 'utf8')).to.equal('[user]\n\tname = host\n');
      // Refused before anything was laid down.
      expect(fs.readdirSync(root)).to.deep.equal(['etc']);
    });
  });
});
