import { expect } from 'chai';
import { soleMemberGroup } from '../../protocol/files.js';

const passwd = [
  'root:x:0:0:root:/root:/bin/bash',
  'alice:x:1000:1000:Alice:/home/alice:/bin/bash',
  'bob:x:1001:1001:Bob:/home/bob:/bin/bash',
  'carol:x:1002:100:Carol:/home/carol:/bin/bash',
  'dave:x:1003:100:Dave:/home/dave:/bin/bash',
  'svc:x:1004:1005::/nonexistent:/usr/sbin/nologin',
].join('\n');
const group = [
  'root:x:0:',
  'users:x:100:',
  'alice:x:1000:',
  'bob:x:1001:alice',
  'devs:x:1002:alice,bob',
  'solo:x:1003:alice',
  'empty:x:1004:',
  'svc:x:1005:',
].join('\n');

describe('soleMemberGroup (OpenSSH\'s rule for group-writable config files)', () => {
  const files = { passwd, group };
  it('accepts a user private group: the user\'s primary group, no one else in it', () => {
    expect(soleMemberGroup(1000, 1000, files)).to.equal(true);
    // A group listing only the user, and no one's primary group.
    expect(soleMemberGroup(1003, 1000, files)).to.equal(true);
  });

  it('refuses a group anyone else is in, by primary group or by list', () => {
    expect(soleMemberGroup(100, 1002, files), 'users: carol and dave').to.equal(false);
    expect(soleMemberGroup(1001, 1000, files), 'bob\'s primary group listing alice').to.equal(false);
    expect(soleMemberGroup(1002, 1000, files), 'devs: alice and bob').to.equal(false);
    expect(soleMemberGroup(1005, 1000, files), 'another user\'s primary group').to.equal(false);
  });

  it('refuses a group with no member, an unknown group or user, and empty account files', () => {
    expect(soleMemberGroup(1004, 1000, files)).to.equal(false);
    expect(soleMemberGroup(4242, 1000, files)).to.equal(false);
    expect(soleMemberGroup(1000, 4242, files)).to.equal(false);
    expect(soleMemberGroup(1000, 1000, { passwd: '', group: '' })).to.equal(false);
  });
});
