import { expect } from 'chai';
import { FairTurns } from '../../host-broker/turns.js';

const nextTurn = () => new Promise((r) => setImmediate(r));

describe('fair turns between sheds', () => {
  it('runs a shed\'s lone request at once, with no extra hop', () => {
    const turns = new FairTurns();
    let ran = false;
    expect(turns.run('alice', () => (ran = true))).to.equal(true);
    expect(ran).to.equal(true);
  });

  it('takes a burst a budget per turn, in order, and another shed\'s request in the next turn, not after the burst', async () => {
    const turns = new FairTurns({ budget: 8, limit: 1000 });
    const ran: string[] = [];
    for (let i = 0; i < 100; i++) turns.run('mallory', () => ran.push(`m${i}`));
    expect(ran).to.have.length(8);
    expect(turns.waiting('mallory')).to.equal(92);
    turns.run('alice', () => ran.push('alice'));
    // alice has her own budget this turn.
    expect(ran.at(-1)).to.equal('alice');
    await nextTurn();
    expect(ran).to.have.length(17);
    while (turns.waiting('mallory')) await nextTurn();
    expect(ran.filter((r) => r !== 'alice')).to.deep.equal(Array.from({ length: 100 }, (_, i) => `m${i}`));
  });

  it('keeps a shed waiting behind its own queue, and says no past its limit', async () => {
    const turns = new FairTurns({ budget: 2, limit: 3 });
    const ran: number[] = [];
    const accepted = Array.from({ length: 10 }, (_, i) => turns.run('mallory', () => ran.push(i)));
    expect(accepted).to.deep.equal([true, true, true, true, true, false, false, false, false, false]);
    // A new one queues behind those waiting even when the budget has room again.
    await nextTurn();
    expect(ran).to.deep.equal([0, 1, 2, 3]);
    turns.run('mallory', () => ran.push(99));
    while (turns.waiting('mallory')) await nextTurn();
    expect(ran).to.deep.equal([0, 1, 2, 3, 4, 99]);
  });
});
