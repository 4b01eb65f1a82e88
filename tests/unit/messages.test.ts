import { expect } from 'chai';
import { newId, requestEnvelope, responseEnvelope, uuidv7Time } from '../../protocol/messages.js';

describe('envelope ids', () => {
  it('are UUIDv7s: version 7, RFC 9562 variant, the current time, all different', () => {
    const before = Date.now();
    const ids = Array.from({ length: 5000 }, () => newId());
    const after = Date.now();
    expect(new Set(ids).size).to.equal(ids.length);
    for (const id of ids) {
      expect(id).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      const at = uuidv7Time(id)!;
      expect(at).to.be.within(before, after);
    }
  });

  it('differ between a request and its response, which names the request', () => {
    const request = requestEnvelope('ssh-agent', { operation: 'list' }, { name: 'alpha' });
    const response = responseEnvelope(request, { keys: [] });
    expect(response.id).not.to.equal(request.id);
    expect(response).to.include({ in_reply_to: request.id, namespace: 'ssh-agent', type: 'response' });
    expect(response.shed).to.deep.equal({ name: 'alpha' });
  });
});
