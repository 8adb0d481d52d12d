// The chat web client: plain JS, no build step. It speaks only the contract: the services'
// HTTP APIs (addresses from GET /config) and this edge node's WebSocket.
'use strict';

const STORE_KEY = 'chat.me';
const ROOM_KEY = 'chat.room'; // the room open in this browser, reopened after a reload
const SEND_TIMEOUT_MS = 10000;
// The contract's limits count characters (code points), as the server does; an input's
// maxlength counts UTF-16 units, where an emoji is two, so these are checked here instead.
const NAME_MAX = 64;
const CONTENT_MAX = 4000;
const chars = (text) => [...text].length;
const PAGE = 50;

const state = {
  config: null,
  me: null, // {id, name, avatar, token}
  rooms: new Map(), // id -> RoomState
  pending: new Map(), // messageId -> {roomId, content, createdAt, state, error, timer}
  presence: new Map(), // userId -> bool
  names: new Map(), // userId -> name
  current: null,
  ws: null,
  attempt: 0,
  reconnectTimer: null,
  renewTimer: null, // renews the token ahead of its expiry
  usersNext: null,
  roomKey: null, // {wanted, key}: the Idempotency-Key of the room being created
};

const $ = (id) => document.getElementById(id);

// --- helpers -----------------------------------------------------------------------------------

function setStatus(text, kind) {
  const el = $('status');
  el.textContent = text;
  el.dataset.state = kind || '';
}

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function nextLink(header) {
  if (!header) return null;
  const m = /<([^>]+)>\s*;\s*rel="next"/.exec(header);
  return m ? m[1] : null;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function unreachable(err) {
  if (err.name === 'TimeoutError') return new ApiError(0, 'timeout', 'The server did not answer in time; try again.');
  return new ApiError(0, 'network', 'The server cannot be reached; try again.');
}

async function api(url, { method = 'GET', body, auth = true, headers: extra = {} } = {}) {
  const headers = { ...extra };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (auth && state.me) headers.authorization = `Bearer ${state.me.token}`;
  // a service that accepts the request and never answers must not leave the page waiting
  const signal = AbortSignal.timeout((state.config && state.config.requestTimeoutMs) || 15000);
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (err) {
    throw unreachable(err);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    if (err.name === 'TimeoutError') throw unreachable(err); // the body never came either
  }
  if (!response.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(response.status, e.code || 'http_' + response.status, e.message || response.statusText);
  }
  return { data, next: nextLink(response.headers.get('link')) };
}

// A word's first character as a reader sees it: an emoji is two UTF-16 units (w[0] would be
// half of one), a flag or a family several code points.
const GRAPHEMES = typeof Intl !== 'undefined' && Intl.Segmenter ? new Intl.Segmenter() : null;

function firstCharacter(word) {
  if (GRAPHEMES) {
    for (const { segment } of GRAPHEMES.segment(word)) return segment;
  }
  return Array.from(word)[0] || '';
}

function initials(name) {
  const words = (name || '?').trim().split(/\s+/).slice(0, 2);
  return words.map(firstCharacter).join('').toUpperCase();
}

function avatarEl(name, url) {
  const span = document.createElement('span');
  span.className = 'avatar';
  span.setAttribute('aria-hidden', 'true');
  span.textContent = initials(name);
  if (url) {
    const img = document.createElement('img');
    img.alt = '';
    img.width = 32;
    img.height = 32;
    img.referrerPolicy = 'no-referrer';
    img.onload = () => { span.textContent = ''; span.appendChild(img); };
    img.src = url;
  }
  return span;
}

function nameOf(userId) {
  if (state.me && userId === state.me.id) return state.me.name;
  return state.names.get(userId) || userId;
}

function otherPeople(room) {
  const others = room.participants.filter((p) => !state.me || p.id !== state.me.id);
  return others.length ? others : room.participants;
}

function roomTitle(room) {
  return otherPeople(room).map((p) => p.name).join(', ');
}

function timeOf(iso) {
  const d = new Date(iso);
  return isNaN(d) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// --- rooms and messages ------------------------------------------------------------------------

function roomState(room) {
  let rs = state.rooms.get(room.id);
  if (!rs) {
    rs = { room, messages: new Map(), lastSeq: 0, loaded: false, olderUrl: null, loadingOlder: false, unread: 0 };
    state.rooms.set(room.id, rs);
  } else {
    rs.room = room;
  }
  for (const p of room.participants) state.names.set(p.id, p.name);
  return rs;
}

function addMessage(m) {
  let rs = state.rooms.get(m.roomId);
  if (!rs) {
    refreshRooms();
    return;
  }
  const isNew = !rs.messages.has(m.seq);
  rs.messages.set(m.seq, m);
  if (m.seq > rs.lastSeq) rs.lastSeq = m.seq;
  const p = state.pending.get(m.messageId);
  if (p && p.roomId === m.roomId) {
    clearTimeout(p.timer);
    state.pending.delete(m.messageId);
  }
  if (state.current === m.roomId) {
    renderMessages();
  } else if (isNew && (!state.me || m.senderId !== state.me.id)) {
    rs.unread += 1;
  }
  if (isNew) renderRooms();
}

async function refreshRooms() {
  try {
    const { data } = await api(`${state.config.roomsUrl}/rooms`);
    for (const room of data) roomState(room);
    renderRooms();
    queryPresence();
  } catch (err) {
    setStatus(`Could not load your rooms: ${err.message}`, 'offline');
  }
}

async function openRoom(roomId) {
  const rs = state.rooms.get(roomId);
  if (!rs) return;
  state.current = roomId;
  localStorage.setItem(ROOM_KEY, roomId);
  rs.unread = 0;
  renderRooms();
  renderHeader();
  $('composer-input').disabled = false;
  $('composer-send').disabled = false;
  renderMessages(true);
  if (!rs.loaded) {
    try {
      const { data, next } = await api(`${state.config.historyUrl}/rooms/${encodeURIComponent(roomId)}/messages?limit=${PAGE}`);
      for (const m of data) {
        rs.messages.set(m.seq, m);
        if (m.seq > rs.lastSeq) rs.lastSeq = m.seq;
      }
      rs.olderUrl = next;
      rs.loaded = true;
      if (state.current === roomId) renderMessages(true);
    } catch (err) {
      setStatus(`Could not load the messages: ${err.message}`, 'offline');
    }
  }
  $('composer-input').focus();
}

async function loadOlder() {
  const rs = state.rooms.get(state.current);
  if (!rs || !rs.olderUrl || rs.loadingOlder) return;
  rs.loadingOlder = true;
  const roomId = rs.room.id;
  renderOlderMarker(rs);
  try {
    const { data, next } = await api(rs.olderUrl);
    for (const m of data) rs.messages.set(m.seq, m);
    rs.olderUrl = next;
  } catch (err) {
    setStatus(`Could not load older messages: ${err.message}`, 'offline');
  } finally {
    rs.loadingOlder = false;
  }
  if (state.current === roomId) {
    const list = $('messages');
    const before = list.scrollHeight - list.scrollTop;
    renderMessages();
    list.scrollTop = list.scrollHeight - before;
  }
}

async function catchUp(roomId) {
  // after a truncated sync: page forward over HTTP with ?after=
  const rs = state.rooms.get(roomId);
  if (!rs) return;
  let url = `${state.config.historyUrl}/rooms/${encodeURIComponent(roomId)}/messages?after=${rs.lastSeq}&limit=200`;
  while (url) {
    const { data, next } = await api(url);
    for (const m of data) addMessage(m);
    url = next;
  }
}

// --- sending -----------------------------------------------------------------------------------

function sendFrame(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function transmit(messageId) {
  const p = state.pending.get(messageId);
  if (!p) return;
  p.state = 'sending';
  p.error = null;
  clearTimeout(p.timer);
  p.timer = setTimeout(() => {
    const q = state.pending.get(messageId);
    if (q && q.state === 'sending') {
      q.state = 'failed';
      q.error = 'Not delivered in time.';
      if (state.current === q.roomId) renderMessages();
    }
  }, SEND_TIMEOUT_MS);
  sendFrame({
    action: 'create_message',
    roomId: p.roomId,
    messageId,
    content: p.content,
    senderId: state.me.id,
    createdAt: p.createdAt,
  });
  if (state.current === p.roomId) renderMessages();
}

// Returns whether the message was taken (a blank one is not: the text stays in the box).
function send(content) {
  const roomId = state.current;
  if (!roomId || !content.trim()) return false;
  const messageId = newId();
  state.pending.set(messageId, { roomId, content, createdAt: new Date().toISOString(), state: 'sending', error: null, timer: null });
  transmit(messageId);
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
  return true;
}

// --- WebSocket: connect, reconnect with jittered backoff, sync ---------------------------------

function connect() {
  clearTimeout(state.reconnectTimer);
  const url = `${location.origin.replace(/^http/, 'ws')}/ws?token=${encodeURIComponent(state.me.token)}`;
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.onopen = () => {
    state.attempt = 0;
    setStatus(`Connected (node ${state.config.node})`, 'online');
    const rooms = {};
    for (const [id, rs] of state.rooms) if (rs.loaded || rs.lastSeq > 0) rooms[id] = rs.lastSeq;
    sendFrame({ action: 'sync', rooms });
  };
  ws.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    onFrame(frame);
  };
  ws.onclose = async (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (!state.me) return;
    if (event.code === 4401) {
      const ok = await refreshToken();
      if (!ok) return;
    }
    const delay = Math.min(15000, 500 * 2 ** state.attempt) * (0.5 + Math.random() * 0.5);
    state.attempt += 1;
    setStatus(`Disconnected — reconnecting in ${Math.ceil(delay / 1000)} s…`, 'reconnecting');
    state.reconnectTimer = setTimeout(connect, delay);
  };
}

function onFrame(frame) {
  switch (frame.type) {
    case 'message_created':
      addMessage(frame.message);
      break;
    case 'room_created': {
      const fresh = !state.rooms.has(frame.room.id);
      const rs = roomState(frame.room);
      if (fresh) rs.loaded = false;
      renderRooms();
      queryPresence(frame.room.participants.map((p) => p.id));
      break;
    }
    case 'synced': {
      let unknown = false;
      for (const id of Object.keys(frame.rooms)) if (!state.rooms.has(id)) unknown = true;
      if (unknown) refreshRooms();
      for (const id of frame.truncated || []) catchUp(id).catch(() => {});
      // anything still marked sending goes out again (same messageId: never a second message)
      for (const [messageId, p] of state.pending) if (p.state === 'sending') transmit(messageId);
      queryPresence();
      break;
    }
    case 'presence':
      state.presence.set(frame.userId, frame.online);
      renderRooms();
      renderHeader();
      break;
    case 'error': {
      const p = frame.messageId && state.pending.get(frame.messageId);
      if (p) {
        clearTimeout(p.timer);
        p.state = 'failed';
        p.error = frame.error.message;
        if (state.current === p.roomId) renderMessages();
      } else {
        setStatus(`Error: ${frame.error.message}`, 'online');
      }
      break;
    }
    default:
      break;
  }
}

async function refreshToken() {
  try {
    const { data } = await api(`${state.config.usersUrl}/token`, { method: 'POST' });
    state.me.token = data.token;
    localStorage.setItem(STORE_KEY, JSON.stringify(state.me));
    sendFrame({ action: 'refresh', token: data.token });
    scheduleRenewal();
    return true;
  } catch (err) {
    if (err.status === 401) {
      // The token is the account (there is no sign-in): one that expired cannot be renewed.
      signOut('Your session expired before it could be renewed. There is no sign-in: create a new account.');
      return false;
    }
    scheduleRenewal(30000); // users did not answer: keep the token and try again soon
    return true;
  }
}

// The token's expiry (ms since the epoch) read from its payload; null when unreadable.
function tokenExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch (err) {
    return null;
  }
}

// Renew the token well before it expires (10 minutes, or half of what is left when less), so
// a tab left open never loses its account: the edge closes an expired connection (4401) and
// an expired token cannot be renewed. Also checked when the page becomes visible again,
// since timers stand still while a computer sleeps.
function scheduleRenewal(delay) {
  clearTimeout(state.renewTimer);
  if (!state.me) return;
  if (delay === undefined) {
    const expiry = tokenExpiry(state.me.token);
    if (expiry === null) return;
    const left = expiry - Date.now();
    delay = Math.max(1000, left - Math.min(600000, left / 2));
  }
  // setTimeout holds at most about 24 days; a later renewal is scheduled again from there
  state.renewTimer = setTimeout(renewIfDue, Math.min(delay, 86400000));
}

function renewIfDue() {
  if (!state.me) return;
  const expiry = tokenExpiry(state.me.token);
  if (expiry !== null && expiry - Date.now() > 1200000) {
    scheduleRenewal();
    return;
  }
  refreshToken();
}

async function queryPresence(ids) {
  const wanted = new Set(ids || []);
  if (!ids) for (const rs of state.rooms.values()) for (const p of rs.room.participants) wanted.add(p.id);
  if (state.me) wanted.delete(state.me.id);
  const all = [...wanted];
  for (let i = 0; i < all.length; i += 200) {
    const chunk = all.slice(i, i + 200);
    try {
      const { data } = await api(`${location.origin}/presence?users=${chunk.map(encodeURIComponent).join(',')}`);
      for (const entry of data) state.presence.set(entry.userId, entry.online);
    } catch (err) {
      return;
    }
  }
  renderRooms();
  renderHeader();
}

// --- rendering ---------------------------------------------------------------------------------

function dot(userId) {
  const d = document.createElement('span');
  d.className = 'dot';
  const online = state.presence.get(userId) === true;
  d.dataset.online = String(online);
  d.setAttribute('role', 'img');
  d.setAttribute('aria-label', online ? 'online' : 'offline');
  return d;
}

function sortedRooms() {
  const latest = (rs) => {
    const m = rs.messages.get(rs.lastSeq);
    return m ? m.createdAt : rs.room.createdAt;
  };
  return [...state.rooms.values()].sort((a, b) => (latest(b) > latest(a) ? 1 : latest(b) < latest(a) ? -1 : 0));
}

function renderRooms() {
  const list = $('rooms');
  const focusedId = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.roomId : null;
  list.replaceChildren();
  for (const rs of sortedRooms()) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.roomId = rs.room.id;
    if (rs.room.id === state.current) b.setAttribute('aria-current', 'true');
    const name = document.createElement('span');
    name.className = 'room-name';
    const others = otherPeople(rs.room);
    if (others.length === 1) name.appendChild(dot(others[0].id));
    name.appendChild(document.createTextNode(roomTitle(rs.room)));
    const sub = document.createElement('span');
    sub.className = 'room-sub';
    const last = rs.messages.get(rs.lastSeq);
    sub.textContent = last ? `${nameOf(last.senderId)}: ${last.content}` : `${rs.room.participants.length} people`;
    const unread = document.createElement('span');
    unread.className = 'unread';
    if (rs.unread > 0) {
      unread.dataset.count = String(rs.unread);
      unread.textContent = String(rs.unread);
      unread.setAttribute('aria-label', `${rs.unread} unread`);
    }
    b.append(name, unread, sub);
    b.addEventListener('click', () => openRoom(rs.room.id));
    li.appendChild(b);
    list.appendChild(li);
    if (focusedId === rs.room.id) b.focus();
  }
  $('rooms-empty').hidden = state.rooms.size > 0;
}

function renderHeader() {
  const rs = state.rooms.get(state.current);
  const people = $('room-people');
  people.replaceChildren();
  if (!rs) return;
  $('room-title').textContent = roomTitle(rs.room);
  for (const p of rs.room.participants) {
    if (state.me && p.id === state.me.id) continue;
    const li = document.createElement('li');
    li.appendChild(dot(p.id));
    li.appendChild(document.createTextNode(p.name));
    people.appendChild(li);
  }
}

function renderOlderMarker(rs) {
  const marker = $('messages').querySelector('.older');
  if (marker) marker.textContent = olderText(rs);
}

function olderText(rs) {
  if (!rs.loaded) return 'Loading messages…';
  if (rs.loadingOlder) return 'Loading older messages…';
  if (rs.olderUrl) return 'Scroll up for older messages';
  return rs.messages.size ? 'Start of the conversation' : 'No messages yet: say hello!';
}

function messageEl(m, pending) {
  const li = document.createElement('li');
  li.className = 'msg';
  const mine = state.me && m.senderId === state.me.id;
  li.dataset.mine = String(!!mine);
  li.dataset.messageId = m.messageId;
  if (m.seq) li.dataset.seq = String(m.seq);
  li.dataset.state = pending ? pending.state : 'success';
  li.appendChild(avatarEl(nameOf(m.senderId), null));
  const body = document.createElement('div');
  body.className = 'body';
  const meta = document.createElement('div');
  meta.className = 'meta';
  const sender = document.createElement('span');
  sender.className = 'sender';
  sender.textContent = nameOf(m.senderId);
  const time = document.createElement('time');
  time.dateTime = m.createdAt;
  time.textContent = timeOf(m.createdAt);
  meta.append(sender, time);
  if (pending) {
    const st = document.createElement('span');
    st.className = 'state';
    st.textContent = pending.state === 'failed' ? `Failed${pending.error ? ': ' + pending.error : ''}` : 'Sending…';
    meta.appendChild(st);
    if (pending.state === 'failed') {
      const retry = document.createElement('button');
      retry.type = 'button';
      retry.className = 'link';
      retry.textContent = 'Retry';
      retry.setAttribute('aria-label', 'Retry sending this message');
      retry.addEventListener('click', () => transmit(m.messageId));
      // given up on: dropped from the page (if it was stored after all, it comes back as sent)
      const discard = document.createElement('button');
      discard.type = 'button';
      discard.className = 'link';
      discard.textContent = 'Discard';
      discard.setAttribute('aria-label', 'Discard this message');
      discard.addEventListener('click', () => {
        clearTimeout(pending.timer);
        state.pending.delete(m.messageId);
        renderMessages();
      });
      meta.append(retry, discard);
    }
  }
  const content = document.createElement('p');
  content.className = 'content';
  content.textContent = m.content;
  body.append(meta, content);
  li.appendChild(body);
  return li;
}

function renderMessages(toBottom) {
  const list = $('messages');
  const rs = state.rooms.get(state.current);
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren();
  if (!rs) return;
  const marker = document.createElement('li');
  marker.className = 'older';
  marker.textContent = olderText(rs);
  list.appendChild(marker);
  const seqs = [...rs.messages.keys()].sort((a, b) => a - b);
  for (const seq of seqs) list.appendChild(messageEl(rs.messages.get(seq), null));
  for (const [messageId, p] of state.pending) {
    if (p.roomId !== rs.room.id) continue;
    list.appendChild(messageEl({ messageId, content: p.content, createdAt: p.createdAt, senderId: state.me.id }, p));
  }
  if (toBottom || atBottom) list.scrollTop = list.scrollHeight;
  if (rs.olderUrl && list.scrollHeight <= list.clientHeight) loadOlder();
}

// --- new room dialog ---------------------------------------------------------------------------

async function loadUsers(url) {
  const list = $('user-list');
  try {
    const { data, next } = await api(url);
    for (const user of data) {
      state.names.set(user.id, user.name);
      const li = document.createElement('li');
      const label = document.createElement('label');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.value = user.id;
      box.name = 'participant';
      box.setAttribute('aria-label', user.name);
      // names are not unique: the id tells two people of the same name apart
      box.setAttribute('aria-description', `id ${user.id}`);
      const id = document.createElement('span');
      id.className = 'hint user-id';
      id.textContent = user.id;
      label.append(box, avatarEl(user.name, user.avatar), document.createTextNode(user.name), id);
      li.appendChild(label);
      list.appendChild(li);
    }
    state.usersNext = next;
    $('users-more').hidden = !next;
    $('users-empty').hidden = list.children.length > 0;
  } catch (err) {
    $('new-room-error').textContent = err.message;
  }
}

async function openNewRoom() {
  $('user-list').replaceChildren();
  $('new-room-error').textContent = '';
  $('users-empty').hidden = true;
  $('new-room-dialog').showModal();
  await loadUsers(`${state.config.usersUrl}/users?limit=${PAGE}`);
  const first = $('user-list').querySelector('input');
  if (first) first.focus();
}

async function createRoom(event) {
  event.preventDefault();
  const chosen = [...$('user-list').querySelectorAll('input:checked')].map((b) => b.value);
  if (!chosen.length) {
    $('new-room-error').textContent = 'Choose at least one person.';
    return;
  }
  $('new-room-create').disabled = true;
  // One key per room being created: "try again" after a lost answer sends the same key, and
  // rooms answers the room the first try made instead of making a second one.
  const wanted = chosen.join('\n');
  if (!state.roomKey || state.roomKey.wanted !== wanted) state.roomKey = { wanted, key: newId() };
  try {
    const { data } = await api(`${state.config.roomsUrl}/rooms`, {
      method: 'POST',
      body: { participants: chosen },
      headers: { 'idempotency-key': state.roomKey.key },
    });
    state.roomKey = null;
    roomState(data);
    $('new-room-dialog').close();
    renderRooms();
    queryPresence(chosen);
    await openRoom(data.id);
  } catch (err) {
    $('new-room-error').textContent = err.message;
  } finally {
    $('new-room-create').disabled = false;
  }
}

// --- sign up / sign out ------------------------------------------------------------------------

async function signUp(event) {
  event.preventDefault();
  const name = $('signup-name').value.trim();
  const avatar = $('signup-avatar').value.trim();
  $('signup-error').textContent = '';
  if (!name || chars(name) > NAME_MAX) {
    $('signup-error').textContent = name ? `A name can have at most ${NAME_MAX} characters.` : 'Please enter a name.';
    $('signup-name').focus();
    return;
  }
  const body = { name };
  if (avatar) body.avatar = avatar;
  try {
    const { data } = await api(`${state.config.usersUrl}/users`, { method: 'POST', body, auth: false });
    state.me = data;
    localStorage.setItem(STORE_KEY, JSON.stringify(data));
    await startChat();
  } catch (err) {
    $('signup-error').textContent = err.message;
  }
}

function signOut(message) {
  localStorage.removeItem(STORE_KEY);
  localStorage.removeItem(ROOM_KEY);
  clearTimeout(state.renewTimer);
  state.me = null;
  state.roomKey = null;
  if (state.ws) {
    const ws = state.ws;
    state.ws = null;
    ws.close();
  }
  clearTimeout(state.reconnectTimer);
  state.rooms.clear();
  state.pending.clear();
  state.current = null;
  $('app').hidden = true;
  $('signup').hidden = false;
  $('signup-error').textContent = message || '';
  setStatus('Signed out', '');
  $('signup-name').focus();
}

async function startChat() {
  $('signup').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = state.me.name;
  $('me-avatar').replaceWith(Object.assign(avatarEl(state.me.name, state.me.avatar), { id: 'me-avatar' }));
  setStatus('Connecting…', 'reconnecting');
  scheduleRenewal();
  await refreshRooms();
  connect();
  const last = localStorage.getItem(ROOM_KEY);
  if (last && state.rooms.has(last) && !state.current) openRoom(last);
}

// --- boot --------------------------------------------------------------------------------------

async function boot() {
  try {
    const { data } = await api('/config', { auth: false });
    state.config = data;
  } catch (err) {
    setStatus('This node cannot give its configuration; reload to try again.', 'offline');
    return;
  }
  $('signup-form').addEventListener('submit', signUp);
  $('sign-out').addEventListener('click', () => signOut());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') renewIfDue();
  });
  $('new-room').addEventListener('click', openNewRoom);
  $('new-room-form').addEventListener('submit', createRoom);
  $('new-room-cancel').addEventListener('click', () => $('new-room-dialog').close());
  $('users-more').addEventListener('click', () => state.usersNext && loadUsers(state.usersNext));
  $('messages').addEventListener('scroll', () => {
    if ($('messages').scrollTop < 80) loadOlder();
  });
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('composer-input');
    if (send(input.value)) input.value = '';
  });
  $('composer-input').addEventListener('input', () => {
    // an invalid box keeps the form from submitting and says why (Enter and the button alike)
    const count = chars($('composer-input').value);
    $('composer-input').setCustomValidity(
      count > CONTENT_MAX ? `A message can have at most ${CONTENT_MAX.toLocaleString('en')} characters (this one has ${count.toLocaleString('en')}).` : '');
  });
  $('composer-input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  const saved = localStorage.getItem(STORE_KEY);
  if (saved) {
    try {
      state.me = JSON.parse(saved);
    } catch (err) {
      state.me = null;
    }
  }
  if (!state.me) {
    setStatus('Not signed in', '');
    $('signup').hidden = false;
    $('signup-name').focus();
    return;
  }
  if (!(await refreshToken())) return;
  await startChat();
}

document.addEventListener('DOMContentLoaded', boot);
