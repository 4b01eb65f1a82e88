import { expect } from 'chai';
import { createLogger, MAX_LINE } from '../../protocol/log.js';
import { escapeControls, printable, terminalSafeJson } from '../../protocol/text.js';

describe('printable text', () => {
  it('escapes controls, bidi and zero-width characters, separators and lone surrogates', () => {
    expect(printable('a\x1b[31mred\x07')).to.equal('a\\x1b[31mred\\x07');
    expect(printable('x\ny\rz\t')).to.equal('x\\x0ay\\x0dz\\x09');
    expect(printable('\u202eevil\u200b')).to.equal('\\u{202e}evil\\u{200b}');
    expect(printable('a\u2028b\u2029c\u0085')).to.equal('a\\u{2028}b\\u{2029}c\\x85');
    expect(printable('lone \ud800 high')).to.equal('lone \\u{d800} high');
    expect(printable('ünïcödé 🔑 fine')).to.equal('ünïcödé 🔑 fine');
  });

  it('doubles backslashes, so a guest cannot forge an escape', () => {
    expect(printable('\\x1b')).to.equal('\\\\x1b');
  });

  it('bounds what it gives, escapes included, never cutting inside one, and says so', () => {
    expect(printable('a'.repeat(300), 10)).to.equal(`${'a'.repeat(10)}…`);
    expect(printable('abc', 10)).to.equal('abc');
    expect(printable('\x1b'.repeat(10), 10)).to.equal('\\x1b\\x1b…');
    expect(printable('ab\u202e', 10)).to.equal('ab\\u{202e}');
    expect(printable('ab\u202ecd', 8)).to.equal('ab…');
    for (let i = 0; i < 200; i++) {
      const s = Array.from({ length: 50 }, () => String.fromCodePoint(Math.floor(Math.random() * 0x3000))).join('');
      expect(printable(s, 20).length).to.be.at.most(21);
    }
  });

  it('escapeControls leaves backslashes and ordinary text alone', () => {
    expect(escapeControls('C:\\path "q"')).to.equal('C:\\path "q"');
    expect(escapeControls('bell\x07')).to.equal('bell\\x07');
  });
});

describe('log lines', () => {
  const lines = (message: string): string[] => {
    const out: string[] = [];
    createLogger('t', { level: 'debug', write: (l) => out.push(l) }).warn(message);
    return out.join('\n').split('\n');
  };

  it('cannot be forged by the text they quote: continuations are indented, controls escaped', () => {
    const out = lines('first\n2026-01-01T00:00:00.000Z shed-host-agent INFO forged\x1b[2K\rline');
    expect(out).to.have.length(2);
    expect(out[0]).to.match(/^\S+ t WARN first$/);
    expect(out[1]).to.equal('    2026-01-01T00:00:00.000Z shed-host-agent INFO forged\\x1b[2K\\x0dline');
  });

  it('are cut at MAX_LINE characters', () => {
    const [line] = lines('x'.repeat(MAX_LINE * 3));
    expect(line!.length).to.be.lessThan(MAX_LINE + 64);
    expect(line!.endsWith('…')).to.equal(true);
  });

  it('terminalSafeJson: JSON a terminal cannot be driven by, that parses to the very same value', () => {
    const value = { a: 'x\u202ey\u200b\u2028\u0085\u007f\n\x1b', emoji: '🔑', tag: '\u{e0041}', nested: ['\u2029'] };
    for (const space of [undefined, 2]) {
      const json = terminalSafeJson(value, space);
      // eslint-disable-next-line no-control-regex -- the point: none may be left raw
      expect(json).not.to.match(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b\u2028\u2029\u202e\u{e0041}]/u);
      expect(JSON.parse(json)).to.deep.equal(value);
    }
    expect(terminalSafeJson({ k: 1 }, 2)).to.equal('{\n  "k": 1\n}');
  });
});
