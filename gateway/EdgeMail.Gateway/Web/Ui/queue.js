// The mail queue by state, with retry now / release / cancel; one mail's detail above the list when chosen.
'use strict';

EM.start(async (main) => {
  const { h, api } = EM;
  const STATES = [
    ['deferred', 'Deferred'], ['queued', 'Queued'], ['parked', 'Parked'], ['failed', 'Failed'], ['partial', 'Partly sent'],
    ['sent', 'Sent'], ['cancelled', 'Cancelled'], ['all', 'All'],
  ];
  const p = EM.params();
  const state = STATES.some(([s]) => s === p.get('state')) ? p.get('state') : 'deferred';
  const chosen = p.get('mail');
  const href = (s, mail) => '/queue' + EM.query({ state: s, mail });

  const detail = h('div');
  const list = h('div');
  EM.clear(main,
    h('h1', null, 'Mail queue'),
    detail,
    h('section', { class: 'panel', 'aria-labelledby': 'queue-title' },
      h('h2', { id: 'queue-title', class: 'sr-only' }, 'Mail by state'),
      h('nav', { class: 'tabs', 'aria-label': 'Mail state' }, STATES.map(([s, label]) => h('a', { href: href(s), 'aria-current': s === state ? 'page' : null }, label))),
      list));

  const reply = (m) => [m.reason ? h('div', null, m.reason) : null, m.lastReply ? h('div', null, m.lastReply) : null];

  function mailTable(mails) {
    return EM.table([
      ['#', (m) => h('a', { href: href(state, m.rowId) }, String(m.rowId)), 'num'],
      ['Queued', (m) => EM.when(m.createdAt), 'nowrap'],
      ['Kind', (m) => m.kind],
      ['Device', (m) => (m.device ? EM.deviceLink(m.device) : '—')],
      ['State', (m) => EM.badge(EM.mailState(m))],
      ['Attempts', (m) => String(m.attempts), 'num'],
      ['Next attempt', (m) => (m.status === 'queued' ? EM.ago(m.nextAttemptAt) : '—'), 'nowrap'],
      ['Last reply or reason', reply, 'reply'],
      ['Actions', (m) => EM.mailActions(m, reload)],
    ], mails, { id: 'queue-list', empty: 'No mail in this state.', rowAttrs: (m) => ({ 'data-mail': m.rowId, class: String(m.rowId) === chosen ? 'is-selected' : null }) });
  }

  // Parked alerts and parked mail together: both wait for the operator.
  function parkedTable(items) {
    const target = (i) => (i.kind === 'alert' ? EM.alertHref(i.rowId) : href('parked', i.rowId));
    const actions = (i) => {
      const path = i.kind === 'alert' ? `/alerts/${i.rowId}` : `/queue/${i.rowId}`;
      const button = (label, verb, cls) => {
        const b = h('button', { type: 'button', class: 'small ' + cls, 'data-action': verb }, label);
        b.addEventListener('click', () => {
          if (verb === 'cancel' && !confirm(`Cancel ${i.kind} ${i.rowId}? It will never be sent.`)) return;
          EM.act(b, () => api(`${path}/${verb}`, { method: 'POST', body: verb === 'cancel' ? { reason: 'cancelled in the console' } : undefined }), async () => {
            EM.notice(`${i.kind} ${i.rowId} ${verb === 'release' ? 'released' : 'cancelled'}.`);
            await reload();
          });
        });
        return b;
      };
      return h('div', { class: 'actions' }, button('Release', 'release', ''), button('Cancel', 'cancel', 'danger'));
    };
    return EM.table([
      ['Kind', (i) => i.kind],
      ['#', (i) => h('a', { href: target(i) }, String(i.rowId)), 'num'],
      ['Device', (i) => (i.device ? EM.deviceLink(i.device) : '—')],
      ['Reference', (i) => (i.reference ? h('code', null, i.reference) : '—')],
      ['Parked', (i) => EM.when(i.parkedAt), 'nowrap'],
      ['Reason', (i) => i.reason, 'reply'],
      ['Actions', actions],
    ], items, { id: 'queue-list', empty: 'Nothing is parked.', rowAttrs: (i) => ({ 'data-mail': i.kind === 'message' ? i.rowId : null }) });
  }

  let lastList = '';
  let lastDetail = '';

  async function loadList() {
    const rows = state === 'parked' ? await api('/parked') : await api('/queue' + EM.query({ state: state === 'all' ? '' : state, limit: 200 }));
    const json = JSON.stringify(rows);
    if (json === lastList) return;
    lastList = json;
    EM.clear(list, state === 'parked' ? parkedTable(rows) : mailTable(rows));
  }

  async function loadDetail() {
    if (!chosen) return;
    const view = await api('/queue/' + encodeURIComponent(chosen));
    const json = JSON.stringify(view);
    if (json === lastDetail) return;
    lastDetail = json;
    EM.clear(detail, h('section', { 'aria-label': 'Chosen mail' }, EM.mailView(view, reload), h('p', null, h('a', { href: href(state) }, 'Close'))));
  }

  async function reload() {
    await loadList();
    await loadDetail();
  }

  await reload();
  EM.refreshOnChange(reload, ['dashboard']);
});
