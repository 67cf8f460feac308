// Alerts: filtered by device, code, severity, state and time; new ones appear as they arrive.
'use strict';

EM.start(async (main) => {
  const { h, api } = EM;
  const PAGE = 100;
  const p = EM.params();
  const filter = { device: p.get('device') || '', code: p.get('code') || '', severity: p.get('severity') || '', status: p.get('status') || '', from: p.get('from') || '', to: p.get('to') || '' };

  const select = (id, label, options) => h('div', { class: 'field' }, h('label', { for: id }, label),
    h('select', { id, name: id }, options.map(([value, text]) => h('option', { value, selected: filter[id] === value }, text))));
  const input = (id, label, attrs) => h('div', { class: 'field' }, h('label', { for: id }, label), h('input', { id, name: id, value: filter[id], ...attrs }));

  const devices = await api('/devices');
  const deviceOptions = [['', 'Any device'], ...devices.map((d) => [d.id, d.id])];
  if (filter.device && !devices.some((d) => d.id === filter.device)) deviceOptions.push([filter.device, filter.device]);
  const form = h('form', { class: 'filters', method: 'get', action: '/alerts', role: 'search', 'aria-label': 'Filter alerts' },
    select('device', 'Device', deviceOptions),
    input('code', 'Code', { placeholder: 'FREEZER_TEMP_HIGH', size: 22 }),
    select('severity', 'Severity', [['', 'Any'], ['critical', 'Critical'], ['warning', 'Warning'], ['info', 'Info']]),
    select('status', 'State', [['', 'Any'], ...['new', 'routed', 'held', 'digested', 'unrouted', 'parked', 'rejected', 'cancelled'].map((s) => [s, s])]),
    input('from', 'Received from', { type: 'datetime-local' }),
    input('to', 'until', { type: 'datetime-local' }),
    h('button', { type: 'submit' }, 'Filter'),
    h('a', { href: '/alerts', class: 'button secondary' }, 'Clear'));

  const summary = h('p', { class: 'muted small', role: 'status' });
  const list = h('div');
  const more = h('button', { type: 'button', class: 'secondary hidden' }, 'Older alerts');
  EM.clear(main, h('h1', null, 'Alerts'), h('section', { class: 'panel' }, form), summary, list, h('p', null, more));

  // The API takes instants; the form gives local times.
  const instant = (local) => (local ? new Date(local).toISOString() : '');
  const apiQuery = (extra) => EM.query({ ...filter, code: filter.code.trim().toUpperCase(), from: instant(filter.from), to: instant(filter.to), ...extra });

  let shown = [];
  let last = '';
  const arrived = EM.arrivals();

  function render() {
    const json = JSON.stringify(shown);
    if (json === last) return; // unchanged: no flicker, no lost focus
    last = json;
    EM.clear(list, EM.alertTable(shown, arrived.fresh, 'No alerts match.'));
    summary.textContent = shown.length + ' alert' + (shown.length === 1 ? '' : 's') + ' shown, newest first' + (arrived.fresh.size ? '; marked: arrived since the page was opened.' : '.');
  }

  // Reloads what is shown (at least one page), so new alerts appear on top and states stay current.
  async function load() {
    const rows = await api('/alerts' + apiQuery({ limit: Math.max(PAGE, shown.length) }));
    more.classList.toggle('hidden', rows.length < Math.max(PAGE, shown.length));
    arrived.see(rows);
    shown = rows;
    render();
  }

  more.addEventListener('click', () => EM.act(more, () => api('/alerts' + apiQuery({ limit: PAGE, before: shown[shown.length - 1].rowId })), (older) => {
    shown = shown.concat(older);
    more.classList.toggle('hidden', older.length < PAGE);
    render();
  }));

  await load();
  EM.refreshOnChange(load);
});
