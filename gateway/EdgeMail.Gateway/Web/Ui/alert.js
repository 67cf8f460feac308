// One alert's journey: received (how, from where), receipts to the device, routing (to whom and why), each mail
// made from it with every delivery attempt, and the mail itself.
'use strict';

EM.start(async (main) => {
  const { h, api } = EM;
  const rowId = EM.params().get('id') || '';
  const ROUTING = {
    new: 'Not routed yet: it is next in line.',
    rejected: 'Rejected, so never routed or mailed. The device was told so in its receipt.',
    unrouted: 'No route matched: nobody is told about this alert.',
    parked: 'Routing or composing it failed in a way retrying cannot fix. Release it to route it again, or cancel it.',
    cancelled: 'Cancelled by the operator.',
  };

  // Only a rejection the gateway caused can come out differently the second time; a malformed payload stays malformed.
  const retryable = (a) => a.status === 'rejected' && (a.reason || '').startsWith('handling failed: ');

  function alertActions(a) {
    if (retryable(a)) {
      const b = h('button', { type: 'button', 'data-action': 'retry' }, 'Retry');
      b.addEventListener('click', () => EM.act(b, () => api(`/alerts/${a.rowId}/retry`, { method: 'POST' }), async (r) => {
        EM.notice(`Retried: new again as ${r.alertId}, to be routed and mailed.`);
        await load();
      }));
      return h('div', { class: 'actions' }, b);
    }
    if (a.status !== 'parked') return null;
    const button = (label, verb, cls) => {
      const b = h('button', { type: 'button', class: cls, 'data-action': verb }, label);
      b.addEventListener('click', () => {
        if (verb === 'cancel' && !confirm(`Cancel alert ${a.rowId}? It will never be mailed.`)) return;
        EM.act(b, () => api(`/alerts/${a.rowId}/${verb}`, { method: 'POST', body: verb === 'cancel' ? { reason: 'cancelled in the console' } : undefined }),
          async () => {
            EM.notice(verb === 'release' ? 'Released: it is routed again.' : 'Cancelled.');
            await load();
          });
      });
      return b;
    };
    return h('div', { class: 'actions' }, button('Release', 'release', ''), button('Cancel', 'cancel', 'danger'));
  }

  const step = (id, title, ...body) => h('li', null, h('section', { class: 'panel', id, 'aria-labelledby': id + '-title' }, h('h2', { id: id + '-title' }, title), ...body));

  function received(j) {
    const a = j.alert;
    const p = j.json && typeof j.json === 'object' ? j.json : {};
    const values = p.values && typeof p.values === 'object' ? Object.entries(p.values).map(([k, v]) => `${k} = ${v}`).join(', ') : null;
    return step('received', 'Received',
      EM.facts([
        ['At', EM.when(a.receivedAt)],
        ['From device', EM.deviceLink(a.device)],
        ['Via', a.via],
        ['Peer', a.peer ? h('code', null, a.peer) : null],
        ['Alert id', h('code', null, a.alertId)],
        typeof p.text === 'string' ? ['Text', h('span', { class: 'alert-text' }, p.text)] : null,
        values ? ['Values', values] : null,
        typeof p.raised === 'string' ? ['Raised on the device', EM.when(p.raised)] : null,
        typeof p.count === 'number' && p.count > 1 ? ['Repeats', `${p.count} (coalesced on the device while offline)`] : null,
        a.reason ? ['Reason', h('strong', null, a.reason)] : null,
      ]),
      h('details', null, h('summary', null, 'Payload as sent'), h('pre', { class: 'block payload-full' }, j.json ? JSON.stringify(j.json, null, 2) : j.payload)));
  }

  function receipts(j) {
    return step('receipts', 'Receipts to the device',
      EM.table([
        ['State', (r) => EM.badge(r.state)],
        ['At', (r) => EM.when(r.at), 'nowrap'],
        ['Detail', (r) => r.detail],
        ['Delivered to the device', (r) => (r.published ? 'published' : h('span', { class: 'muted' }, 'not published (device offline or not subscribed)'))],
      ], j.receipts, { empty: 'None remembered (the gateway keeps the most recent receipts in memory).' }));
  }

  function routing(j) {
    const a = j.alert;
    return step('routing', 'Routing',
      j.route ? h('p', { class: 'route' }, j.route) : null,
      ROUTING[a.status] && !(a.status === 'new' && j.route) ? h('p', { class: 'muted' }, ROUTING[a.status]) : null,
      retryable(a) ? h('p', { class: 'muted' }, 'Handling it failed in the gateway, not in the payload. Once the fault is fixed, retry it: its payload is parsed again and, valid, it is routed and mailed.') : null,
      j.digestMessageId ? h('p', null, 'A repeat: it went out in the digest ', h('code', null, j.digestMessageId), '.') : null,
      a.status === 'held' ? h('p', { class: 'muted' }, 'Held by storm control: it will go out in a digest when the window closes.') : null,
      alertActions(a));
  }

  function mails(j) {
    return step('mail', j.messages.length === 1 ? 'Mail' : `Mail (${j.messages.length})`,
      j.messages.length ? j.messages.map((m) => EM.mailView(m, load)) : h('p', { class: 'muted' }, 'No mail was made from this alert.'));
  }

  const content = h('div');
  EM.clear(main, content);
  let last = '';

  async function load() {
    const j = await api('/alerts/' + encodeURIComponent(rowId));
    const json = JSON.stringify(j);
    if (json === last) return; // unchanged: keep the rendered mail and the chosen tab as they are
    last = json;
    const a = j.alert;
    document.title = `Alert ${a.rowId} — EdgeMail`;
    EM.clear(content,
      h('div', { class: 'title-line' },
        h('h1', null, `Alert ${a.rowId}: `, a.code || 'no code', ' from ', a.device),
        a.severity ? EM.badge(a.severity) : null,
        EM.badge(a.status)),
      h('ol', { class: 'journey' }, received(j), receipts(j), routing(j), mails(j)));
  }

  if (!rowId) {
    EM.notice('No alert named: open one from the alert list.', 'error');
    return;
  }
  await load();
  EM.refreshOnChange(load, ['dashboard']);
});
