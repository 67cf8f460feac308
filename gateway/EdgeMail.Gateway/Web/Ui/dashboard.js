// Dashboard: today's alerts, the mail queue, devices, the relay, the spool — kept current by the live feed.
'use strict';

EM.start(async (main) => {
  const { h, api } = EM;
  const values = new Map();

  // A number that links to the list it counts; tone(n) picks its colour.
  function stat(group, key, label, href, tone) {
    const value = h('a', { href }, '–');
    const item = h('div', { class: 'stat', 'data-key': key }, h('dt', null, label), h('dd', null, value));
    values.set(group + '.' + key, { value, item, tone });
    return item;
  }

  const bad = (n) => (n > 0 ? 'is-bad' : '');
  const warn = (n) => (n > 0 ? 'is-warn' : '');
  const good = (n) => (n > 0 ? 'is-good' : '');
  const midnightUtc = () => {
    const now = new Date();
    return EM.localInput(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate())));
  };
  const today = '&from=' + encodeURIComponent(midnightUtc());

  const relay = h('div', { class: 'facts-slot' });
  const spool = h('div', { class: 'facts-slot' });
  const updated = h('span', { class: 'muted small', role: 'status' });
  const latest = h('div');

  const card = (title, id, ...body) => h('section', { class: 'card', id, 'aria-labelledby': id + '-title' }, h('h2', { id: id + '-title' }, title), ...body);
  EM.clear(main,
    h('div', { class: 'title-line' }, h('h1', null, 'Dashboard'), updated),
    h('div', { class: 'cards' },
      card('Alerts today', 'alerts-today', h('dl', { class: 'stats' },
        stat('alertsToday', 'critical', 'Critical', '/alerts?severity=critical' + today, bad),
        stat('alertsToday', 'warning', 'Warning', '/alerts?severity=warning' + today, warn),
        stat('alertsToday', 'info', 'Info', '/alerts?severity=info' + today),
        stat('alertsToday', 'rejected', 'Rejected', '/rejected', bad))),
      card('Mail', 'mail', h('dl', { class: 'stats' },
        stat('mail', 'queued', 'Queued', '/queue?state=queued'),
        stat('mail', 'deferred', 'Deferred', '/queue?state=deferred', warn),
        stat('mail', 'parked', 'Parked', '/queue?state=parked', bad),
        stat('mail', 'failed', 'Failed today', '/queue?state=failed', bad),
        stat('mail', 'sent', 'Sent today', '/queue?state=sent'))),
      card('Devices', 'devices', h('dl', { class: 'stats' },
        stat('devices', 'online', 'Online', '/devices?state=online', good),
        stat('devices', 'offline', 'Offline', '/devices?state=offline'),
        stat('devices', 'silent', 'Silent', '/devices?state=silent', warn),
        stat('devices', 'disabled', 'Disabled', '/devices?state=disabled'))),
      card('Relay', 'relay', relay),
      card('Spool and disk', 'spool', spool)),
    h('section', { class: 'panel', 'aria-labelledby': 'latest-title' },
      h('h2', { id: 'latest-title' }, 'Latest alerts ', h('a', { href: '/alerts', class: 'small' }, 'all alerts')),
      latest));

  function show(d) {
    for (const [path, { value, item, tone }] of values) {
      const [group, key] = path.split('.');
      let n = (d[group] || {})[key] || 0;
      if (path === 'mail.parked') n += d.mail.parked_alerts || 0;
      value.textContent = String(n);
      item.className = 'stat ' + (tone ? tone(n) : '');
    }

    const r = d.relay;
    EM.clear(relay, EM.facts([
      ['Mode', r.mode],
      ['State', EM.badge(r.up ? 'Up' : 'Down', r.up ? 'ok' : 'danger')],
      ['Last success', EM.ago(r.lastSuccess)],
      ['Last error', r.lastErrorAt ? [EM.ago(r.lastErrorAt), h('br'), h('code', { class: 'small' }, r.lastError || '')] : h('span', { class: 'muted' }, 'none')],
    ]));
    EM.clear(spool, EM.facts([
      ['Spool size', EM.bytes(d.spoolBytes)],
      ['Free disk', [EM.bytes(d.diskFreeBytes), d.diskLow ? [' ', EM.badge('low: new alerts refused', 'danger')] : null]],
      ['Alerts per second', String(d.alertsPerSecond)],
      ['Devices', d.devices.total + ' in all'],
    ]));
    EM.clear(updated, 'Updated ', EM.when(d.at));
  }

  const arrived = EM.arrivals();
  async function showLatest() {
    const alerts = await api('/alerts?limit=10');
    arrived.see(alerts);
    EM.clear(latest, EM.alertTable(alerts, arrived.fresh, 'No alerts yet.'));
  }

  show(await api('/dashboard'));
  await showLatest();
  EM.on('dashboard', show);
  EM.refreshOnChange(showLatest, ['alert']);
});
