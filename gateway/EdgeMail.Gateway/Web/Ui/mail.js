// A queued or sent mail: recipients, every attempt with the remote reply, its content (rendered in a sandbox, text,
// raw .eml) and the actions on it. Used by the alert journey and the mail queue.
'use strict';

(() => {
  const { h, api } = EM;

  /** A queued mail that has been tried is deferred. */
  function mailState(m) {
    return m.status === 'queued' && m.attempts > 0 ? 'deferred' : m.status;
  }

  /** Retry now / release / cancel, as the mail's state allows; onDone runs after a change succeeded. */
  function mailActions(m, onDone) {
    const buttons = [];
    const action = (label, verb, cls, ask) => {
      const button = h('button', { type: 'button', class: 'small ' + cls, 'data-action': verb }, label);
      button.addEventListener('click', () => {
        if (ask && !confirm(ask)) return;
        EM.act(button, () => api(`/queue/${m.rowId}/${verb}`, { method: 'POST', body: verb === 'cancel' ? { reason: 'cancelled in the console' } : undefined }),
          async () => {
            EM.notice(`Mail ${m.rowId}: ${verb === 'retry' ? 'retrying now' : verb === 'release' ? 'released, queued again' : 'cancelled'}.`);
            if (onDone) await onDone();
          });
      });
      buttons.push(button);
    };
    if (m.status === 'queued') action('Retry now', 'retry', '');
    if (m.status === 'parked') action('Release', 'release', '');
    if (m.status === 'queued' || m.status === 'parked') {
      action('Cancel', 'cancel', 'danger', `Cancel mail ${m.rowId}? It will never be sent; its pending recipients fail.`);
    }
    return h('div', { class: 'actions' }, buttons);
  }

  // Rendered (sandboxed iframe: no scripts, no remote content, its own opaque origin) / text / raw.
  function content(rowId) {
    const base = `/api/v1/messages/${rowId}`;
    return EM.tabs('Mail content', {
      Rendered: () => h('iframe', { class: 'mail-frame', sandbox: '', src: base + '/html', title: `Mail ${rowId} as the recipient sees it` }),
      Text: async () => h('pre', { class: 'block mail-text' }, await api(`/messages/${rowId}/text`)),
    }, h('a', { href: base + '/raw', download: `message-${rowId}.eml`, class: 'raw-link' }, 'Raw .eml'));
  }

  /** Everything about one mail (a MessageView from the API). */
  function mailView(view, onChange) {
    const m = view.summary;
    const state = mailState(m);
    const attemptRows = view.attempts.flatMap((a) => a.results.map((r) => ({ ...r, attempt: a.attempt, at: a.at })));
    return h('article', { class: 'panel mail', 'data-mail': m.rowId, 'aria-labelledby': `mail-${m.rowId}-title` },
      h('div', { class: 'title-line' },
        h('h3', { id: `mail-${m.rowId}-title` }, view.subject || '(no subject)'),
        EM.badge(state),
        mailActions(m, onChange)),
      EM.facts([
        ['Message-ID', h('code', null, m.messageId)],
        ['Kind', m.kind],
        ['Envelope sender', view.envelopeFrom ? h('code', null, view.envelopeFrom) : '<> (null sender)'],
        ['Queued', EM.when(m.createdAt)],
        ['Attempts', String(m.attempts)],
        m.status === 'queued' ? ['Next attempt', [EM.when(m.nextAttemptAt), ' (', EM.ago(m.nextAttemptAt), ')']] : null,
        m.status === 'queued' ? ['Given up', EM.when(view.expiresAt)] : null,
        view.finishedAt ? ['Finished', EM.when(view.finishedAt)] : null,
        m.reason ? ['Reason', m.reason] : null,
      ]),
      h('h4', null, 'Recipients'),
      EM.table([
        ['Address', (r) => h('code', null, r.address)],
        ['State', (r) => EM.badge(r.status)],
        ['Last reply', (r) => r.reply || '', 'reply'],
      ], view.recipients, { rowAttrs: () => ({ class: 'recipient' }) }),
      h('h4', null, 'Delivery attempts'),
      EM.table([
        ['#', (r) => String(r.attempt), 'num'],
        ['At', (r) => EM.when(r.at), 'nowrap'],
        ['Recipient', (r) => h('code', null, r.address)],
        ['Outcome', (r) => EM.badge(r.outcome)],
        ['Remote reply', (r) => r.reply, 'reply'],
      ], attemptRows, { empty: 'Not tried yet.', rowAttrs: () => ({ class: 'attempt' }) }),
      h('h4', null, 'Content'),
      content(m.rowId));
  }

  Object.assign(EM, { mailState, mailActions, mailView });
})();
