// One device: its facts, last heartbeat, charts of the last 48 hours (inline SVG), recent alerts; disable, enable, new secret.
'use strict';

EM.start(async (main) => {
  const { h, svg, api } = EM;
  const id = EM.params().get('id') || '';
  const HOUR = 3600 * 1000;
  const HOURS = 48;
  const LABELS = {
    queue_depth: 'Queue depth', dropped: 'Dropped alerts', battery_pct: 'Battery (%)', battery_mv: 'Battery (mV)', rssi_dbm: 'Signal (dBm)',
    flash_wear_pct: 'Flash wear (%)', oldest_age_ms: 'Oldest queued alert', fw: 'Firmware', boot: 'Boot count', uptime_ms: 'Uptime',
  };
  const MILLISECONDS = new Set(['oldest_age_ms', 'uptime_ms']);
  const NOT_CHARTED = new Set(['v', 'boot', 'uptime_ms', 'oldest_age_ms']);
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

  const secretSlot = h('div');
  const content = h('div');
  EM.clear(main, secretSlot, content);

  const hourText = (ms) => {
    const d = new Date(ms);
    return `${d.getDate()} ${MONTHS[d.getMonth()]} ${String(d.getHours()).padStart(2, '0')}:00`;
  };
  const heartbeatValue = (key, v) => (v === null || v === undefined ? '—'
    : MILLISECONDS.has(key) && typeof v === 'number' ? EM.duration(Math.round(v / 1000))
      : typeof v === 'object' ? JSON.stringify(v) : String(v));

  // Alerts per hour as bars, one per hour of the last 48, the current hour last.
  function alertChart(perHour, now, width) {
    const W = Math.max(480, Math.round(width));
    const H = 150;
    const left = 34;
    const bottom = 22;
    const last = Math.floor(now / HOUR) * HOUR;
    const first = last - (HOURS - 1) * HOUR;
    const counts = new Map(perHour.map((p) => [new Date(p.hour).getTime(), p.count]));
    const max = Math.max(1, ...counts.values());
    const total = [...counts.values()].reduce((a, b) => a + b, 0);
    const slot = (W - left) / HOURS;
    const y = (v) => (H - bottom) - (v / max) * (H - bottom - 8);
    const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Alerts per hour over the last ${HOURS} hours: ${total} in all, at most ${max} in one hour` },
      svg('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }),
      svg('line', { class: 'grid', x1: left, y1: y(max), x2: W, y2: y(max) }),
      svg('text', { x: left - 6, y: y(max) + 4, 'text-anchor': 'end' }, String(max)),
      svg('text', { x: left - 6, y: H - bottom + 4, 'text-anchor': 'end' }, '0'));
    for (let i = 0; i < HOURS; i++) {
      const t = first + i * HOUR;
      const n = counts.get(t) || 0;
      if (n > 0) {
        chart.append(svg('rect', { class: 'bar', x: left + i * slot + 1, y: y(n), width: Math.max(1, slot - 2), height: (H - bottom) - y(n) },
          svg('title', null, `${hourText(t)}: ${n} alert${n === 1 ? '' : 's'}`)));
      }
      if (i % 12 === 0 || i === HOURS - 1) {
        const anchor = i === 0 ? 'start' : i === HOURS - 1 ? 'end' : 'middle';
        chart.append(svg('text', { x: left + i * slot + (i === 0 ? 0 : i === HOURS - 1 ? slot : slot / 2), y: H - 6, 'text-anchor': anchor }, i === HOURS - 1 ? 'this hour' : hourText(t)));
      }
    }
    return chart;
  }

  // One heartbeat value over the 48 hours as a line.
  function valueChart(key, points, now) {
    const W = 340;
    const H = 110;
    const left = 40;
    const bottom = 18;
    const from = now - HOURS * HOUR;
    const values = points.map((p) => p.v);
    let min = Math.min(...values);
    let max = Math.max(...values);
    if (min === max) {
      min -= 1;
      max += 1;
    }
    const x = (t) => left + ((t - from) / (now - from)) * (W - left - 6);
    const y = (v) => 6 + (1 - (v - min) / (max - min)) * (H - bottom - 12);
    const latest = points[points.length - 1];
    const label = LABELS[key] || key;
    const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${label}: now ${latest.v}, lowest ${Math.min(...values)}, highest ${Math.max(...values)} over ${HOURS} hours` },
      svg('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }),
      svg('text', { x: left - 6, y: y(max) + 4, 'text-anchor': 'end' }, String(+max.toFixed(2))),
      svg('text', { x: left - 6, y: y(min) + 4, 'text-anchor': 'end' }, String(+min.toFixed(2))),
      svg('text', { x: left, y: H - 4 }, `${HOURS} h ago`),
      svg('text', { x: W - 6, y: H - 4, 'text-anchor': 'end' }, 'now'));
    if (points.length > 1) {
      chart.append(svg('polyline', { class: 'line', points: points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ') }));
    }
    chart.append(svg('circle', { class: 'dot', cx: x(latest.t), cy: y(latest.v), r: 3 }, svg('title', null, `${EM.dateText(new Date(latest.t), true)}: ${latest.v}`)));
    return h('figure', { class: 'panel' },
      h('figcaption', { class: 'chart-title' }, label, ': ', h('span', { class: 'chart-value' }, String(latest.v))),
      chart);
  }

  function heartbeatCharts(beats, now) {
    const series = new Map();
    for (const beat of beats) {
      for (const [key, v] of Object.entries(beat.values)) {
        if (typeof v !== 'number' || NOT_CHARTED.has(key)) continue;
        if (!series.has(key)) series.set(key, []);
        series.get(key).push({ t: new Date(beat.at).getTime(), v });
      }
    }
    // A value that never changed says nothing as a line: the last heartbeat above shows it.
    const varying = (key) => new Set(series.get(key).map((p) => p.v)).size > 1;
    const keys = [...series.keys()].filter(varying).sort((a, b) => (a in LABELS ? 0 : 1) - (b in LABELS ? 0 : 1));
    return keys.length ? keys.map((key) => valueChart(key, series.get(key), now)) : h('p', { class: 'muted' }, 'No heartbeat value changed in 48 hours.');
  }

  function actions(d) {
    const toggle = h('button', { type: 'button', class: d.disabled ? '' : 'danger' }, d.disabled ? 'Enable' : 'Disable');
    toggle.addEventListener('click', () => {
      if (!d.disabled && !confirm(`Disable ${d.id}? Its connection ends at once, and it can no longer connect or submit until enabled.`)) return;
      EM.act(toggle, () => api(`/devices/${encodeURIComponent(d.id)}/${d.disabled ? 'enable' : 'disable'}`, { method: 'POST' }),
        async () => {
          EM.notice(`${d.id} ${d.disabled ? 'enabled' : 'disabled'}.`);
          await load();
        });
    });
    const rotate = h('button', { type: 'button', class: 'secondary' }, 'New secret');
    rotate.addEventListener('click', () => {
      if (!confirm(`Give ${d.id} a new secret? The old one stops working at once: the device must be given the new one.`)) return;
      EM.act(rotate, () => api(`/devices/${encodeURIComponent(d.id)}/rotate-secret`, { method: 'POST' }),
        async (result) => {
          EM.clear(secretSlot, EM.secretBox(`New secret for ${d.id}`, d.id, result.secret));
          await load();
        });
    });
    return h('div', { class: 'actions' }, toggle, rotate);
  }

  async function load() {
    const detail = await api('/devices/' + encodeURIComponent(id));
    const d = detail.device;
    const alerts = await api('/alerts' + EM.query({ device: id, limit: 15 }));
    const now = Date.now();
    const hb = d.heartbeat || {};
    document.title = d.id + ' — EdgeMail';
    EM.clear(content,
      h('div', { class: 'title-line' }, h('h1', null, d.name && d.name !== d.id ? `${d.name} (${d.id})` : d.id), EM.badge(EM.deviceState(d)), actions(d)),
      h('div', { class: 'cards' },
        h('section', { class: 'card', 'aria-labelledby': 'facts-title' }, h('h2', { id: 'facts-title' }, 'Device'), EM.facts([
          ['Site', d.site],
          ['Owners', d.owners.join(', ')],
          ['Last contact', EM.ago(d.lastContact)],
          ['Last alert', EM.ago(d.lastAlertAt)],
          ['Silent after', EM.timespan(d.silentAfter)],
          ['Defined in', d.source === 'console' ? 'the console' : 'the configuration file' + (d.source === 'configuration-changed' ? ' (changed in the console)' : '')],
        ])),
        h('section', { class: 'card', id: 'heartbeat', 'aria-labelledby': 'hb-title' }, h('h2', { id: 'hb-title' }, 'Last heartbeat'),
          d.heartbeat
            ? EM.facts([['Received', EM.ago(d.lastHeartbeatAt)], ...Object.entries(hb).filter(([k]) => k !== 'v').map(([k, v]) => [LABELS[k] || k, heartbeatValue(k, v)])])
            : h('p', { class: 'muted' }, 'None received yet.'))),
      h('section', { class: 'panel', 'aria-labelledby': 'chart-title' },
        h('h2', { id: 'chart-title' }, 'Alerts per hour, last 48 hours'),
        alertChart(detail.alertsPerHour, now, content.clientWidth - 40)),
      detail.heartbeats.length
        ? h('section', { 'aria-labelledby': 'beats-title' }, h('h2', { id: 'beats-title' }, 'Heartbeats, last 48 hours'), h('div', { class: 'charts' }, heartbeatCharts(detail.heartbeats, now)))
        : null,
      h('section', { class: 'panel', 'aria-labelledby': 'recent-title' },
        h('h2', { id: 'recent-title' }, 'Recent alerts ', h('a', { class: 'small', href: '/alerts?device=' + encodeURIComponent(id) }, 'all of them')),
        EM.alertTable(alerts, null, 'No alerts from this device.')));
  }

  if (!id) {
    EM.notice('No device named: open a device from the device list.', 'error');
    return;
  }
  await load();
  EM.refreshOnChange(load, ['dashboard']);
});
