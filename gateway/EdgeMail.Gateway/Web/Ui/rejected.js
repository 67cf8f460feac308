// Rejected payloads: what devices sent that was refused, with the reason (each was acknowledged, kept and reported
// to the device on its receipt topic, so it never blocks the device's queue).
'use strict';

EM.start(async (main) => {
  const { h, api } = EM;
  const device = EM.params().get('device') || '';
  const list = h('div');
  EM.clear(main,
    h('h1', null, 'Rejected payloads'),
    h('p', { class: 'muted' }, 'Each was acknowledged so the device could move on, kept here with the reason, and reported to the device in a ',
      h('code', null, 'rejected'), ' receipt.', device ? [' Only ', h('strong', null, device), '. ', h('a', { href: '/rejected' }, 'All devices')] : null),
    list);

  let last = '';
  async function load() {
    const rows = await api('/rejected' + EM.query({ device, limit: 200 }));
    const json = JSON.stringify(rows);
    if (json === last) return;
    last = json;
    EM.clear(list, EM.table([
      ['#', (r) => h('a', { href: EM.alertHref(r.alert.rowId) }, String(r.alert.rowId)), 'num'],
      ['Received', (r) => EM.when(r.alert.receivedAt), 'nowrap'],
      ['Device', (r) => h('a', { href: '/rejected?device=' + encodeURIComponent(r.alert.device), class: 'nowrap' }, r.alert.device)],
      ['Via', (r) => [r.alert.via, r.alert.peer ? h('div', { class: 'muted small' }, r.alert.peer) : null]],
      ['Reason', (r) => h('strong', null, r.alert.reason || '')],
      ['Payload (first 1 KiB)', (r) => h('pre', { class: 'block payload' }, r.payload)],
    ], rows, { id: 'rejected-list', empty: 'Nothing was rejected.' }));
  }

  await load();
  EM.refreshOnChange(load, ['alert']);
});
