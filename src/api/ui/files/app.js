// The flotilla dashboard: one script, no build step, no libraries.
//
// Layout: helpers (DOM, API, live stream, countdowns) -> session (who is logged in and
// what they may do) -> one render function per page -> the router. Every page reads the
// same JSON APIs any client uses (/v2/keys, /fleet/v1, /flotilla/v1) and stays live
// through one streamed watch of the store (wait=true&stream=true); what the store does
// not announce (members' Raft state, TTL refreshes, journals) is re-read on a timer.
//
// Values from the cluster reach the page only as text nodes: nothing here parses markup.
'use strict';

const ROWS_PER_PAGE = 100;
const REFRESH_COALESCE_MS = 150;

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'value') e.value = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  append(e, kids);
  return e;
}

function append(e, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    e.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function replace(e, ...kids) {
  e.replaceChildren();
  return append(e, kids);
}

const $main = () => document.getElementById('main');

function banner(text) {
  const b = document.getElementById('banner');
  b.hidden = !text;
  b.textContent = text || '';
}

function button(label, onclick, cls) {
  return h('button', { type: 'button', class: cls, onclick, 'data-action': label.toLowerCase() }, label);
}

// A row-count-bounded view of a long list, with a pager.
function paged(rows, page, onPage, render) {
  const pages = Math.max(1, Math.ceil(rows.length / ROWS_PER_PAGE));
  const p = Math.min(page, pages - 1);
  const shown = rows.slice(p * ROWS_PER_PAGE, (p + 1) * ROWS_PER_PAGE);
  const pager = h('div', { class: 'pager' },
    button('Previous', () => onPage(p - 1)),
    h('span', { class: 'muted' }, `page ${p + 1} of ${pages} · ${rows.length} in all`),
    button('Next', () => onPage(p + 1)));
  pager.querySelectorAll('button')[0].disabled = p === 0;
  pager.querySelectorAll('button')[1].disabled = p >= pages - 1;
  return [pages > 1 ? pager : null, render(shown)];
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message, data) {
    super(message);
    this.status = status;
    this.data = data;
  }
}

function authHeader() {
  const a = sessionStorage.getItem('flotilla.auth');
  return a ? { Authorization: 'Basic ' + a } : {};
}

async function api(method, path, opts = {}) {
  const headers = Object.assign({}, authHeader());
  let body;
  if (opts.form) {
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(opts.form).toString();
  } else if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  }
  const r = await fetch(path, { method, headers, body, cache: 'no-store' });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    let msg = text || r.statusText;
    if (data && data.error && data.error.message) msg = data.error.message;
    else if (data && data.message) msg = data.message + (data.cause ? ` (${data.cause})` : '');
    throw new ApiError(r.status, msg, data);
  }
  return { data, index: Number(r.headers.get('X-Etcd-Index') || 0) };
}

const keyUrl = (key) => '/v2/keys' + key.split('/').map(encodeURIComponent).join('/');
const seg = encodeURIComponent;

// Every page of a fleet list.
async function fleetAll(what) {
  const out = [];
  let token = '';
  for (let i = 0; i < 1000; i++) {
    const q = token ? `?nextPageToken=${seg(token)}` : '';
    const { data } = await api('GET', `/fleet/v1/${what}${q}`);
    out.push(...((data && data[what === 'state' ? 'states' : what]) || []));
    token = data && data.nextPageToken;
    if (!token) break;
  }
  return out;
}

// ---------------------------------------------------------------- live updates

// One streamed watch of `prefix` (recursive) from `index`; `onEvent` runs per event.
// On an error or a cleared index the page is re-read, which starts a new stream.
class Live {
  constructor(prefix, onEvent, onLost) {
    this.prefix = prefix;
    this.onEvent = onEvent;
    this.onLost = onLost;
    this.ctrl = null;
  }

  start(index) {
    this.stop();
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    const url = `${keyUrl(this.prefix)}?wait=true&recursive=true&stream=true&waitIndex=${index + 1}`;
    this.pump(url, ctrl).catch((e) => {
      if (ctrl.signal.aborted) return;
      document.body.dataset.liveLost = String(e.message || e);
      setTimeout(() => { if (!ctrl.signal.aborted) this.onLost(); }, 1000);
    });
  }

  async pump(url, ctrl) {
    const r = await fetch(url, { headers: authHeader(), signal: ctrl.signal, cache: 'no-store' });
    if (!r.ok) throw new Error(`watch: ${r.status}`);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error('watch ended');
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const ev = JSON.parse(line);
        if (ev.errorCode) throw new Error(ev.message);
        this.onEvent(ev);
      }
    }
  }

  stop() {
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
  }
}

// What a page holds while it is shown; dropped when the route changes.
const view = { live: [], timers: [], pending: null, state: {} };

function leaveView() {
  for (const l of view.live) l.stop();
  for (const t of view.timers) clearInterval(t);
  clearTimeout(view.pending);
  view.live = []; view.timers = []; view.pending = null; view.state = {};
}

// Many events in a burst make one re-read.
function soon(fn) {
  if (view.pending) return;
  view.pending = setTimeout(() => { view.pending = null; fn(); }, REFRESH_COALESCE_MS);
}

function every(ms, fn) {
  view.timers.push(setInterval(fn, ms));
}

// The store's index now, for a stream to start after.
async function storeIndex(prefix) {
  try {
    return (await api('GET', keyUrl(prefix))).index;
  } catch (e) {
    if (e.data && e.data.index) return e.data.index;
    throw e;
  }
}

// A page's stream: re-read on every event; when the stream is lost, re-read the page
// and start a new stream from the index that read saw.
function liveOn(prefix, index, reread, seen) {
  const live = new Live(prefix, (ev) => { if (seen) seen(ev); soon(reread); }, async () => {
    try {
      const at = await storeIndex(prefix);
      if (seen) seen(null);
      await reread();
      live.start(at);
    } catch (_) {
      setTimeout(() => live.onLost(), 1000);
    }
  });
  view.live.push(live);
  live.start(index);
  return live;
}

// TTLs count down between reads: elements carry the wall time they expire at.
function ttlCell(ttl) {
  if (ttl === undefined || ttl === null) return h('td', { class: 'muted' }, '—');
  const at = Date.now() + ttl * 1000;
  return h('td', { class: 'ttl', 'data-expires': at }, `${ttl} s`);
}

setInterval(() => {
  for (const e of document.querySelectorAll('[data-expires]')) {
    const left = Math.max(0, Math.ceil((Number(e.dataset.expires) - Date.now()) / 1000));
    e.textContent = `${left} s`;
  }
  for (const e of document.querySelectorAll('[data-since]')) {
    const s = Math.max(0, (Date.now() - Number(e.dataset.since)) / 1000);
    e.textContent = `${s.toFixed(0)} s ago`;
  }
}, 1000);

// ---------------------------------------------------------------- session

const session = { me: null };

async function whoami(extra) {
  const q = new URLSearchParams(extra || {}).toString();
  return (await api('GET', '/flotilla/v1/whoami' + (q ? '?' + q : ''))).data;
}

async function loadSession() {
  try {
    session.me = await whoami();
  } catch (e) {
    if (e.status === 401) {
      sessionStorage.removeItem('flotilla.auth');
      session.me = await whoami();
    } else throw e;
  }
  renderWho();
}

function renderWho() {
  const who = document.getElementById('who');
  const me = session.me;
  if (!me || !me.authEnabled) return replace(who, h('span', { class: 'muted' }, 'auth off'));
  if (me.user) {
    return replace(who, h('span', { id: 'user' }, me.user),
      button('Log out', () => { sessionStorage.removeItem('flotilla.auth'); loadSession().then(route); }));
  }
  replace(who, h('span', { class: 'muted' }, 'guest'), h('a', { href: '#/login', id: 'login-link' }, 'Log in'));
}

function canSchedule() { return session.me && session.me.schedule.write; }

// An error as a page shows it: 401 says to log in.
function failure(e) {
  if (e instanceof ApiError && e.status === 401) {
    return h('div', { class: 'panel error', id: 'denied' },
      `Not allowed: ${e.message}. `,
      session.me && session.me.user ? 'Your roles do not reach this page.' : h('a', { href: '#/login' }, 'Log in'));
  }
  return h('div', { class: 'panel error' }, String(e.message || e));
}

// ---------------------------------------------------------------- pages: overview

const CHART_W = 460, CHART_H = 120;
const STATE_COLOURS = { active: '#1f7a3a', activating: '#3c8dde', failed: '#b3261e', unplaced: '#9a6700', inactive: '#8796a5', starting: '#7fb8ef', unreported: '#c9a227' };

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  for (const k of kids) e.appendChild(typeof k === 'string' ? document.createTextNode(k) : k);
  return e;
}

// Lines over time: `series` maps a name to [at_ms, value] points.
function chart(title, series, colours) {
  const all = Object.values(series).flat();
  const g = svg('svg', { class: 'chart', width: CHART_W, height: CHART_H + 24, viewBox: `0 0 ${CHART_W} ${CHART_H + 24}`, role: 'img', 'aria-label': title });
  g.appendChild(svg('text', { x: 8, y: 16, 'font-size': 12, fill: '#5d6b7a' }, title));
  if (all.length < 2) {
    g.appendChild(svg('text', { x: 8, y: 60, 'font-size': 12, fill: '#8796a5' }, 'collecting samples (one every 5 s)…'));
    return g;
  }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const vmax = Math.max(1, ...all.map((p) => p[1]));
  const x = (t) => 8 + ((t - t0) / Math.max(1, t1 - t0)) * (CHART_W - 16);
  const y = (v) => 22 + (1 - v / vmax) * (CHART_H - 8);
  g.appendChild(svg('text', { x: CHART_W - 8, y: 16, 'font-size': 12, fill: '#5d6b7a', 'text-anchor': 'end' }, `max ${vmax.toFixed(vmax < 10 ? 1 : 0)}`));
  for (const [name, pts] of Object.entries(series)) {
    const d = pts.map((p, i) => `${i ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
    g.appendChild(svg('path', { d, fill: 'none', stroke: colours[name] || '#1d4e89', 'stroke-width': 2 }));
  }
  return g;
}

async function overviewPage(m) {
  const draw = async () => {
    const { data } = await api('GET', '/flotilla/v1/overview');
    const problems = data.problems.map((p) =>
      h('li', { class: 'bad', 'data-kind': p.kind }, `${p.kind}: `, h('b', {}, p.subject), ` ${p.text}`));
    const units = Object.entries(data.units);
    const states = new Set(data.history.flatMap((s) => Object.keys(s.units)));
    const series = {};
    for (const st of states) series[st] = data.history.map((s) => [s.at_ms, s.units[st] || 0]);
    replace(m,
      h('h1', {}, 'Overview'),
      h('section', { id: 'problems' }, problems.length
        ? [h('h2', { class: 'bad' }, `Problems (${data.problemsTotal})`), h('ul', { class: 'problems' }, problems)]
        : h('p', { class: 'ok' }, 'No problems.')),
      h('div', { class: 'cards' },
        h('div', { class: 'card' }, h('div', { class: 'n', id: 'machine-count' }, data.machines), 'machines'),
        units.map(([st, n]) => h('div', { class: 'card', 'data-state': st }, h('div', { class: 'n' }, n), `units ${st}`))),
      h('h2', {}, 'Members'),
      h('table', { id: 'members' },
        h('tr', {}, ['name', 'id', 'state', 'term', 'applied', 'commit', 'client URLs'].map((c) => h('th', {}, c))),
        data.members.map((mb) => h('tr', { 'data-member': mb.name },
          h('td', {}, mb.name || '(unstarted)'), h('td', { class: 'mono' }, mb.id),
          h('td', { class: !mb.reachable ? 'bad' : mb.isLeader ? 'ok' : '' },
            !mb.reachable ? 'unreachable' : mb.isLeader ? 'leader' : 'follower'),
          h('td', {}, mb.term ?? '—'), h('td', {}, mb.applied ?? '—'), h('td', {}, mb.commit ?? '—'),
          h('td', { class: 'mono' }, (mb.clientURLs || []).join(', '))))),
      h('h2', {}, 'The last minutes'),
      h('div', { class: 'cards' },
        chart('writes/s (entries applied)', { writes: data.history.map((s) => [s.at_ms, s.writes_per_s]) }, {}),
        h('div', {}, chart('units by state', series, STATE_COLOURS),
          h('div', { class: 'legend' }, [...states].map((s) => h('span', { class: 'muted' },
            svg('svg', { width: 10, height: 10 }, svg('rect', { width: 10, height: 10, fill: STATE_COLOURS[s] || '#1d4e89' })),
            ` ${s}`))))));
  };
  await draw();
  // Members' Raft state is not in the store: one read of the overview per second.
  every(1000, () => draw().catch((e) => banner(e.message)));
}

// ---------------------------------------------------------------- pages: machines

async function readDir(key, recursive) {
  try {
    const { data, index } = await api('GET', keyUrl(key) + (recursive ? '?recursive=true&sorted=true' : '?sorted=true'));
    return { nodes: data.node.nodes || [], index };
  } catch (e) {
    if (e.status === 404) return { nodes: [], index: (e.data && e.data.index) || 0 };
    throw e;
  }
}

const base = (k) => k.slice(k.lastIndexOf('/') + 1);
const parse = (v) => { try { return JSON.parse(v); } catch (_) { return null; } };

async function machinesData() {
  const [machines, states, leases] = await Promise.all([
    readDir('/_flotilla/machines', false),
    fleetAll('state'),
    readDir(`${session.me.network.prefix}/subnets`, false).catch(() => ({ nodes: [] })),
  ]);
  const byIp = {};
  for (const l of leases.nodes) {
    const v = parse(l.value);
    if (v && v.PublicIP) byIp[v.PublicIP] = { subnet: base(l.key).replace('-', '/'), backend: v.BackendType };
  }
  const unitsOn = {};
  for (const s of states) (unitsOn[s.machineID] = unitsOn[s.machineID] || []).push(s);
  const rows = machines.nodes.map((n) => {
    const rec = parse(n.value) || {};
    return { id: base(n.key), ttl: n.ttl, rec, lease: byIp[rec.primaryIP], units: unitsOn[base(n.key)] || [] };
  });
  return { rows, index: machines.index };
}

function renewalCell(r) {
  if (!r.rec.agentTTL || r.ttl === undefined) return h('td', { class: 'muted' }, '—');
  const since = Date.now() - (r.rec.agentTTL - r.ttl) * 1000;
  return h('td', { 'data-since': since }, `${r.rec.agentTTL - r.ttl} s ago`);
}

async function machinesPage(m) {
  const draw = async () => {
    const { rows, index } = await machinesData();
    const table = h('table', { id: 'machines' },
      h('tr', {}, ['machine', 'public IP', 'metadata', 'subnet lease', 'units', 'last renewal', 'TTL left'].map((c) => h('th', {}, c))),
      rows.map((r) => h('tr', { 'data-machine': r.id },
        h('td', { class: 'mono' }, h('a', { href: `#/machines/${seg(r.id)}` }, r.id)),
        h('td', {}, r.rec.primaryIP || ''),
        h('td', {}, Object.entries(r.rec.metadata || {}).map(([k, v]) => `${k}=${v}`).join(', ')),
        h('td', {}, r.lease ? `${r.lease.subnet} (${r.lease.backend})` : '—'),
        h('td', {}, h('a', { href: `#/machines/${seg(r.id)}` }, String(r.units.length))),
        renewalCell(r), ttlCell(r.ttl))));
    replace(m, h('h1', {}, `Machines (${rows.length})`), table);
    return index;
  };
  const index = await draw();
  liveOn('/_flotilla', index, () => draw().catch((e) => banner(e.message)));
  // A renewal refreshes a TTL without an event (as in etcd): re-read now and then.
  every(3000, () => draw().catch(() => {}));
}

async function machinePage(m, id) {
  const draw = async () => {
    const { rows, index } = await machinesData();
    const r = rows.find((x) => x.id === id);
    if (!r) {
      replace(m, h('h1', {}, `Machine ${id}`), h('p', { class: 'bad' }, 'This machine is not registered (its key expired or it never ran).'));
      return index;
    }
    replace(m, h('h1', {}, `Machine ${id}`),
      h('p', {}, `public IP ${r.rec.primaryIP || '—'} · subnet ${r.lease ? r.lease.subnet : '—'} · metadata ${Object.entries(r.rec.metadata || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'}`),
      h('h2', {}, `Units on it (${r.units.length})`),
      stateTable(r.units));
    return index;
  };
  const index = await draw();
  liveOn('/_flotilla', index, () => draw().catch((e) => banner(e.message)));
}

function stateTable(states) {
  return h('table', { class: 'states' },
    h('tr', {}, ['unit', 'load', 'active', 'sub'].map((c) => h('th', {}, c))),
    states.map((s) => h('tr', { 'data-unit': s.name },
      h('td', {}, h('a', { href: `#/units/${seg(s.name)}` }, s.name)),
      h('td', {}, s.systemdLoadState), h('td', {}, s.systemdActiveState), h('td', {}, s.systemdSubState))));
}

// ---------------------------------------------------------------- pages: units

// A systemd unit file as fleet's options: [{section, name, value}].
function unitOptions(text) {
  const options = [];
  let section = null;
  const lines = text.replace(/\r/g, '').split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i].trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    while (line.endsWith('\\') && i + 1 < lines.length) line = line.slice(0, -1) + ' ' + lines[++i].trim();
    const sec = /^\[([^\]]+)\]$/.exec(line);
    if (sec) { section = sec[1]; continue; }
    const eq = line.indexOf('=');
    if (eq < 0) throw new Error(`line ${i + 1}: expected Name=Value or [Section], got ${JSON.stringify(line)}`);
    if (!section) throw new Error(`line ${i + 1}: ${JSON.stringify(line)} is outside any [Section]`);
    options.push({ section, name: line.slice(0, eq).trim(), value: line.slice(eq + 1).trim() });
  }
  if (!options.length) throw new Error('the unit file has no options');
  return options;
}

function unitFileText(options) {
  const out = [];
  let section = null;
  for (const o of options || []) {
    if (o.section !== section) { if (section) out.push(''); out.push(`[${o.section}]`); section = o.section; }
    out.push(`${o.name}=${o.value}`);
  }
  return out.join('\n');
}

const isInstance = (name) => /^[^@]+@[^.]+\.[a-z]+$/.test(name);
const templateOf = (name) => name.replace(/@[^.]+\./, '@.');

async function setDesired(name, desiredState) {
  await api('PUT', `/fleet/v1/units/${seg(name)}`, { json: { desiredState } });
}

// fleet has no restart: stop, wait until the machine says it stopped, start.
async function restart(name) {
  await setDesired(name, 'loaded');
  for (let i = 0; i < 100; i++) {
    const { data } = await api('GET', `/fleet/v1/units/${seg(name)}`);
    if (data.currentState !== 'launched') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await setDesired(name, 'launched');
}

async function submit(name, text, desiredState) {
  let options;
  if (text.trim()) options = unitOptions(text);
  else if (isInstance(name)) {
    const { data } = await api('GET', `/fleet/v1/units/${seg(templateOf(name))}`);
    options = data.options;
  } else throw new Error('paste or upload a unit file (only an instance of a submitted template may have none)');
  const template = /@\./.test(name);
  await api('PUT', `/fleet/v1/units/${seg(name)}`, { json: { name, desiredState: template ? 'inactive' : desiredState, options } });
}

function unitActions(name, after) {
  if (!canSchedule()) return null;
  const act = (f) => async () => {
    try { banner(''); await f(); after(); } catch (e) { banner(`${name}: ${e.message}`); }
  };
  return h('span', { class: 'actions' },
    button('Start', act(() => setDesired(name, 'launched'))),
    button('Stop', act(() => setDesired(name, 'loaded'))),
    button('Restart', act(() => restart(name))),
    button('Destroy', act(async () => {
      if (confirm(`Destroy ${name}?`)) await api('DELETE', `/fleet/v1/units/${seg(name)}`);
    }), 'danger'));
}

function submitForm(after) {
  const name = h('input', { name: 'name', placeholder: 'web@1.service', size: 28, required: true });
  const file = h('input', { type: 'file', name: 'file', accept: '.service,.socket,.timer,text/plain' });
  const text = h('textarea', { name: 'unit', placeholder: '[Service]\nExecStart=/usr/bin/docker run --rm --name web busybox httpd -f' });
  const desired = h('select', { name: 'desired' }, ['launched', 'loaded', 'inactive'].map((s) => h('option', { value: s }, s)));
  const msg = h('span', { class: 'msg' });
  file.addEventListener('change', async () => {
    const f = file.files[0];
    if (!f) return;
    text.value = await f.text();
    if (!name.value) name.value = f.name;
  });
  return h('form', {
    class: 'panel', id: 'submit-unit',
    onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        await submit(name.value.trim(), text.value, desired.value);
        replace(msg, h('span', { class: 'notice' }, `submitted ${name.value.trim()}`));
        after();
      } catch (e) { replace(msg, h('span', { class: 'error' }, e.message)); }
    },
  }, h('b', {}, 'Submit a unit '), h('label', {}, 'name', name), h('label', {}, 'file', file),
  h('label', {}, 'then', desired), h('button', { type: 'submit', class: 'primary' }, 'Submit'), msg, text);
}

// Units' states in one read of their keys (fleet's state API pages 100 at a time), as
// fleet's API shows them: only from machines that are alive.
async function liveStates() {
  const [states, machines] = await Promise.all([
    readDir('/_flotilla/states', true), readDir('/_flotilla/machines', false)]);
  const alive = new Set(machines.nodes.map((n) => base(n.key)));
  const out = {};
  for (const n of flatten(states.nodes, []).filter((x) => !x.dir)) {
    const s = parse(n.value);
    if (s && alive.has(s.machineID)) out[s.name] = s;
  }
  return out;
}

// The unit list is read again only when an event touched units or the schedule; a
// state reported (the common event) re-reads the states alone.
async function unitsData() {
  if (!view.state.units || view.state.unitsStale) {
    view.state.unitsStale = false;
    view.state.units = await fleetAll('units');
  }
  const st = await liveStates();
  // fleet's currentState, from the state just read: launched while active.
  const current = (u, s) => (!u.machineID ? u.currentState
    : !s || s.machineID !== u.machineID ? 'inactive'
      : ['active', 'activating', 'reloading'].includes(s.systemdActiveState) ? 'launched' : 'loaded');
  return view.state.units.map((u) => ({ ...u, state: st[u.name], currentState: current(u, st[u.name]) }));
}

async function unitsPage(m) {
  view.state.page = 0;
  view.state.filter = '';
  const list = h('div', { id: 'unit-list' });
  const filter = h('input', { type: 'search', placeholder: 'filter by name', id: 'unit-filter' });
  const drawList = async () => {
    const rows = (await unitsData()).filter((u) => u.name.includes(view.state.filter));
    replace(list, paged(rows, view.state.page, (p) => { view.state.page = p; drawList(); }, (shown) =>
      h('table', { id: 'units' },
        h('tr', {}, ['unit', 'desired', 'current', 'machine', 'active', 'sub', ''].map((c) => h('th', {}, c))),
        shown.map((u) => h('tr', { 'data-unit': u.name },
          h('td', {}, h('a', { href: `#/units/${seg(u.name)}` }, u.name)),
          h('td', {}, u.desiredState), h('td', { class: 'current' }, u.currentState || ''),
          h('td', { class: 'mono' }, u.machineID ? h('a', { href: `#/machines/${seg(u.machineID)}` }, u.machineID) : ''),
          h('td', { class: 'active' }, u.state ? u.state.systemdActiveState : ''),
          h('td', { class: 'sub' }, u.state ? u.state.systemdSubState : ''),
          h('td', {}, unitActions(u.name, drawList)))))));
  };
  for (const ev of ['input', 'change']) {
    filter.addEventListener(ev, () => { view.state.filter = filter.value; view.state.page = 0; drawList(); });
  }
  replace(m, h('h1', {}, 'Units'), canSchedule() ? submitForm(drawList) : null,
    h('div', { class: 'toolbar' }, filter), list);
  const index = await storeIndex('/_flotilla');
  await drawList();
  // Units and where they are placed change the list; states, presence and the engine's
  // lease do not (the states are read on every refresh anyway).
  const seen = (ev) => {
    const k = ev ? ev.node.key : '';
    if (!ev || k.startsWith('/_flotilla/units/') || k.startsWith('/_flotilla/schedule/')) view.state.unitsStale = true;
  };
  liveOn('/_flotilla', index, () => drawList().catch((e) => banner(e.message)), seen);
}

async function unitPage(m, name) {
  const head = h('div', {});
  const journal = h('pre', { id: 'journal' }, '');
  const draw = async () => {
    let unit;
    try { unit = (await api('GET', `/fleet/v1/units/${seg(name)}`)).data; } catch (e) {
      if (e.status !== 404) throw e;
      replace(head, h('p', { class: 'bad', id: 'unit-gone' }, `${name} does not exist (destroyed, or never submitted).`));
      return;
    }
    const states = (await fleetAll('state')).filter((s) => s.name === name);
    let where;
    try {
      const p = (await api('GET', `/flotilla/v1/placement/${seg(name)}`)).data;
      where = p.machineID ? h('span', {}, 'placed on ', h('a', { href: `#/machines/${seg(p.machineID)}` }, p.machineID))
        : p.pending ? h('span', { class: 'warn' }, 'waiting for the scheduler\'s next pass')
          : h('span', { class: 'bad', id: 'why-not-placed' }, `not placed: ${p.reason}`);
    } catch (e) { where = h('span', { class: 'muted' }, e.message); }
    replace(head,
      h('div', { class: 'toolbar' }, h('span', {}, `desired `, h('b', { id: 'desired' }, unit.desiredState),
        ` · current `, h('b', { id: 'current' }, unit.currentState || '—'), ' · ', where), unitActions(name, draw)),
      states.length ? stateTable(states) : null,
      h('h2', {}, 'Unit file'), h('pre', { id: 'unit-file' }, unitFileText(unit.options)));
  };
  const tail = async () => {
    try {
      const { data } = await api('GET', `/flotilla/v1/journal/${seg(name)}?n=200`);
      const text = data.lines.join('\n');
      if (journal.textContent !== text) journal.textContent = text;
    } catch (e) {
      journal.textContent = `(${e.message})`;
    }
  };
  replace(m, h('h1', {}, name), head, h('h2', {}, 'Journal'), journal);
  const index = await storeIndex('/_flotilla');
  await draw();
  await tail();
  liveOn('/_flotilla', index, () => draw().catch((e) => banner(e.message)));
  // A journal is on its machine, not in the store: read it again every second.
  every(1000, tail);
}

// ---------------------------------------------------------------- pages: keys

const parentOf = (k) => k.slice(0, Math.max(1, k.lastIndexOf('/'))) || '/';
const join = (dir, name) => (dir === '/' ? '' : dir) + '/' + name;

function crumbs(dir) {
  const parts = dir.split('/').filter(Boolean);
  const out = [h('a', { href: '#/keys/' }, '/')];
  let acc = '';
  for (const p of parts) {
    acc += '/' + p;
    out.push(h('a', { href: '#/keys' + acc }, p), '/');
  }
  return h('span', { class: 'crumbs mono', id: 'crumbs' }, out);
}

// Nested JSON of a directory: {name: value | {…}}.
function exportTree(node) {
  const out = {};
  for (const n of node.nodes || []) out[base(n.key)] = n.dir ? exportTree(n) : n.value;
  return out;
}

function flatten(nodes, out) {
  for (const n of nodes || []) {
    out.push(n);
    if (n.dir) flatten(n.nodes, out);
  }
  return out;
}

function keyEditor(n, perm, after) {
  const value = h('textarea', { name: 'value' });
  value.value = n.value;
  const ttl = h('input', { name: 'ttl', size: 6, placeholder: 'none', value: n.ttl ? String(n.ttl) : '' });
  const msg = h('span', { class: 'msg' });
  return h('form', {
    class: 'panel editor', 'data-key': n.key,
    onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const form = { value: value.value, prevIndex: String(n.modifiedIndex) };
        if (ttl.value.trim()) form.ttl = ttl.value.trim();
        await api('PUT', keyUrl(n.key), { form });
        after();
      } catch (e) {
        const text = e.data && e.data.errorCode === 101
          ? `not saved: ${n.key} changed since you opened it (it was at index ${n.modifiedIndex}; ${e.data.cause || ''}). Reload it to see the new value.`
          : `not saved: ${e.message}`;
        replace(msg, h('span', { class: 'error', id: 'edit-error' }, text));
      }
    },
  }, h('b', {}, `Edit ${n.key}`), ' ', h('label', {}, 'TTL (s) ', ttl), ' ',
  h('button', { type: 'submit', class: 'primary' }, 'Save'), ' ', msg, value);
}

function newKeyForm(dir, after) {
  const name = h('input', { name: 'name', placeholder: 'name', size: 20, required: true });
  const value = h('input', { name: 'value', placeholder: 'value', size: 30 });
  const ttl = h('input', { name: 'ttl', placeholder: 'TTL s', size: 6 });
  const isDir = h('input', { type: 'checkbox', name: 'dir' });
  const msg = h('span', { class: 'msg' });
  return h('form', {
    class: 'panel', id: 'new-key',
    onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const form = isDir.checked ? { dir: 'true' } : { value: value.value };
        if (ttl.value.trim()) form.ttl = ttl.value.trim();
        form.prevExist = 'false';
        await api('PUT', keyUrl(join(dir, name.value.trim())), { form });
        name.value = ''; value.value = ''; ttl.value = '';
        replace(msg);
        after();
      } catch (e) { replace(msg, h('span', { class: 'error' }, e.message)); }
    },
  }, h('b', {}, 'New '), name, ' ', value, ' ', ttl, ' ', h('label', {}, isDir, 'directory'), ' ',
  h('button', { type: 'submit', class: 'primary' }, 'Create'), ' ', msg);
}

async function keysPage(m, dir) {
  dir = ('/' + dir).replace(/\/+/g, '/').replace(/(.)\/$/, '$1');
  view.state.page = 0;
  const perm = (await whoami({ key: dir })).key;
  const search = h('input', { type: 'search', placeholder: 'search key names below here', id: 'key-search', size: 30 });
  const internal = h('input', { type: 'checkbox', id: 'show-internal' });
  const list = h('div', { id: 'key-list' });
  const editing = h('div', {});
  const msg = h('span', { class: 'msg' });
  let lastIndex = 0;

  const row = (n) => h('tr', { 'data-key': n.key },
    h('td', { class: 'mono' }, n.dir ? h('a', { href: '#/keys' + n.key }, base(n.key) + '/') : (view.state.searching ? n.key : base(n.key))),
    h('td', { class: 'value' }, n.dir ? h('span', { class: 'muted' }, 'directory') : n.value.length > 300 ? n.value.slice(0, 300) + '…' : n.value),
    ttlCell(n.ttl), h('td', { class: 'muted' }, n.modifiedIndex),
    h('td', { class: 'actions' },
      perm.write && !n.dir ? button('Edit', () => replace(editing, keyEditor(n, perm, draw))) : null,
      perm.write ? button('Delete', async () => {
        try {
          if (n.dir && !confirm(`Delete ${n.key} and everything under it?`)) return;
          const q = n.dir ? '?dir=true&recursive=true' : `?prevIndex=${n.modifiedIndex}`;
          await api('DELETE', keyUrl(n.key) + q);
          draw();
        } catch (e) { banner(`${n.key}: ${e.message}`); }
      }, 'danger') : null));

  async function draw() {
    const term = search.value.trim();
    view.state.searching = !!term;
    let nodes;
    let index;
    try {
      const r = await api('GET', keyUrl(dir) + (term ? '?recursive=true&sorted=true' : '?sorted=true'));
      index = r.index;
      if (!r.data.node.dir) {
        // A key, not a directory: show it with its editor.
        replace(list, h('table', { id: 'keys' }, row(r.data.node)));
        return index;
      }
      nodes = term ? flatten(r.data.node.nodes, []).filter((n) => base(n.key).includes(term)) : r.data.node.nodes || [];
    } catch (e) {
      if (e.status !== 404) throw e;
      replace(list, h('p', { class: 'bad' }, `${dir} does not exist`));
      return (e.data && e.data.index) || 0;
    }
    if (dir === '/' && internal.checked && !term) {
      nodes = [{ key: '/_flotilla', dir: true, modifiedIndex: '' }, ...nodes];
    }
    replace(list, paged(nodes, view.state.page, (p) => { view.state.page = p; draw(); }, (shown) =>
      h('table', { id: 'keys' },
        h('tr', {}, ['key', 'value', 'TTL', 'modified', ''].map((c) => h('th', {}, c))),
        shown.map(row))));
    return index;
  }

  const exportButton = button('Export JSON', async () => {
    try {
      const { data } = await api('GET', keyUrl(dir) + '?recursive=true&sorted=true');
      const tree = data.node.dir ? exportTree(data.node) : { [base(data.node.key)]: data.node.value };
      const blob = new Blob([JSON.stringify(tree, null, 2)], { type: 'application/json' });
      const a = h('a', { href: URL.createObjectURL(blob), download: (dir === '/' ? 'root' : base(dir)) + '.json', id: 'export-link' }, 'download');
      replace(msg, `exported ${flatten(data.node.nodes, []).filter((n) => !n.dir).length} keys: `, a);
      a.click();
    } catch (e) { replace(msg, h('span', { class: 'error' }, e.message)); }
  });
  for (const ev of ['input', 'change']) search.addEventListener(ev, () => { view.state.page = 0; soon(draw); });
  internal.addEventListener('change', () => draw());
  replace(m, h('h1', {}, 'Keys'),
    h('div', { class: 'toolbar' }, crumbs(dir), search, dir === '/' ? h('label', {}, internal, 'show /_flotilla') : null,
      exportButton, msg),
    perm.write ? newKeyForm(dir, draw) : null, editing, list);
  lastIndex = await draw();
  if (perm.readRecursive) liveOn(dir, lastIndex, () => draw().catch((e) => banner(e.message)));
}

// ---------------------------------------------------------------- pages: network

async function networkPage(m) {
  const prefix = session.me.network.prefix;
  const domain = session.me.network.dnsDomain;
  const draw = async () => {
    const [config, leases, machines, states, sky] = await Promise.all([
      api('GET', keyUrl(`${prefix}/config`)).then((r) => r.data.node.value).catch(() => null),
      readDir(`${prefix}/subnets`, false),
      machinesData(),
      readDir('/_flotilla/states', true).catch(() => ({ nodes: [] })),
      readDir('/skydns', true).catch(() => ({ nodes: [] })),
    ]);
    const owner = {};
    for (const r of machines.rows) owner[r.rec.primaryIP] = r.id;
    const names = [];
    for (const n of flatten(sky.nodes, []).filter((x) => !x.dir)) {
      const labels = n.key.split('/').slice(2).reverse();
      const v = parse(n.value) || {};
      names.push([labels.join('.'), v.host || n.value, 'SkyDNS']);
    }
    if (domain) {
      for (const u of flatten(states.nodes, []).filter((x) => !x.dir)) {
        const s = parse(u.value);
        if (!s || s.systemdActiveState !== 'active') continue;
        const unit = s.name.replace(/\.service$/, '');
        const addr = s.address || (machines.rows.find((r) => r.id === s.machineID) || { rec: {} }).rec.primaryIP;
        names.push([`${unit.split('@')[0]}.${domain}`, addr, s.name]);
        if (unit.includes('@')) names.push([`${unit}.${domain}`, addr, s.name]);
      }
      for (const r of machines.rows) names.push([`${r.id}.machine.${domain}`, r.rec.primaryIP, 'machine']);
    }
    replace(m, h('h1', {}, 'Network'),
      h('p', {}, 'Configuration at ', h('span', { class: 'mono' }, `${prefix}/config`), ': ',
        config ? h('span', { class: 'mono', id: 'net-config' }, config) : h('span', { class: 'muted' }, 'none (the network is not initialised: flotilla net init)')),
      h('h2', {}, `Subnet leases (${leases.nodes.length})`),
      h('table', { id: 'leases' },
        h('tr', {}, ['subnet', 'public IP', 'machine', 'backend', 'backend data', 'TTL left'].map((c) => h('th', {}, c))),
        leases.nodes.map((l) => {
          const v = parse(l.value) || {};
          return h('tr', { 'data-subnet': base(l.key) },
            h('td', { class: 'mono' }, base(l.key).replace('-', '/')), h('td', {}, v.PublicIP || ''),
            h('td', { class: 'mono' }, owner[v.PublicIP] || '—'), h('td', {}, v.BackendType || ''),
            h('td', { class: 'mono value' }, v.BackendData ? JSON.stringify(v.BackendData) : ''), ttlCell(l.ttl));
        })),
      h('h2', {}, 'Names DNS answers'),
      domain ? null : h('p', { class: 'muted' }, 'This node does not answer DNS (--dns-addr); SkyDNS records in the store are listed.'),
      h('table', { id: 'dns-names' },
        h('tr', {}, ['name', 'answer', 'from'].map((c) => h('th', {}, c))),
        names.map(([n, a, f]) => h('tr', {}, h('td', { class: 'mono' }, n), h('td', { class: 'mono' }, a || ''), h('td', {}, f)))));
    return leases.index;
  };
  const index = await draw();
  liveOn('/', index, () => draw().catch((e) => banner(e.message)));
}

// ---------------------------------------------------------------- pages: login

function loginPage(m) {
  const user = h('input', { name: 'user', autocomplete: 'username', required: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password' });
  const msg = h('span', { class: 'msg' });
  replace(m, h('h1', {}, 'Log in'), h('form', {
    class: 'panel', id: 'login',
    onsubmit: async (ev) => {
      ev.preventDefault();
      const token = btoa(unescape(encodeURIComponent(`${user.value}:${pass.value}`)));
      sessionStorage.setItem('flotilla.auth', token);
      try {
        session.me = await whoami();
        renderWho();
        location.hash = '#/';
      } catch (e) {
        sessionStorage.removeItem('flotilla.auth');
        replace(msg, h('span', { class: 'error', id: 'login-error' }, e.message));
      }
    },
  }, h('label', {}, 'user', user), h('label', {}, 'password', pass),
  h('button', { type: 'submit', class: 'primary' }, 'Log in'), msg));
}

// ---------------------------------------------------------------- router

const ROUTES = [
  [/^\/?$/, 'overview', (m) => overviewPage(m)],
  [/^\/machines$/, 'machines', (m) => machinesPage(m)],
  [/^\/machines\/(.+)$/, 'machines', (m, id) => machinePage(m, decodeURIComponent(id))],
  [/^\/units$/, 'units', (m) => unitsPage(m)],
  [/^\/units\/(.+)$/, 'units', (m, name) => unitPage(m, decodeURIComponent(name))],
  [/^\/keys(\/.*)?$/, 'keys', (m, dir) => keysPage(m, decodeURIComponent(dir || '/'))],
  [/^\/network$/, 'network', (m) => networkPage(m)],
  [/^\/login$/, 'login', (m) => loginPage(m)],
];

let routeSeq = 0;

async function route() {
  leaveView();
  banner('');
  const seq = ++routeSeq;
  const path = location.hash.replace(/^#/, '') || '/';
  // Each visit draws into its own element: a read still in flight from the page just
  // left lands in a detached one, never over this page.
  const m = h('div', { class: 'page' });
  replace($main(), m);
  for (const [re, page, render] of ROUTES) {
    const match = re.exec(path);
    if (!match) continue;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('current', a.dataset.page === page);
    document.body.dataset.page = page;
    try {
      await render(m, ...match.slice(1));
    } catch (e) {
      if (seq === routeSeq) replace(m, failure(e));
    }
    if (seq === routeSeq) document.body.dataset.ready = path;
    return;
  }
  replace(m, h('p', { class: 'bad' }, `no page ${path}`));
}

window.addEventListener('hashchange', route);
// Close the page's stream before the browser leaves it: a stream left to the unload
// can hold one of the browser's six connections to this node for a minute.
window.addEventListener('pagehide', leaveView);
window.addEventListener('DOMContentLoaded', async () => {
  try { await loadSession(); } catch (e) { banner(e.message); }
  route();
});
