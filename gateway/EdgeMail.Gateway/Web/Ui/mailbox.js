// The local mailbox (Relay:Mode = Mailbox): the list beside the chosen message — rendered in a sandbox, text, headers, raw.
'use strict';

EM.start(async (main) => {
  const { h, api } = EM;
  const chosen = EM.params().get('file');
  const list = h('div');
  const message = h('div');
  EM.clear(main, h('h1', null, 'Local mailbox'), h('div', { class: 'split' }, h('section', { 'aria-label': 'Messages' }, list), message));

  const open = (file) => '/mailbox?file=' + encodeURIComponent(file);
  const path = (file) => '/mailbox/' + encodeURIComponent(file);

  function views(m) {
    const file = m.entry.file;
    return EM.tabs('Message views', {
      Rendered: () => h('iframe', { class: 'mail-frame', sandbox: '', src: '/api/v1' + path(file) + '/html', title: 'The message as the recipient sees it' }),
      Text: () => h('pre', { class: 'block mail-text' }, m.text || '(no text part)'),
      Headers: () => EM.table([['Header', (x) => x.key], ['Value', (x) => x.value, 'reply']], m.headers),
    }, h('a', { href: '/api/v1' + path(file) + '/raw', download: file, class: 'raw-link' }, 'Download .eml'));
  }

  async function showMessage() {
    if (!chosen) {
      EM.clear(message, h('p', { class: 'panel muted' }, 'Choose a message to read it.'));
      return;
    }
    const m = await api(path(chosen));
    EM.clear(message, h('article', { class: 'panel', 'aria-labelledby': 'message-title' },
      h('h2', { id: 'message-title' }, m.entry.subject || '(no subject)'),
      EM.facts([['From', m.entry.from], ['To', m.entry.to], ['Delivered', EM.when(m.entry.delivered)], ['Size', EM.bytes(m.entry.size)]]),
      views(m)));
  }

  let last = '';
  async function load() {
    let entries;
    try {
      entries = await api('/mailbox?limit=500');
    } catch (e) {
      if (e.status !== 404) throw e;
      EM.clear(list, h('p', { class: 'notice notice-warn' }, e.message));
      return;
    }
    const json = JSON.stringify(entries);
    if (json === last) return;
    last = json;
    EM.clear(list, EM.table([
      ['Delivered', (e) => EM.when(e.delivered), 'nowrap'],
      ['Message', (e) => [h('a', { href: open(e.file) }, e.subject || '(no subject)'), h('div', { class: 'muted small' }, 'To ', e.to)]],
      ['Size', (e) => EM.bytes(e.size), 'num'],
    ], entries, { id: 'mailbox-list', empty: 'The mailbox is empty.', rowAttrs: (e) => ({ class: e.file === chosen ? 'is-selected' : null }) }));
  }

  await load();
  await showMessage();
  EM.refreshOnChange(load, ['dashboard']);
});
