// Login and first-time setup: the only script a browser without a session may load, so it stands alone.
'use strict';

(() => {
  const form = document.querySelector('form');
  const message = document.getElementById('message');
  const password = document.getElementById('password');

  function say(text, kind = 'error') {
    message.className = text ? 'notice notice-' + kind : '';
    message.textContent = text;
  }

  async function post(path, body) {
    const response = await fetch('/api/v1/' + path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
    });
    if (response.ok) return null;
    try {
      return (await response.json()).error || response.statusText;
    } catch {
      return response.status + ' ' + response.statusText;
    }
  }

  async function setupNeeded() {
    const response = await fetch('/api/v1/setup', { credentials: 'same-origin' });
    return response.ok && (await response.json()).needed;
  }

  // Only a page of this console, never another site (an open redirect would help phishing). Resolved the way the
  // browser will resolve it: a check of the text alone missed "/\t/evil.example", since the browser drops tabs and
  // line feeds from a URL and then goes to //evil.example. A path that begins with "//" once resolved
  // ("/.//evil.example") is no page of the console either, and would be another site if used as a path again.
  function next() {
    try {
      const target = new URL(new URLSearchParams(location.search).get('next') || '/', location.origin);
      if (target.origin === location.origin && !target.pathname.startsWith('//')) return target.href;
    } catch {
      // not a URL at all
    }
    return '/';
  }

  function submit(handler) {
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const button = form.querySelector('button[type=submit]');
      button.disabled = true;
      try {
        await handler();
      } catch (e) {
        say(e.message);
      } finally {
        button.disabled = false;
      }
    });
  }

  function login() {
    setupNeeded().then((needed) => {
      if (needed) {
        say('No admin password is set yet. Open the setup link the gateway printed in its log, or run: edgemail admin set-password', 'warn');
      }
    });
    submit(async () => {
      say('');
      const error = await post('login', { password: password.value });
      if (error) {
        say(error);
        password.select();
        return;
      }
      location.assign(next());
    });
  }

  function setup() {
    // The token arrives in the fragment (never sent to a server or logged by a proxy); take it out of the address bar.
    const token = decodeURIComponent(location.hash.slice(1));
    if (location.hash) history.replaceState(null, '', location.pathname);
    const confirm = document.getElementById('confirm');
    setupNeeded().then((needed) => {
      if (!needed) {
        say('The admin password is already set. Log in instead.', 'warn');
        message.append(' ', Object.assign(document.createElement('a'), { href: '/login', textContent: 'Go to the login page' }));
      } else if (!token) {
        say('This page needs the setup link the gateway printed in its log (it ends with #…).', 'warn');
      }
    });
    submit(async () => {
      if (password.value.length < 12) {
        say('The password must have at least 12 characters.');
        password.focus();
        return;
      }
      if (password.value !== confirm.value) {
        say('The two passwords differ.');
        confirm.focus();
        return;
      }
      const error = await post('setup', { token, password: password.value });
      if (error) {
        say(error);
        return;
      }
      location.assign('/');
    });
  }

  if (document.body.dataset.page === 'setup') setup();
  else login();
})();
