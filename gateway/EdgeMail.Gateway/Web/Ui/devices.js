// Devices: each one's state, last contact and last heartbeat; adding a device (its secret shown once).
'use strict';

EM.start(async (main) => {
  const { h, api } = EM;
  const STATES = ['all', 'online', 'offline', 'silent', 'disabled'];
  let state = EM.params().get('state') || 'all';
  if (!STATES.includes(state)) state = 'all';

  const secretSlot = h('div');
  const tabs = h('nav', { class: 'tabs', 'aria-label': 'Device state' });
  const list = h('div');

  const field = (id, label, attrs = {}) => h('div', { class: 'field' }, h('label', { for: id }, label), h('input', { id, name: id, ...attrs }));
  const form = h('form', { class: 'inline', id: 'add-device' },
    field('new-id', 'Device id', { required: true, pattern: '[A-Za-z0-9._\\-]{1,64}', maxlength: 64, placeholder: 'freezer-2', autocomplete: 'off' }),
    field('new-name', 'Name', { placeholder: 'Freezer 2', maxlength: 200 }),
    field('new-site', 'Site', { placeholder: 'Hall 3', maxlength: 200 }),
    field('new-owners', 'Owners (user or group ids, comma separated)', { placeholder: 'alice, oncall' }),
    h('button', { type: 'submit' }, 'Add device'));

  EM.clear(main,
    h('h1', null, 'Devices'),
    secretSlot,
    h('section', { class: 'panel', 'aria-labelledby': 'list-title' }, h('h2', { id: 'list-title', class: 'sr-only' }, 'Device list'), tabs, list),
    h('section', { class: 'panel', 'aria-labelledby': 'add-title' },
      h('h2', { id: 'add-title' }, 'Add a device'),
      h('p', { class: 'muted small' }, 'It can connect at once; no restart, and no other device is disconnected.'),
      form));

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const button = form.querySelector('button');
    const value = (id) => form.querySelector('#' + id).value.trim();
    const owners = value('new-owners').split(',').map((o) => o.trim()).filter((o) => o);
    EM.act(button,
      () => api('/devices', { method: 'POST', body: { id: value('new-id'), name: value('new-name'), site: value('new-site'), owners } }),
      async (added) => {
        form.reset();
        EM.clear(secretSlot, EM.secretBox('Device ' + added.device.id + ' added', added.device.id, added.secret));
        EM.notice('Device ' + added.device.id + ' added.');
        await load();
      });
  });

  async function load() {
    const devices = await api('/devices');
    const count = (s) => (s === 'all' ? devices.length : devices.filter((d) => EM.deviceState(d) === s).length);
    EM.clear(tabs, STATES.map((s) => h('a', { href: '/devices' + (s === 'all' ? '' : '?state=' + s), 'aria-current': s === state ? 'page' : null },
      s[0].toUpperCase() + s.slice(1), h('span', { class: 'tab-count' }, String(count(s))))));
    const shown = state === 'all' ? devices : devices.filter((d) => EM.deviceState(d) === state);
    const hb = (key) => (d) => EM.heartbeat(d.heartbeat)[key] ?? h('span', { class: 'muted' }, '—');
    EM.clear(list, EM.table([
      ['Device', (d) => [EM.deviceLink(d.id), d.name && d.name !== d.id ? h('div', { class: 'muted small' }, d.name) : null]],
      ['Site', (d) => d.site],
      ['State', (d) => EM.badge(EM.deviceState(d))],
      ['Last contact', (d) => EM.ago(d.lastContact), 'nowrap'],
      ['Queue', hb('queue'), 'num'],
      ['Dropped', hb('dropped'), 'num'],
      ['Battery', hb('battery'), 'num'],
      ['Signal', hb('signal'), 'num'],
      ['Firmware', hb('firmware')],
      ['Owners', (d) => d.owners.join(', ')],
    ], shown, { empty: state === 'all' ? 'No devices yet: add one below.' : 'No ' + state + ' devices.', id: 'device-list', rowAttrs: (d) => ({ 'data-device': d.id }) }));
  }

  await load();
  EM.refreshOnChange(load, ['dashboard']);
});
