// Configuration: the effective configuration (secrets redacted) with its validation; a test mail through the relay;
// the console's own access (admin password, API keys).
'use strict';

EM.start(async (main) => {
  const { h, api } = EM;
  const OPEN = new Set(['relay']);

  function value(v) {
    if (v === null || v === undefined || v === '') return h('span', { class: 'null' }, 'not set');
    if (v === '(redacted)') return h('span', { class: 'redacted' }, 'redacted');
    if (Array.isArray(v)) {
      if (v.length === 0) return h('span', { class: 'null' }, 'none');
      if (v.every((x) => x === null || typeof x !== 'object')) return v.map(String).join(', ');
      return v.map((x, i) => h('div', null, h('span', { class: 'muted' }, '#' + (i + 1)), value(x)));
    }
    if (typeof v === 'object') {
      const entries = Object.entries(v);
      if (entries.length === 0) return h('span', { class: 'null' }, 'none');
      return h('table', null, h('tbody', null, entries.map(([k, x]) => h('tr', null, h('th', { scope: 'row' }, k), h('td', null, value(x))))));
    }
    return String(v);
  }

  function validation(c) {
    return h('section', { class: 'panel', id: 'validation', 'aria-labelledby': 'validation-title' },
      h('h2', { id: 'validation-title' }, 'Validation'),
      c.problems.length
        ? [h('p', { class: 'notice notice-error' }, `${c.problems.length} problem${c.problems.length === 1 ? '' : 's'}: the gateway would not start with this configuration.`),
          h('ul', { class: 'problems' }, c.problems.map((p) => h('li', null, p)))]
        : h('p', { class: 'notice notice-ok' }, 'No problems: the configuration is valid.'),
      c.warnings.length
        ? [h('h3', null, 'Warnings'), h('ul', { class: 'warnings' }, c.warnings.map((w) => h('li', null, w)))]
        : h('p', { class: 'muted' }, 'No warnings.'));
  }

  function effective(c) {
    const entries = Object.entries(c.configuration);
    const isSection = ([, v]) => v !== null && typeof v === 'object' && !Array.isArray(v);
    return h('section', { class: 'panel config-tree', id: 'effective', 'aria-labelledby': 'effective-title' },
      h('h2', { id: 'effective-title' }, 'Effective configuration'),
      h('p', { class: 'muted small' }, 'As the running gateway uses it, defaults included. Passwords, secrets and keys are redacted.'),
      value(Object.fromEntries(entries.filter((e) => !isSection(e)))),
      entries.filter(isSection).map(([section, v]) =>
        h('details', { open: OPEN.has(section.toLowerCase()) }, h('summary', null, section), value(v))));
  }

  function sendTest() {
    const to = h('input', { id: 'test-to', type: 'email', required: true, placeholder: 'you@example.com', autocomplete: 'email' });
    const form = h('form', { class: 'inline' }, h('div', { class: 'field' }, h('label', { for: 'test-to' }, 'To'), to), h('button', { type: 'submit' }, 'Send test mail'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      EM.act(form.querySelector('button'), () => api('/send-test', { method: 'POST', body: { to: to.value } }), (r) => {
        const n = EM.notice('Test mail queued: ');
        n.append(h('a', { href: '/queue?state=all&mail=' + encodeURIComponent(r.rowId) }, 'follow it in the queue'), '.');
      });
    });
    return h('section', { class: 'panel', 'aria-labelledby': 'test-title' }, h('h2', { id: 'test-title' }, 'Test the relay'),
      h('p', { class: 'muted small' }, 'Queues a short mail to one address through the configured relay.'), form);
  }

  function password() {
    const field = (id, label, autocomplete) => h('div', { class: 'field' }, h('label', { for: id }, label), h('input', { id, type: 'password', autocomplete, minlength: 12, required: true }));
    const form = h('form', { class: 'inline' }, field('current-password', 'Current password', 'current-password'),
      field('new-password', 'New admin password (12 characters or more)', 'new-password'), field('new-password-2', 'Repeat it', 'new-password'),
      h('button', { type: 'submit' }, 'Change password'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const [current, a, b] = ['#current-password', '#new-password', '#new-password-2'].map((id) => form.querySelector(id).value);
      if (a !== b) {
        EM.notice('The two passwords differ.', 'error');
        return;
      }
      // The change ends every session, this one too: log in again with the new password.
      EM.act(form.querySelector('button'), () => api('/password', { method: 'POST', body: { current, password: a } }), () => {
        location.assign('/login?next=' + encodeURIComponent('/config'));
      });
    });
    return form;
  }

  const keySlot = h('div');
  const keyList = h('div');

  async function loadKeys() {
    const keys = await api('/api-keys');
    keys.sort((a, b) => (a.revokedAt ? 1 : 0) - (b.revokedAt ? 1 : 0) || b.createdAt.localeCompare(a.createdAt));
    EM.clear(keyList, EM.table([
      ['Id', (k) => h('code', null, k.id)],
      ['For', (k) => k.name],
      ['Scope', (k) => EM.badge(k.scope, k.scope === 'admin' ? 'warn' : 'info')],
      ['Created', (k) => EM.when(k.createdAt), 'nowrap'],
      ['State', (k) => (k.revokedAt ? [EM.badge('revoked', ''), ' ', EM.when(k.revokedAt)] : EM.badge('active', 'ok'))],
      ['Actions', (k) => {
        if (k.revokedAt) return null;
        const b = h('button', { type: 'button', class: 'small danger' }, 'Revoke');
        b.addEventListener('click', () => {
          if (!confirm(`Revoke API key ${k.id} (${k.name})? Whatever uses it is refused at once.`)) return;
          EM.act(b, () => api('/api-keys/' + encodeURIComponent(k.id), { method: 'DELETE' }), loadKeys);
        });
        return b;
      }],
    ], keys, { id: 'api-keys', empty: 'No API keys.' }));
  }

  function apiKeys() {
    const name = h('input', { id: 'key-name', required: true, maxlength: 100, placeholder: 'monitoring script' });
    // No default: what a key may do is chosen each time.
    const scope = h('select', { id: 'key-scope', name: 'key-scope', required: true },
      h('option', { value: '' }, 'Choose…'),
      h('option', { value: 'read' }, 'read — GET requests, /metrics, /events'),
      h('option', { value: 'admin' }, 'admin — everything, as the admin'));
    const form = h('form', { class: 'inline' },
      h('div', { class: 'field' }, h('label', { for: 'key-name' }, 'What is it for?'), name),
      h('div', { class: 'field' }, h('label', { for: 'key-scope' }, 'Scope'), scope),
      h('button', { type: 'submit' }, 'Create API key'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      EM.act(form.querySelector('button'), () => api('/api-keys', { method: 'POST', body: { name: name.value, scope: scope.value } }), async (k) => {
        form.reset();
        EM.clear(keySlot, h('div', { class: 'secret-box', role: 'alert' },
          h('p', null, `API key for “${k.name}” (scope ${k.scope}), shown only now (the gateway keeps only its hash). Send it as `, h('code', null, 'Authorization: Bearer KEY'), ':'),
          h('code', { class: 'secret', id: 'new-api-key' }, k.key)));
        await loadKeys();
      });
    });
    return [keySlot, form, keyList];
  }

  const c = await api('/config');
  EM.clear(main,
    h('h1', null, 'Configuration'),
    validation(c),
    effective(c),
    sendTest(),
    h('section', { class: 'panel', id: 'access', 'aria-labelledby': 'access-title' },
      h('h2', { id: 'access-title' }, 'Console access'),
      h('h3', null, 'Admin password'), password(),
      h('h3', null, 'API keys'),
      h('p', { class: 'muted small' }, 'For scripts and the CLI: the same API as this console, at ', h('a', { href: '/api/v1/openapi.json' }, '/api/v1/openapi.json'),
        '. A read key (a scraper, a wall screen) may only look; an admin key may do everything, this page included.'),
      apiKeys()));
  await loadKeys();
});
