// The pitcrew dashboard: plain JavaScript over the HTTP API, no framework.
// Every value from the server goes into the page as text (textContent),
// never as markup. The API token lives in sessionStorage only: it is sent
// in the Authorization header, never in a URL, and is gone when the tab is.
'use strict';

(() => {
  const TOKEN_KEY = 'pitcrew.token';
  const PAGE = 50;
  const $ = (selector) => document.querySelector(selector);

  // ---- elements -----------------------------------------------------------

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }

  function svg(tag, attrs, ...kids) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function append(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      el.append(k instanceof Node ? k : String(k));
    }
  }

  const stateBadge = (s) => h('span', { class: `badge state-${s}` }, s.replace('_', ' '));
  const short = (id) => (id || '').slice(-8);
  const execLink = (id) => h('a', { href: `#/executions/${encodeURIComponent(id)}`, class: 'mono', title: id }, short(id));

  function when(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }

  function json(v) {
    return h('pre', {}, JSON.stringify(v, null, 2));
  }

  function table(headers, rows, empty) {
    if (rows.length === 0) return h('p', { class: 'muted' }, empty || 'Nothing here.');
    return h('table', {}, h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))), h('tbody', {}, rows));
  }

  // ---- API ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

  function headers(extra) {
    const out = Object.assign({ Accept: 'application/json' }, extra || {});
    if (token()) out.Authorization = `Bearer ${token()}`;
    return out;
  }

  // A write sends JSON (the API refuses other types for writes).
  async function api(path, options) {
    const opts = options || {};
    const init = { method: opts.method || 'GET', headers: headers(), cache: 'no-store', credentials: 'omit' };
    if (init.method !== 'GET') {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body || {});
    }
    const res = await fetch(path, init);
    const text = await res.text();
    if (!res.ok) {
      let message = text;
      try {
        message = JSON.parse(text).error || text;
      } catch (_) {
        // not JSON: the text as it is
      }
      throw new ApiError(res.status, message.trim() || res.statusText);
    }
    return { res, text, body: opts.lines ? null : text ? JSON.parse(text) : null };
  }

  // The `after` cursor of a Link: <...>; rel="next" header.
  function nextCursor(res) {
    const link = res.headers.get('Link');
    const m = link && link.match(/<([^>]*)>\s*;\s*rel="next"/);
    if (!m) return null;
    return new URL(m[1], location.href).searchParams.get('after');
  }

  // ---- messages -----------------------------------------------------------

  function showError(e) {
    const box = $('#error');
    let text = e && e.message ? e.message : String(e);
    if (e instanceof ApiError && e.status === 401) text = `This server needs an API token: enter it above (${text}).`;
    else if (e instanceof ApiError) text = `${e.status}: ${text}`;
    box.textContent = text;
    box.hidden = false;
  }

  function clearError() {
    $('#error').hidden = true;
    $('#error').textContent = '';
  }

  // ---- token --------------------------------------------------------------

  const tokenWaiters = [];

  function showToken() {
    const set = !!token();
    $('#token-form').hidden = set;
    $('#token-set').hidden = !set;
  }

  function tokenChanged() {
    showToken();
    clearError();
    while (tokenWaiters.length) tokenWaiters.shift()();
    restartStream();
    route();
    refreshStatus();
  }

  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = $('#token').value.trim();
    $('#token').value = '';
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    tokenChanged();
  });

  $('#token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenChanged();
  });

  // ---- live updates -------------------------------------------------------
  // Server-sent events read with fetch: EventSource cannot send the token.

  let lastSeq = null;
  let streamCtl = null;
  let streamOpen = false;
  const listeners = new Set();

  function setLive(on, text) {
    const el = $('#live');
    el.textContent = text || (on ? 'live' : 'offline');
    el.className = `badge ${on ? 'ok' : 'off'}`;
  }

  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function handleBlock(block) {
    let id = null;
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':') || line === '') continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      else if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (id !== null && /^\d+$/.test(id)) lastSeq = id;
    if (event !== 'audit' || data.length === 0) return;
    const record = JSON.parse(data.join('\n'));
    for (const listener of listeners) listener(record);
  }

  async function stream() {
    let backoff = 1000;
    for (;;) {
      const ctl = new AbortController();
      streamCtl = ctl;
      try {
        const url = lastSeq === null ? '/v1/events' : `/v1/events?after=${lastSeq}`;
        const res = await fetch(url, { headers: headers({ Accept: 'text/event-stream' }), signal: ctl.signal, cache: 'no-store', credentials: 'omit' });
        if (res.status === 401 || res.status === 403) {
          setLive(false, 'needs token');
          await new Promise((resolve) => tokenWaiters.push(resolve));
          continue;
        }
        if (!res.ok || !res.body) throw new Error(`event stream: ${res.status}`);
        streamOpen = true;
        setLive(true);
        backoff = 1000;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            handleBlock(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (_) {
        // cut, aborted or unreachable: reconnect below, from the last seq
      }
      streamOpen = false;
      if (ctl.signal.aborted) continue;
      setLive(false, 'reconnecting');
      await pause(backoff);
      backoff = Math.min(backoff * 2, 15000);
    }
  }

  function restartStream() {
    if (streamOpen && streamCtl) streamCtl.abort();
  }

  // Runs `f` once things have settled: a burst of events is one refresh.
  function debounce(f, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(f, ms);
    };
  }

  // Renders the view again after events, but not under someone typing
  // (a deny reason): then once they leave the field.
  function liveReload(view) {
    const again = debounce(() => {
      if (!view.alive) return;
      const typing = document.activeElement && document.activeElement.tagName === 'INPUT' && $('#view').contains(document.activeElement);
      if (typing) document.activeElement.addEventListener('blur', again, { once: true });
      else route();
    }, 300);
    return again;
  }

  // ---- header status ------------------------------------------------------

  async function refreshPending() {
    try {
      const { res, body } = await api(`/v1/executions?status=pending_approval&limit=100`);
      const el = $('#pending-count');
      el.hidden = body.length === 0;
      el.textContent = nextCursor(res) ? '100+' : String(body.length);
    } catch (_) {
      // shown by the view that fails
    }
  }

  async function refreshAudit() {
    const el = $('#audit-status');
    try {
      const { body } = await api('/v1/audit/verify');
      el.textContent = body.intact ? `audit intact · ${body.records}` : `audit BROKEN at ${body.broken.seq}`;
      el.className = `badge ${body.intact ? 'ok' : 'bad'}`;
      el.title = body.intact ? `hash chain verified at ${when(body.checked_at)}` : body.broken.reason;
    } catch (_) {
      el.textContent = 'audit ?';
      el.className = 'badge off';
    }
  }

  function refreshStatus() {
    refreshPending();
    refreshAudit();
  }

  const pendingSoon = debounce(refreshPending, 400);
  listeners.add((r) => {
    if (r.kind.startsWith('execution.') || r.kind.startsWith('approval.') || r.kind === 'guardrail.decision') pendingSoon();
  });

  // ---- views --------------------------------------------------------------

  let current = null; // the view on screen: { name, onEvent }

  async function render(name, build) {
    const view = { name, onEvent: null, alive: true };
    if (current) current.alive = false;
    current = view;
    for (const a of document.querySelectorAll('header nav a')) a.classList.toggle('active', a.dataset.view === name);
    try {
      const node = await build(view);
      if (!view.alive) return;
      $('#view').replaceChildren(node);
      clearError();
    } catch (e) {
      if (!view.alive) return;
      $('#view').replaceChildren(h('p', { class: 'muted' }, 'Could not load this view.'));
      showError(e);
    }
  }

  listeners.add((r) => {
    if (current && current.onEvent) current.onEvent(r);
  });

  // Executions: newest first, one page at a time by the API's keyset cursor
  // (`after`); `cursors` holds the cursor of each page before this one.
  // `live`: this render follows an event, so rows not seen before flash.
  const list = { status: '', runbook: '', cursors: [], after: null, seen: new Set(), live: false };

  function executionRows(items, fresh) {
    return items.map((e) =>
      h(
        'tr',
        { class: fresh.has(e.id) ? 'new' : null, 'data-id': e.id },
        h('td', {}, execLink(e.id)),
        h('td', {}, e.runbook),
        h('td', {}, e.target),
        h('td', {}, stateBadge(e.state), e.dry_run ? ' dry run' : ''),
        h('td', { class: 'muted wrap' }, e.reason || ''),
        h('td', {}, e.actor),
        h('td', { class: 'mono' }, when(e.created_at)),
      ),
    );
  }

  async function executionsView(view) {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (list.status) q.set('status', list.status);
    if (list.runbook) q.set('runbook', list.runbook);
    if (list.after) q.set('after', list.after);
    const [{ res, body }, runbooks] = await Promise.all([api(`/v1/executions?${q}`), api('/v1/runbooks')]);
    const next = nextCursor(res);
    const fresh = new Set(list.live ? body.filter((e) => !list.seen.has(e.id)).map((e) => e.id) : []);
    list.live = false;
    list.seen = new Set(body.map((e) => e.id));

    const go = (after, cursors) => {
      list.after = after;
      list.cursors = cursors;
      route();
    };
    const status = h(
      'select',
      { id: 'filter-status', onchange: (ev) => { list.status = ev.target.value; go(null, []); } },
      ['', 'queued', 'running', 'pending_approval', 'succeeded', 'failed', 'unknown', 'blocked', 'cancelled'].map((s) =>
        h('option', { value: s, selected: s === list.status }, s || 'any state'),
      ),
    );
    const runbook = h(
      'select',
      { id: 'filter-runbook', onchange: (ev) => { list.runbook = ev.target.value; go(null, []); } },
      h('option', { value: '' }, 'any runbook'),
      runbooks.body.map((r) => h('option', { value: r.name, selected: r.name === list.runbook }, r.name)),
    );
    const page = list.cursors.length + 1;
    const newer = h('button', { id: 'page-newer', disabled: page === 1, onclick: () => go(list.cursors[list.cursors.length - 1] || null, list.cursors.slice(0, -1)) }, '← Newer');
    const older = h('button', { id: 'page-older', disabled: !next, onclick: () => go(next, list.cursors.concat([list.after])) }, 'Older →');
    const note = h('span', { id: 'new-note', class: 'muted' });

    const reload = debounce(() => {
      if (!view.alive) return;
      list.live = true;
      route();
    }, 300);
    view.onEvent = (r) => {
      if (!r.execution_id) return;
      if (page === 1) reload();
      else note.textContent = 'New activity: go to the newest page to see it.';
    };

    return h(
      'section',
      {},
      h('h1', {}, 'Executions'),
      h('div', { class: 'toolbar' }, status, runbook, h('span', { class: 'muted', id: 'page-number' }, `page ${page}`), note),
      table(['id', 'runbook', 'target', 'state', 'reason', 'actor', 'created'], executionRows(body, fresh), 'No executions yet.'),
      h('div', { class: 'pager' }, newer, older),
    );
  }

  function decisionButtons(id, done) {
    const reason = h('input', { placeholder: 'reason (for deny)', 'aria-label': 'reason', size: 18 });
    const result = h('span', { class: 'muted result' });
    const act = async (what, button) => {
      button.disabled = true;
      try {
        const body = what === 'deny' && reason.value ? { reason: reason.value } : {};
        const { body: out } = await api(`/v1/executions/${encodeURIComponent(id)}/${what}`, { method: 'POST', body });
        result.textContent = `${what === 'approve' ? 'approved' : 'denied'}: now ${out.state}`;
        clearError();
        if (done) done();
      } catch (e) {
        button.disabled = false;
        showError(e);
      }
    };
    const approve = h('button', { class: 'approve', 'data-action': 'approve', onclick: (ev) => act('approve', ev.target) }, 'Approve');
    const deny = h('button', { class: 'deny', 'data-action': 'deny', onclick: (ev) => act('deny', ev.target) }, 'Deny');
    return h('span', { class: 'inline-form' }, approve, deny, reason, result);
  }

  async function approvalsView(view) {
    const { res, body } = await api(`/v1/executions?status=pending_approval&limit=100`);
    const reload = liveReload(view);
    view.onEvent = (r) => {
      if (r.execution_id) reload();
    };
    const rows = body.map((e) =>
      h(
        'tr',
        { 'data-id': e.id },
        h('td', {}, execLink(e.id)),
        h('td', {}, e.runbook),
        h('td', {}, e.target),
        h('td', {}, e.risk),
        h('td', {}, e.actor),
        h('td', { class: 'muted wrap' }, e.reason || ''),
        h('td', { class: 'mono' }, when(e.created_at)),
        h('td', { class: 'mono' }, when(e.approval_deadline)),
        h('td', {}, decisionButtons(e.id, null)),
      ),
    );
    return h(
      'section',
      {},
      h('h1', {}, 'Pending approvals'),
      h(
        'p',
        { class: 'muted' },
        'Approving needs an operator token. The one who requested a run cannot approve it unless its runbook allows self-approval.',
      ),
      table(['id', 'runbook', 'target', 'risk', 'requested by', 'why', 'created', 'deadline', ''], rows, 'Nothing waits for approval.'),
      nextCursor(res) ? h('p', { class: 'muted' }, 'Showing the newest 100.') : null,
    );
  }

  async function executionView(view, id) {
    const [{ body: e }, audit] = await Promise.all([
      api(`/v1/executions/${encodeURIComponent(id)}`),
      api(`/v1/audit?execution=${encodeURIComponent(id)}&limit=1000`, { lines: true }),
    ]);
    const records = audit.text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
    const reload = liveReload(view);
    view.onEvent = (r) => {
      if (r.execution_id === id) reload();
    };
    const kv = (k, v) => (v === null || v === undefined || v === '' ? [] : [h('dt', {}, k), h('dd', {}, v)]);
    const labels = e.alert && e.alert.labels ? Object.entries(e.alert.labels).map(([k, v]) => `${k}=${v}`).join(', ') : null;
    const steps = e.steps.map((s) =>
      h(
        'tr',
        {},
        h('td', {}, s.phase),
        h('td', {}, String(s.index)),
        h('td', {}, s.name),
        h('td', { class: 'mono' }, s.action),
        h('td', {}, String(s.attempt)),
        h('td', {}, stateBadge(s.state)),
        h('td', { class: 'mono' }, when(s.started_at)),
        h('td', { class: 'mono' }, when(s.finished_at)),
        h('td', { class: 'wrap' }, s.error ? h('span', { class: 'flag' }, s.error) : '', s.output !== null && s.output !== undefined ? json(s.output) : ''),
      ),
    );
    const rows = records.map((r) =>
      h('tr', {}, h('td', { class: 'mono' }, String(r.seq)), h('td', { class: 'mono' }, when(r.ts)), h('td', {}, r.kind), h('td', {}, r.actor), h('td', { class: 'wrap' }, json(r.data))),
    );
    return h(
      'section',
      {},
      h('h1', {}, `Execution ${short(e.id)} `, stateBadge(e.state)),
      e.state === 'pending_approval' ? h('p', {}, decisionButtons(e.id, null)) : null,
      h(
        'dl',
        { class: 'kv' },
        kv('id', h('span', { class: 'mono' }, e.id)),
        kv('runbook', e.runbook),
        kv('target', e.target),
        kv('reason', e.reason),
        kv('requested by', e.actor),
        kv('risk', e.risk),
        kv('mode', `${e.automated ? 'automated' : 'manual'}${e.dry_run ? ', dry run' : ''}`),
        kv('alert', labels),
        kv('created', when(e.created_at)),
        kv('started', when(e.started_at)),
        kv('finished', when(e.finished_at)),
        kv('approval deadline', when(e.approval_deadline)),
        kv('resume error', e.resume_error),
      ),
      Object.keys(e.params || {}).length ? [h('h2', {}, 'Parameters'), json(e.params)] : null,
      h('h2', {}, 'Steps'),
      table(['phase', '#', 'name', 'action', 'attempt', 'state', 'started', 'finished', 'outcome'], steps, 'No step has run.'),
      h('h2', {}, 'Audit records'),
      table(['seq', 'time', 'kind', 'actor', 'data'], rows, 'No audit records.'),
      records.length === 1000 ? h('p', { class: 'muted' }, 'The first 1,000 records; `pitcrew audit` shows them all.') : null,
    );
  }

  function guardrailText(g) {
    if (!g) return '';
    const parts = [];
    // The defaults (one at a time, no approval) go without saying.
    const usual = { concurrency: 1, approval: 'auto' };
    for (const [k, v] of Object.entries(g)) {
      if (v === null || v === undefined || v === false || (Array.isArray(v) && v.length === 0) || usual[k] === v) continue;
      if (k === 'approval_timeout' && g.approval === 'auto') continue;
      parts.push(`${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`);
    }
    return parts.join(', ');
  }

  async function runbooksView(view) {
    const [{ body: runbooks }, { body: guard }, report] = await Promise.all([api('/v1/runbooks'), api('/v1/guardrails'), optionalReport()]);
    const reload = debounce(() => {
      if (view.alive) route();
    }, 500);
    view.onEvent = (r) => {
      // Admissions start cooldowns and trip breakers; resets and reloads change them.
      if (['guardrail.decision', 'approval.granted', 'escalation.reset', 'config.loaded'].includes(r.kind)) reload();
    };
    const flagged = new Set(report ? report.runbooks.filter((r) => r.effectiveness && r.effectiveness.flagged).map((r) => r.name) : []);
    const byRunbook = (xs) => {
      const m = new Map();
      for (const x of xs) m.set(x.runbook, (m.get(x.runbook) || []).concat([x]));
      return m;
    };
    const cooldowns = byRunbook(guard.cooldowns);
    const breakers = byRunbook(guard.breakers);
    const windows = byRunbook(guard.windows || []);
    // An automated run waits for approval now when a window check says so.
    const windowCell = (w) => (w.verdict === 'approve' ? h('div', { class: 'flag', title: 'automated runs wait for approval' }, w.detail) : h('div', { class: 'muted' }, w.detail));
    const rows = runbooks.map((r) =>
      h(
        'tr',
        { 'data-runbook': r.name },
        h('td', { class: 'wrap' }, h('strong', {}, r.name), r.description ? h('div', { class: 'muted' }, r.description) : null),
        h('td', {}, r.risk),
        h('td', {}, r.owner || ''),
        h('td', { class: 'mono wrap' }, r.trigger ? [].concat(r.trigger.alertname || []).concat(r.trigger.matchers || []).join(' ') : 'manual'),
        h('td', { class: 'mono wrap' }, guardrailText(r.guardrails)),
        h('td', {}, (cooldowns.get(r.name) || []).map((c) => h('div', {}, `${c.target} until ${when(c.until)}`))),
        h('td', {}, (breakers.get(r.name) || []).map((b) => h('div', { class: 'flag' }, `${b.target} since ${when(b.tripped_at)}`))),
        h('td', { class: 'wrap' }, (windows.get(r.name) || []).map(windowCell)),
        h('td', {}, flagged.has(r.name) ? h('span', { class: 'flag', title: 'the alert often comes back after this runbook ran' }, 'flagged') : ''),
      ),
    );
    return h(
      'section',
      {},
      h('h1', {}, 'Runbooks'),
      table(['runbook', 'risk', 'owner', 'trigger', 'guardrails', 'cooldowns running', 'breakers tripped', 'windows now', 'effectiveness'], rows, 'No runbooks loaded.'),
      h('h2', {}, 'Tripped escalation breakers'),
      table(
        ['runbook', 'target', 'tripped', 'reason'],
        guard.breakers.map((b) => h('tr', {}, h('td', {}, b.runbook), h('td', {}, b.target), h('td', { class: 'mono' }, when(b.tripped_at)), h('td', { class: 'wrap' }, b.reason))),
        'No breaker is tripped.',
      ),
      h('h2', {}, 'Cooldowns running'),
      table(
        ['runbook', 'target', 'cooldown', 'last run', 'until'],
        guard.cooldowns.map((c) =>
          h('tr', {}, h('td', {}, c.runbook), h('td', {}, c.target), h('td', {}, c.cooldown), h('td', { class: 'mono' }, when(c.last_run_at)), h('td', { class: 'mono' }, when(c.until))),
        ),
        'No cooldown is running.',
      ),
    );
  }

  function budgetBar(remaining) {
    if (remaining === null || remaining === undefined) return h('span', { class: 'muted' }, 'unknown');
    const pct = Math.max(0, Math.min(1, remaining)) * 100;
    const fill = h('span', {});
    fill.style.width = `${pct}%`; // CSSOM, which the page's policy allows (style attributes it does not)
    return h('span', {}, h('div', { class: `bar${remaining < 0.25 ? ' low' : ''}` }, fill), `${(remaining * 100).toFixed(1)}%`);
  }

  async function budgetsView() {
    const { body } = await api('/v1/budget');
    const rows = body.slos.map((b) =>
      h(
        'tr',
        {},
        h('td', {}, b.slo),
        h('td', {}, budgetBar(b.remaining)),
        h('td', {}, h('strong', {}, b.tier)),
        h('td', {}, (b.auto || []).join(', ')),
        h('td', {}, (b.approve || []).join(', ')),
        h('td', { class: 'muted wrap' }, b.reason || ''),
      ),
    );
    return h(
      'section',
      {},
      h('h1', {}, 'Error budgets'),
      h('p', { class: 'muted' }, 'The tier an SLO is in decides which risks run on their own and which wait for approval.'),
      table(['SLO', 'remaining', 'tier', 'runs on its own', 'needs approval', 'note'], rows, 'No SLOs configured.'),
    );
  }

  // ---- report -------------------------------------------------------------

  // The report, or null when this server has none (an older pitcrew).
  async function optionalReport() {
    try {
      return (await api('/v1/report')).body;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
  }

  const COLORS = {
    succeeded: '#1b7f3b', failed: '#b42318', unknown: '#7a1f16', cancelled: '#8a94a3', blocked: '#5b6470',
    pending_approval: '#a15c00', queued: '#2553a3', running: '#4a7bd1',
  };

  // A horizontal bar chart, drawn as inline SVG.
  function barChart(title, pairs, color) {
    const rows = pairs.filter(([, v]) => v > 0);
    const width = 420;
    const bar = 18;
    const left = 150;
    const height = Math.max(1, rows.length) * (bar + 6) + 8;
    const max = Math.max(1, ...rows.map(([, v]) => v));
    const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title });
    if (rows.length === 0) chart.append(svg('text', { x: 4, y: 16 }, 'none'));
    rows.forEach(([label, value], i) => {
      const y = 4 + i * (bar + 6);
      const w = Math.max(2, ((width - left - 50) * value) / max);
      chart.append(
        svg('text', { x: left - 6, y: y + 13, 'text-anchor': 'end' }, label.length > 24 ? `${label.slice(0, 23)}…` : label),
        svg('rect', { x: left, y, width: w, height: bar, rx: 2, fill: typeof color === 'function' ? color(label) : color }),
        svg('text', { x: left + w + 4, y: y + 13 }, String(Math.round(value * 10) / 10)),
      );
    });
    return h('div', { class: 'card chart' }, h('h2', {}, title), chart);
  }

  async function reportView() {
    const r = await optionalReport();
    if (!r) return h('section', {}, h('h1', {}, 'Report'), h('p', { class: 'muted' }, 'This server has no report endpoint.'));
    const card = (label, value, id) => h('div', { class: 'card', id }, h('div', { class: 'muted' }, label), h('div', { class: 'big' }, value));
    const secs = (s) => (s === null || s === undefined ? '–' : s < 120 ? `${Math.round(s)}s` : `${Math.round(s / 60)}m`);
    const total = (runs) => Object.values(runs).reduce((a, b) => a + b, 0);
    const runbookRows = r.runbooks.map((rb) => {
      const eff = rb.effectiveness || {};
      return h(
        'tr',
        { 'data-runbook': rb.name },
        h('td', {}, rb.name),
        h('td', {}, String(total(rb.runs))),
        h('td', {}, String(rb.runs.succeeded)),
        h('td', {}, String(rb.runs.failed + rb.runs.unknown)),
        h('td', {}, String(rb.runs.blocked)),
        h('td', {}, String(Math.round(rb.toil_minutes_saved))),
        h('td', {}, `${secs(rb.time_to_fix_p50_s)} / ${secs(rb.time_to_fix_p90_s)}`),
        h(
          'td',
          {},
          eff.ratio === null || eff.ratio === undefined ? h('span', { class: 'muted' }, `– (${eff.judged || 0} judged)`) : `${Math.round(eff.ratio * 100)}% of ${eff.judged}`,
          eff.flagged ? [' ', h('span', { class: 'flag' }, 'flagged')] : null,
        ),
      );
    });
    return h(
      'section',
      {},
      h('h1', {}, 'Report'),
      h('p', { class: 'muted' }, `From ${when(r.since)} to ${when(r.until)}.`),
      h(
        'div',
        { class: 'cards' },
        card('alerts received', String(r.alerts_received), 'report-alerts'),
        card('runs', String(total(r.runs)), 'report-runs'),
        card('toil saved', `${Math.round(r.toil_minutes_saved)} min`, 'report-toil'),
        card('escalations', String(r.escalations), 'report-escalations'),
        card('approvals granted / asked', `${r.approvals.granted} / ${r.approvals.requested}`, 'report-approvals'),
        card('approval wait p50 / p90', `${secs(r.approvals.wait_p50_s)} / ${secs(r.approvals.wait_p90_s)}`, 'report-wait'),
      ),
      h(
        'div',
        { class: 'charts' },
        barChart('Runs by outcome', Object.entries(r.runs), (k) => COLORS[k] || '#2553a3'),
        barChart('Blocks by guardrail', Object.entries(r.blocked_by), '#5b6470'),
        barChart('Toil saved per runbook (minutes)', r.runbooks.map((rb) => [rb.name, rb.toil_minutes_saved]), '#1b7f3b'),
      ),
      h('h2', {}, 'Runbooks'),
      table(['runbook', 'runs', 'succeeded', 'failed', 'blocked', 'toil saved (min)', 'time to fix p50 / p90', 'effectiveness'], runbookRows, 'No runs in this period.'),
      h('h2', {}, 'Recurring offenders'),
      h(
        'div',
        { class: 'charts' },
        table(
          ['target', 'runbook', 'fixes'],
          r.offenders.targets.map((o) => h('tr', {}, h('td', {}, o.target), h('td', {}, o.runbook), h('td', {}, String(o.fixes)))),
          'No target was fixed twice.',
        ),
        table(['alertname', 'fixes'], r.offenders.alertnames.map((o) => h('tr', {}, h('td', {}, o.alertname), h('td', {}, String(o.fixes)))), 'No alert was fixed twice.'),
      ),
      h('h2', {}, 'Error budgets'),
      table(
        ['SLO', 'remaining', 'tier'],
        r.budgets.map((b) => h('tr', {}, h('td', {}, b.slo), h('td', {}, budgetBar(b.remaining)), h('td', {}, b.tier))),
        'No SLOs configured.',
      ),
    );
  }

  // ---- routing ------------------------------------------------------------

  function route() {
    const path = location.hash.replace(/^#/, '') || '/';
    const m = path.match(/^\/executions\/([^/]+)$/);
    if (m) return render('executions', (v) => executionView(v, decodeURIComponent(m[1])));
    switch (path) {
      case '/approvals':
        return render('approvals', approvalsView);
      case '/runbooks':
        return render('runbooks', runbooksView);
      case '/budgets':
        return render('budgets', budgetsView);
      case '/report':
        return render('report', reportView);
      default:
        return render('executions', executionsView);
    }
  }

  window.addEventListener('hashchange', route);
  showToken();
  route();
  refreshStatus();
  setInterval(refreshAudit, 5 * 60 * 1000);
  stream();
})();
