/**
 * The memory of answered request ids across a restart: the file's mode,
 * atomic writes, pruning by age, its bound, and what happens to a damaged
 * file; and how the dedupe window takes it back.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { v7 as uuidv7 } from 'uuid';
import { AnsweredIds, MAX_ENTRIES, REDELIVERY_WINDOW_MS } from '../../host-broker/answered-ids.js';
import { DedupeWindow } from '../../host-broker/dedupe.js';
import { memoryLogger } from '../../protocol/log.js';
import { tempDir } from '../support/procs.js';

describe('AnsweredIds', () => {
  function setup(now = () => Date.now()) {
    const dir = tempDir('shed-ans');
    const file = path.join(dir, 'state', 'answered-ids.json');
    const log = memoryLogger('t');
    return { dir, file, log, make: () => new AnsweredIds({ file, log, flushDelayMs: 10, now }) };
  }

  it('keeps ids across a restart in a 0600 file in a 0700 directory, written by rename (no temp file left)', () => {
    const { file, make } = setup();
    const a = make();
    expect(a.load()).to.deep.equal([]);
    const id = uuidv7();
    a.record('alpha', id, 1000 + Date.now() - 5000);
    a.record('mini2/alpha', uuidv7());
    a.close();
    expect(fs.statSync(file).mode & 0o777).to.equal(0o600);
    expect(fs.statSync(path.dirname(file)).mode & 0o777).to.equal(0o700);
    expect(fs.readdirSync(path.dirname(file))).to.deep.equal(['answered-ids.json']);
    const b = make();
    const loaded = b.load();
    expect(loaded.map((e) => e.shed)).to.deep.equal(['alpha', 'mini2/alpha']);
    expect(loaded[0]!.id).to.equal(id);
  });

  it('drops ids older than the window, and keeps the newest MAX_ENTRIES', () => {
    let now = 10_000_000_000;
    const { file, make } = setup(() => now);
    const a = make();
    a.load();
    a.record('alpha', 'old', now - REDELIVERY_WINDOW_MS - 1);
    for (let i = 0; i < MAX_ENTRIES + 500; i++) a.record('alpha', `id-${i}`, now);
    a.close();
    const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as { ids: [string, string, number][] };
    expect(doc.ids).to.have.length(MAX_ENTRIES);
    expect(doc.ids[0]![1]).to.equal('id-500');
    expect(fs.statSync(file).size).to.be.below(1024 * 1024);
    now += REDELIVERY_WINDOW_MS;
    expect(make().load()).to.deep.equal([]);
  });

  it('a damaged or foreign file: start empty with a warning, and write a good one next time', () => {
    const { file, log, make } = setup();
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    for (const text of ['{"version":1,"ids":[["alpha"', '[]', '{"version":2,"ids":[]}', '{"version":1,"ids":[["alpha",7,1]]}', '{"version":1,"ids":[["","x",1]]}']) {
      fs.writeFileSync(file, text);
      expect(make().load(), text).to.deep.equal([]);
    }
    expect(log.lines.filter((l) => / WARN the memory of answered requests .* is damaged \(/.test(l))).to.have.length(5);
    fs.rmSync(file);
    fs.mkdirSync(file);
    expect(make().load()).to.deep.equal([]);
    expect(log.lines.at(-1)).to.match(/cannot be read \(it is not a regular file\): starting with none/);
    fs.rmdirSync(file);
    fs.writeFileSync(file, 'garbage');
    const a = make();
    a.load();
    a.record('alpha', 'x');
    a.close();
    expect(make().load().map((e) => e.id)).to.deep.equal(['x']);
  });

  it('a directory it cannot write to: logs once and keeps going', () => {
    const { dir, log } = setup();
    const blocked = path.join(dir, 'blocked');
    fs.writeFileSync(blocked, 'a file where the state directory should be');
    const a = new AnsweredIds({ file: path.join(blocked, 'answered-ids.json'), log });
    a.record('alpha', 'x');
    a.flush();
    a.record('alpha', 'y');
    a.flush();
    expect(log.lines.filter((l) => l.includes('cannot write the memory of answered requests'))).to.have.length(1);
    a.close();
  });
});

describe('DedupeWindow with remembered ids', () => {
  it('tells each id it takes, and refuses an id seeded from before a restart for what is left of the window', () => {
    let now = 1_000_000;
    const taken: string[] = [];
    const d = new DedupeWindow({ windowMs: 1000, now: () => now, onTake: (shed, id, at) => taken.push(`${shed} ${id} ${at}`) });
    d.seed('alpha', 'old', now - 400);
    d.seed('alpha', 'gone', now - 1000);
    expect(d.take('alpha', 'old')).to.equal(false);
    expect(d.take('alpha', 'gone')).to.equal(true);
    expect(d.take('beta', 'old')).to.equal(true);
    expect(taken).to.deep.equal(['alpha gone 1000000', 'beta old 1000000']);
    now += 600;
    expect(d.take('alpha', 'old')).to.equal(true);
  });
});
