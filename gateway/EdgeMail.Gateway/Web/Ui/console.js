// EdgeMail console: what every page shares — the API client (session, CSRF token, 401 → /login), building elements
// (data from the API only ever becomes text: textContent/append, never innerHTML), formatting, the header, and the
// live feed (Server-Sent Events from /api/v1/events).
'use strict';

const EM = (() => {
  const NAV = [
    ['/', 'Dashboard', ['index']],
    ['/devices', 'Devices', ['devices', 'device']],
    ['/alerts', 'Alerts', ['alerts', 'alert']],
    ['/queue', 'Mail queue', ['queue']],
    ['/mailbox', 'Mailbox', ['mailbox']],
    ['/rejected', 'Rejected', ['rejected']],
    ['/config', 'Configuration', ['config']],
  ];

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  // ---- API ----

  let session = null;

  function toLogin() {
    location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
  }

  function csrfToken() {
    session = session || api('/session').then((s) => s.csrfToken);
    return session;
  }

  /** Calls /api/v1{path}; changes carry the CSRF token; JSON in and out; throws ApiError with the server's message. */
  async function api(path, options = {}) {
    const method = options.method || 'GET';
    const headers = { Accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin' };
    if (method !== 'GET') {
      headers['X-CSRF-Token'] = await csrfToken();
      if (options.body !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(options.body);
      }
    }

    const response = await fetch('/api/v1' + path, init);
    if (response.status === 401) {
      toLogin();
      throw new ApiError('not logged in', 401);
    }

    if (!response.ok) {
      let message = response.status + ' ' + response.statusText;
      try {
        const body = await response.json();
        if (body && body.error) message = body.error;
      } catch {
        // not JSON: keep the status line
      }
      throw new ApiError(message, response.status);
    }

    if (response.status === 204) return null;
    const type = response.headers.get('Content-Type') || '';
    return type.includes('json') ? response.json() : response.text();
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== '') q.set(key, value);
    }
    const s = q.toString();
    return s ? '?' + s : '';
  }

  // ---- Elements ----

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function setAttributes(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
  }

  /** h('a', {href: '/x', class: 'y'}, 'text', child, [more]) — strings become text nodes. */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttributes(node, attrs);
    return append(node, children);
  }

  function clear(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';

  /** An SVG element; attributes set one by one (the content policy allows that, unlike inline styles). */
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttributes(node, attrs);
    return append(node, children);
  }

  const BADGES = {
    critical: 'danger', warning: 'warn', info: 'info',
    online: 'ok', offline: '', silent: 'warn', disabled: '',
    new: 'info', routed: 'ok', relayed: 'ok', accepted: 'info', sent: 'ok', held: 'warn', digested: 'ok', unrouted: '',
    queued: 'info', deferred: 'warn', partial: 'warn', parked: 'danger', failed: 'danger', rejected: 'danger', cancelled: '',
    pending: 'info', up: 'ok', down: 'danger', ok: 'ok', transient: 'warn', permanent: 'danger',
  };

  function badge(text, kind) {
    const k = kind === undefined ? BADGES[String(text).toLowerCase()] : kind;
    return h('span', { class: 'badge' + (k ? ' badge-' + k : '') }, text);
  }

  /** A table: columns are [label, row => content, optional class]; an empty list says so. */
  function table(columns, rows, options = {}) {
    const head = h('tr', null, columns.map(([label, , cls]) => h('th', { scope: 'col', class: cls }, label)));
    const body = h('tbody');
    if (rows.length === 0) {
      body.append(h('tr', null, h('td', { colspan: columns.length, class: 'empty' }, options.empty || 'Nothing here.')));
    }
    for (const row of rows) {
      const tr = h('tr', options.rowAttrs ? options.rowAttrs(row) : null, columns.map(([, cell, cls]) => h('td', { class: cls }, cell(row))));
      body.append(tr);
    }
    return h('div', { class: 'table-wrap' }, h('table', options.id ? { id: options.id } : null, options.caption ? h('caption', null, options.caption) : null, h('thead', null, head), body));
  }

  let tabPanels = 0;

  /** Tabs over one panel: views maps each tab's name to a function giving its content (may be async); extra nodes follow the tabs. */
  function tabs(label, views, ...extra) {
    const panel = h('div', { role: 'tabpanel', id: 'tab-panel-' + ++tabPanels });
    const list = h('div', { class: 'tab-list', role: 'tablist', 'aria-label': label });
    const select = async (tab, view) => {
      for (const t of list.querySelectorAll('[role=tab]')) t.setAttribute('aria-selected', String(t === tab));
      try {
        clear(panel, await view());
      } catch (e) {
        clear(panel, h('p', { class: 'notice notice-error' }, e.message));
      }
    };
    for (const [name, view] of Object.entries(views)) {
      const tab = h('button', { type: 'button', role: 'tab', 'aria-controls': panel.id, 'aria-selected': 'false' }, name);
      tab.addEventListener('click', () => select(tab, view));
      list.append(tab);
    }
    select(list.querySelector('[role=tab]'), Object.values(views)[0]);
    return h('div', null, h('div', { class: 'tabs' }, list, extra), panel);
  }

  function facts(pairs) {
    return h('dl', { class: 'facts' }, pairs.filter((p) => p).map(([k, v]) => [h('dt', null, k), h('dd', null, v === null || v === undefined || v === '' ? '—' : v)]));
  }

  // ---- Formatting ----

  const pad = (n) => String(n).padStart(2, '0');

  function dateText(d, withSeconds) {
    const day = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate());
    const time = pad(d.getHours()) + ':' + pad(d.getMinutes()) + (withSeconds ? ':' + pad(d.getSeconds()) : '');
    const today = new Date();
    return d.toDateString() === today.toDateString() ? time : day + ' ' + time;
  }

  /** A <time>: today's as HH:MM:SS, older ones with the date; the full instant in its title. */
  function when(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    return h('time', { datetime: iso, title: d.toString() }, dateText(d, true));
  }

  function agoText(iso) {
    const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 0) return 'in ' + spanText(-seconds);
    if (seconds < 5) return 'just now';
    return spanText(seconds) + ' ago';
  }

  function spanText(seconds) {
    if (seconds < 60) return seconds + ' s';
    if (seconds < 3600) return Math.round(seconds / 60) + ' min';
    if (seconds < 172800) return Math.round(seconds / 3600) + ' h';
    return Math.round(seconds / 86400) + ' d';
  }

  function ago(iso) {
    if (!iso) return h('span', { class: 'muted' }, 'never');
    const d = new Date(iso);
    return h('time', { datetime: iso, title: d.toString() }, agoText(iso));
  }

  /** .NET TimeSpan JSON ("1.02:03:04") as words. */
  function timespan(value) {
    const m = /^(?:(\d+)\.)?(\d+):(\d+):(\d+)/.exec(value || '');
    if (!m) return value || '—';
    const seconds = (+(m[1] || 0)) * 86400 + (+m[2]) * 3600 + (+m[3]) * 60 + (+m[4]);
    return spanText(seconds);
  }

  function bytes(n) {
    if (n === null || n === undefined || n < 0) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
  }

  /** A date as an <input type=datetime-local> value (local time, to the minute). */
  function localInput(d) {
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + 'T' + pad(d.getHours()) + ':' + pad(d.getMinutes());
  }

  function params() {
    return new URLSearchParams(location.search);
  }

  // ---- Shared views ----

  const deviceLink = (id) => h('a', { href: '/device?id=' + encodeURIComponent(id), class: 'nowrap' }, id);
  const alertHref = (rowId) => '/alert?id=' + encodeURIComponent(rowId);

  /** Alerts, newest first; those in the set `fresh` (row numbers) arrived while the page was open and are marked. */
  function alertTable(alerts, fresh, empty) {
    return table([
      ['#', (a) => h('a', { href: alertHref(a.rowId) }, String(a.rowId)), 'num'],
      ['Received', (a) => when(a.receivedAt), 'nowrap'],
      ['Device', (a) => deviceLink(a.device)],
      ['Code', (a) => (a.code ? h('a', { href: alertHref(a.rowId) }, a.code) : h('span', { class: 'muted' }, 'none'))],
      ['Severity', (a) => (a.severity ? badge(a.severity) : '—')],
      ['State', (a) => badge(a.status)],
      ['Via', (a) => (a.via === 'LOCAL' ? 'gateway' : a.via)], // LOCAL: raised by the gateway itself (DEVICE_SILENT, DEVICE_BACK)
      ['Note', (a) => a.reason || ''],
    ], alerts, { empty, caption: null, rowAttrs: (a) => ({ class: fresh && fresh.has(a.rowId) ? 'is-new' : null, 'data-row': a.rowId }) });
  }

  function deviceState(d) {
    return d.disabled ? 'disabled' : d.online ? 'online' : d.silent ? 'silent' : 'offline';
  }

  /** The heartbeat facts the console knows by name (the status JSON of the firmware); null when not sent. */
  function heartbeat(hb) {
    const b = hb || {};
    const num = (v, unit) => (typeof v === 'number' ? v + unit : null);
    return {
      queue: num(b.queue_depth, ''),
      dropped: num(b.dropped, ''),
      battery: num(b.battery_pct, ' %') || num(b.battery_mv, ' mV'),
      signal: num(b.rssi_dbm, ' dBm'),
      firmware: typeof b.fw === 'string' ? b.fw : null,
    };
  }

  /** A device secret, shown this once: the gateway keeps only its hash. */
  function secretBox(title, deviceId, secret, onClose) {
    const copy = h('button', { type: 'button', class: 'secondary small' }, 'Copy');
    copy.addEventListener('click', () => navigator.clipboard.writeText(secret).then(() => { copy.textContent = 'Copied'; }));
    const close = h('button', { type: 'button', class: 'small' }, 'I have stored it');
    const box = h('section', { class: 'secret-box', role: 'alert', 'aria-labelledby': 'secret-title' },
      h('h2', { id: 'secret-title' }, title),
      h('p', null, 'This secret is shown only now: the gateway keeps only its hash. Put it in the device.'),
      facts([
        ['Device (MQTT client id and user name)', h('code', null, deviceId)],
        ['Secret (MQTT password, SMTP AUTH password)', [h('code', { class: 'secret', id: 'device-secret' }, secret), ' ', copy]],
        ['Alerts go to topic', h('code', null, 'edgemail/v1/' + deviceId + '/alert')],
      ]),
      h('p', null, close));
    close.addEventListener('click', () => {
      box.remove();
      if (onClose) onClose();
    });
    return box;
  }

  // ---- Notices ----

  let notices = null;

  /** A message at the top of the page: ok, warn or error (errors are announced at once). */
  function notice(text, kind = 'ok') {
    const node = h('div', { class: 'notice notice-' + kind, role: kind === 'error' ? 'alert' : 'status' }, text);
    if (notices) {
      notices.replaceChildren(node);
      node.scrollIntoView({ block: 'nearest' });
    }
    return node;
  }

  /** Runs a change from a button: disabled while it runs, its error shown as a notice. */
  async function act(button, change, done) {
    button.disabled = true;
    try {
      const result = await change();
      if (done) await done(result);
    } catch (e) {
      notice(e.message, 'error');
    } finally {
      button.disabled = false;
    }
  }

  /** Remembers which alerts arrived while the page was open: the rows newer than the newest of the first load. */
  function arrivals() {
    let newest = null;
    const fresh = new Set();
    return {
      fresh,
      see(alerts) {
        for (const a of alerts) {
          if (newest !== null && a.rowId > newest) fresh.add(a.rowId);
        }
        newest = Math.max(newest ?? 0, ...alerts.map((a) => a.rowId));
      },
    };
  }

  // ---- Live feed ----

  const listeners = { dashboard: [], alert: [] };
  let source = null;
  let liveBadge = null;

  function setLive(on) {
    if (!liveBadge) return;
    liveBadge.classList.toggle('is-on', on);
    liveBadge.textContent = on ? 'Live' : 'Reconnecting…';
  }

  function connect() {
    if (source) return;
    source = new EventSource('/api/v1/events');
    for (const name of Object.keys(listeners)) {
      source.addEventListener(name, (event) => {
        const data = JSON.parse(event.data);
        for (const listener of listeners[name]) listener(data);
      });
    }
    source.addEventListener('open', () => setLive(true));
    source.addEventListener('error', () => {
      setLive(false);
      if (source.readyState === EventSource.CLOSED) {
        // Refused (the session ended, or the gateway restarted): api() sends a lost session to /login.
        source = null;
        api('/session').then(() => setTimeout(connect, 3000), () => setTimeout(connect, 3000));
      }
    });
  }

  /** Calls fn with each event of that name ('dashboard' or 'alert'). */
  function on(name, fn) {
    listeners[name].push(fn);
    connect();
  }

  /** Re-runs load() when anything changes (at most one run at a time; changes meanwhile give one more run). */
  function refreshOnChange(load, names = ['dashboard', 'alert']) {
    let running = false;
    let again = false;
    const run = async () => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        do {
          again = false;
          await load();
        } while (again);
      } catch (e) {
        notice(e.message, 'error');
      } finally {
        running = false;
      }
    };
    for (const name of names) on(name, run);
  }

  // ---- Page ----

  function header(current) {
    liveBadge = h('span', { class: 'live', role: 'status', title: 'Live updates from the gateway' }, 'Connecting…');
    const logout = h('button', { type: 'button', class: 'link-button' }, 'Log out');
    logout.addEventListener('click', () => act(logout, () => api('/logout', { method: 'POST' }), () => location.assign('/login')));
    return h('header', { class: 'top' },
      h('a', { class: 'brand', href: '/' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }, '✉ '), 'EdgeMail'),
      h('nav', { 'aria-label': 'Console' }, h('ul', null, NAV.map(([href, label, pages]) =>
        h('li', null, h('a', { href, 'aria-current': pages.includes(current) ? 'page' : null }, label))))),
      h('div', { class: 'top-right' }, liveBadge, logout));
  }

  /** Builds the page frame, then runs render(main); a failure is shown rather than a blank page. */
  function start(render) {
    const current = document.body.dataset.page;
    const main = document.getElementById('app');
    main.setAttribute('tabindex', '-1');
    notices = h('div', { class: 'notices', 'aria-live': 'polite' });
    document.body.prepend(h('a', { class: 'skip', href: '#app' }, 'Skip to content'), header(current));
    clear(main, notices);
    const content = h('div');
    main.append(content);
    Promise.resolve()
      .then(() => render(content))
      .catch((e) => {
        if (e.status !== 401) notice(e.message, 'error');
      })
      .finally(connect);
  }

  return {
    api, query, h, svg, clear, badge, table, tabs, facts, when, ago, timespan, duration: spanText, bytes, params, localInput, dateText,
    deviceLink, alertHref, alertTable, arrivals, deviceState, heartbeat, secretBox, notice, act, on, refreshOnChange, start, ApiError,
  };
})();
