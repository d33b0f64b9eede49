// Parley web client: plain JS, no build step. It talks to the gateway it is
// served from through @parley/client (clients/typescript, served as
// /parley-client.js): REST under /api/v1 with tokens renewed before they
// expire, and the WebSocket at /ws, reconnected with backoff and jitter and
// handed renewed tokens in band. The rooms' state (joins with since_seq,
// pending sends, history) is kept here, where it is rendered.
import { ParleyClient, ParleyError } from "/parley-client.js";

(function () {
  // ---------------------------------------------------------------------------
  // Constants
  // ---------------------------------------------------------------------------
  const ROOM_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const SHORT_CODE_RE = /^[ABCDEFGHJKLMNPQRSTUVWXYZ23456789]{6}$/;
  const HISTORY_PAGE = 50;
  const TYPING_SEND_EVERY_MS = 2000;
  const TYPING_SHOW_MS = 3000;
  const STORE_TOKENS = "parley.tokens";
  const STORE_ROOMS = "parley.rooms";
  const STORE_CURRENT = "parley.current";
  const REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];
  const READ_EVERY_MS = 750; // read markers are sent at most this often per room
  const CONFIRM_MS = 3000; // a delete button waits this long for its second click
  const MAX_CONTENT_BYTES = 4096; // CHAT_MAX_CONTENT_BYTES by default; the server has the last word
  const GROUP_WITHIN_MS = 5 * 60 * 1000; // one sender's messages this close share a header
  const URL_RE = /\bhttps?:\/\/[^\s<>"']+/g;
  const ROOMS_EVERY_MS = 30000; // the room list is fetched again this often (new direct rooms)
  const MAX_ATTACHMENTS = 10; // files one message carries
  const THUMBNAIL_BOX = 320; // the longest side of a thumbnail, in pixels
  const SHOWN_INLINE = /^image\/(png|jpeg|gif|webp)$/; // images shown in place; others are links
  const DURATIONS = [
    ["", "until lifted"],
    ["10m", "for 10 minutes"],
    ["1h", "for 1 hour"],
    ["1d", "for 1 day"],
    ["7d", "for 7 days"],
  ];

  // ---------------------------------------------------------------------------
  // DOM helpers
  // ---------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "text") node.textContent = v;
        else if (k === "className") node.className = v;
        else if (k === "dataset") Object.assign(node.dataset, v);
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children || []) {
      if (c !== null && c !== undefined) node.append(c);
    }
    return node;
  }

  function show(node, text) {
    if (text === undefined) {
      node.hidden = false;
      return;
    }
    node.textContent = text;
    node.hidden = !text;
  }

  const ui = {
    conn: $("conn-status"),
    connText: document.querySelector("#conn-status .conn-text"),
    who: $("who"),
    currentUser: $("current-user"),
    logout: $("logout-button"),
    banner: $("banner"),
    authView: $("auth-view"),
    authForm: $("auth-form"),
    username: $("username"),
    password: $("password"),
    authError: $("auth-error"),
    authNotice: $("auth-notice"),
    loginBtn: $("login-button"),
    registerBtn: $("register-button"),
    chatView: $("chat-view"),
    sidebar: $("sidebar"),
    sidebarToggle: $("sidebar-toggle"),
    roomList: $("room-list"),
    noRooms: $("no-rooms"),
    joinForm: $("join-form"),
    roomId: $("room-id"),
    privateForm: $("private-join-form"),
    privateRoom: $("private-room"),
    privatePassword: $("private-password"),
    createForm: $("create-form"),
    createName: $("create-name"),
    createPassword: $("create-password"),
    createResult: $("create-result"),
    sidebarError: $("sidebar-error"),
    roomTitle: $("room-title"),
    leave: $("leave-button"),
    memberList: $("member-list"),
    memberCount: $("member-count"),
    scroller: $("scroller"),
    loadOlder: $("load-older"),
    historyStatus: $("history-status"),
    emptyRoom: $("empty-room"),
    listSlot: $("list-slot"),
    pendingList: $("pending-list"),
    typing: $("typing-indicator"),
    compose: $("compose"),
    input: $("message-input"),
    send: $("send-button"),
    sendError: $("send-error"),
    composeContext: $("compose-context"),
    composeContextText: $("compose-context-text"),
    composeContextCancel: $("compose-context-cancel"),
    dmList: $("dm-list"),
    byteCounter: $("byte-counter"),
    noDms: $("no-dms"),
    settingsButton: $("settings-button"),
    settings: $("room-settings"),
    settingsName: $("settings-name"),
    settingsPassword: $("settings-password"),
    settingsError: $("settings-error"),
    settingsDelete: $("settings-delete"),
    roomNotice: $("room-notice"),
    memberMenu: $("member-menu"),
    room: $("room"),
    dropZone: $("drop-zone"),
    attach: $("attach-button"),
    fileInput: $("file-input"),
    tray: $("attachment-tray"),
  };

  // ---------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------
  const state = {
    client: null, // the ParleyClient: signed in, or not yet
    conn: null, // its Connection while signed in
    me: null, // {id, username, display_name}
    rooms: new Map(), // room_id -> Room
    current: null, // room_id shown
    connGen: 0, // increases every time the connection is (re)opened
    status: "offline",
    loggedIn: false,
    shortJoins: [], // short-code joins in flight: [{short_code, password}]
    pendingLeaves: new Set(), // leaves to send when the socket is back
    lastTypingSent: 0,
    clientCounter: 0,
    // What the composer does next: null (send), {mode: "reply"|"edit", roomId, seq}.
    composing: null,
    moderations: new Map(), // client_id -> what it does, for the notice when acked
    roomsTimer: 0,
    // Files chosen for the next message: {key, file, status, attachment, abort, node, error}.
    uploads: [],
    uploadCounter: 0,
  };

  function newRoom(id, extra) {
    const ol = el("ol", { className: "messages", "data-testid": "message-list" });
    return Object.assign(
      {
        id,
        name: "",
        shortCode: "",
        isPrivate: false,
        direct: false, // a direct room of two users
        role: "", // the user's role here: owner, moderator or member
        muted: false,
        mutedUntil: "", // RFC 3339, "" for no end
        mutedTimer: 0,
        removedBy: "", // why a `left` the user did not ask for came
        password: "", // kept in memory only, for rejoins
        joined: false, // joined on the current socket
        joining: false,
        everJoined: false,
        seqs: [], // sorted seqs shown
        bySeq: new Map(), // seq -> {msg, node}
        maxSeq: 0,
        hasMore: true,
        historyInFlight: false,
        historyLoaded: false,
        members: new Map(), // user_id -> name
        typing: new Map(), // user_id -> {name, timer}
        pending: new Map(), // client_id -> {content, node, sentGen, failed}
        unread: 0,
        readSeq: 0, // the server's read marker for this user
        readSent: 0, // the highest read marker sent
        readTimer: 0,
        seenSeq: 0, // the newest seq shown while the room was open
        dividerSeq: -1, // the read marker when the room was opened: "new" starts after it
        list: ol,
        scrollTop: 0,
        stickBottom: true,
        itemNode: null,
      },
      extra || {}
    );
  }

  // ---------------------------------------------------------------------------
  // Session storage
  // ---------------------------------------------------------------------------
  function saveTokens(session) {
    if (session) sessionStorage.setItem(STORE_TOKENS, JSON.stringify(session));
    else sessionStorage.removeItem(STORE_TOKENS);
  }

  // The session of this tab: {accessToken, refreshToken, expiresAt}.
  function loadTokens() {
    try {
      const t = JSON.parse(sessionStorage.getItem(STORE_TOKENS) || "null");
      if (t && typeof t.accessToken === "string" && typeof t.refreshToken === "string" && Number(t.expiresAt) > 0) return t;
    } catch (_) {
      /* ignore a corrupt entry */
    }
    return null;
  }

  function saveRooms() {
    const list = [...state.rooms.values()].map((r) => ({
      id: r.id,
      name: r.name,
      short_code: r.shortCode,
      private: r.isPrivate,
      direct: r.direct,
    }));
    sessionStorage.setItem(STORE_ROOMS, JSON.stringify(list));
    if (state.current) sessionStorage.setItem(STORE_CURRENT, state.current);
    else sessionStorage.removeItem(STORE_CURRENT);
  }

  function loadRooms() {
    try {
      const list = JSON.parse(sessionStorage.getItem(STORE_ROOMS) || "[]");
      return Array.isArray(list) ? list.filter((r) => r && ROOM_ID_RE.test(r.id)) : [];
    } catch (_) {
      return [];
    }
  }

  function clearSession() {
    sessionStorage.removeItem(STORE_TOKENS);
    sessionStorage.removeItem(STORE_ROOMS);
    sessionStorage.removeItem(STORE_CURRENT);
  }

  // ---------------------------------------------------------------------------
  // REST, through the client
  // ---------------------------------------------------------------------------
  // A client of this origin, resuming `session` if given. Its renewed
  // sessions are kept for a reload; a session it ends (a refused renewal)
  // signs the page out.
  function newClient(session) {
    const client = new ParleyClient({ session: session || undefined });
    client.on("session", (s) => {
      if (client !== state.client) return;
      saveTokens(s);
      if (!s && state.loggedIn) sessionEnded("Your session has expired. Please log in again.");
    });
    return client;
  }

  // An authenticated call: on 401 the client renews the tokens once and retries.
  function api(method, path, body) {
    if (!state.client || !state.client.signedIn) {
      return Promise.reject(new ParleyError("UNAUTHENTICATED", "You are signed out.", 401));
    }
    return state.client.request(method, path, body);
  }

  function accessToken() {
    const session = state.client && state.client.session;
    return session ? session.accessToken : "";
  }

  // Claims from the access token, used until /me answers.
  function tokenClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const json = decodeURIComponent(
        atob(part + "===".slice((part.length + 3) % 4))
          .split("")
          .map((c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0"))
          .join("")
      );
      return JSON.parse(json);
    } catch (_) {
      return {};
    }
  }

  // ---------------------------------------------------------------------------
  // Banner and status
  // ---------------------------------------------------------------------------
  let bannerTimer = 0;
  function banner(text, sticky) {
    clearTimeout(bannerTimer);
    show(ui.banner, text || "");
    if (text && !sticky) bannerTimer = setTimeout(() => show(ui.banner, ""), 8000);
  }

  const STATUS_TEXT = {
    offline: "Signed out",
    connecting: "Connecting…",
    online: "Online",
    reconnecting: "Reconnecting…",
  };

  function setStatus(s, detail) {
    state.status = s;
    ui.conn.dataset.state = s;
    ui.connText.textContent = detail || STATUS_TEXT[s] || s;
    updateComposer();
  }

  // ---------------------------------------------------------------------------
  // Auth view
  // ---------------------------------------------------------------------------
  function authBusy(busy) {
    ui.loginBtn.disabled = busy;
    ui.registerBtn.disabled = busy;
  }

  function authFields() {
    const username = ui.username.value.trim();
    const password = ui.password.value;
    show(ui.authError, "");
    show(ui.authNotice, "");
    if (!username || !password) {
      show(ui.authError, "Enter a username and a password.");
      (username ? ui.password : ui.username).focus();
      return null;
    }
    return { username, password };
  }

  async function onRegister() {
    const f = authFields();
    if (!f) return;
    authBusy(true);
    try {
      const user = await state.client.register(f.username, f.password);
      const name = (user && user.username) || f.username;
      show(ui.authNotice, "Account “" + name + "” created. Logging you in…");
      authBusy(false);
      await logIn(f);
      return;
    } catch (e) {
      show(ui.authError, e.message || "Registration failed.");
    } finally {
      authBusy(false);
    }
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const f = authFields();
    if (!f) return;
    await logIn(f);
  }

  async function logIn(f) {
    authBusy(true);
    try {
      await state.client.login(f.username, f.password);
      ui.password.value = "";
      // A new user in this tab: forget the rooms of whoever was here before.
      sessionStorage.removeItem(STORE_ROOMS);
      sessionStorage.removeItem(STORE_CURRENT);
      state.loggedIn = true;
      await startSession();
    } catch (e) {
      state.loggedIn = false;
      show(ui.authError, e.message || "Login failed.");
    } finally {
      authBusy(false);
    }
  }

  async function startSession() {
    const claims = tokenClaims(accessToken());
    state.me = { id: claims.sub || "", username: claims.name || "", display_name: claims.name || "" };
    try {
      const user = await api("GET", "/me");
      if (user && user.id) state.me = user;
    } catch (e) {
      if (e instanceof ParleyError && e.status === 401) throw e;
      banner("Could not load your profile: " + e.message);
    }
    if (!state.loggedIn) return;
    ui.currentUser.textContent = state.me.display_name || state.me.username || "you";
    ui.currentUser.title = "@" + (state.me.username || "");
    ui.who.hidden = false;
    ui.authView.hidden = true;
    ui.chatView.hidden = false;
    show(ui.authError, "");
    show(ui.authNotice, "");
    // Read before the rooms are added: adding one saves the list, and with
    // it the (not yet chosen) current room.
    const cur = sessionStorage.getItem(STORE_CURRENT);
    for (const r of loadRooms()) {
      if (!state.rooms.has(r.id)) {
        addRoom(newRoom(r.id, { name: r.name || "", shortCode: r.short_code || "", isPrivate: !!r.private, direct: !!r.direct }));
      }
    }
    await loadMyRooms();
    selectRoom(cur && state.rooms.has(cur) ? cur : state.rooms.keys().next().value || null);
    clearInterval(state.roomsTimer);
    state.roomsTimer = setInterval(() => {
      if (state.loggedIn) loadMyRooms().catch(() => {});
    }, ROOMS_EVERY_MS);
    connect();
  }

  // Every room the user is a member of, with its unread count, from the
  // server: a new tab or device lists the same rooms.
  async function loadMyRooms() {
    let list;
    try {
      list = await api("GET", "/rooms");
    } catch (e) {
      if (e instanceof ParleyError && e.status === 401) throw e;
      banner("Could not load your rooms: " + e.message);
      return;
    }
    for (const r of (list && list.rooms) || []) {
      let room = state.rooms.get(r.id);
      if (!room) {
        room = newRoom(r.id, { name: r.name || "", isPrivate: !!r.private, direct: !!r.direct });
        addRoom(room);
        joinRoom(room); // a room joined elsewhere, or a new direct room
      } else if (r.name && (!room.name || r.direct)) {
        room.name = r.name;
      }
      room.direct = !!r.direct;
      if (r.role) room.role = r.role;
      room.readSeq = Math.max(room.readSeq, Number(r.read_seq) || 0);
      // A joined room's count is kept here as messages arrive and are read;
      // the server's may be a moment behind a read marker still on its way.
      if (!room.everJoined) room.unread = Number(r.unread) || 0;
      renderRoomItem(room);
    }
  }

  function sessionEnded(message) {
    teardown();
    clearSession();
    showAuth();
    if (message) show(ui.authError, message);
  }

  async function onLogout() {
    const client = state.client;
    state.loggedIn = false;
    // Forgets the session here at once, then tells the server.
    const done = client ? client.logout().catch(() => {}) : Promise.resolve();
    teardown();
    clearSession();
    showAuth();
    await done;
    show(ui.authNotice, "You have been logged out.");
  }

  // Drop every piece of the signed-in state.
  function teardown() {
    state.loggedIn = false;
    clearUploads();
    clearInterval(state.roomsTimer);
    // A fresh client for the next sign-in; the old one closes its connection.
    const client = state.client;
    state.conn = null;
    state.client = newClient(null);
    if (client) client.end();
    for (const room of state.rooms.values()) {
      for (const t of room.typing.values()) clearTimeout(t.timer);
      clearTimeout(room.mutedTimer);
    }
    state.rooms.clear();
    state.moderations.clear();
    state.current = null;
    state.me = null;
    state.shortJoins = [];
    state.pendingLeaves.clear();
    ui.roomList.textContent = "";
    ui.dmList.textContent = "";
    ui.listSlot.textContent = "";
    ui.pendingList.textContent = "";
    renderRoomView();
    setStatus("offline");
  }

  function showAuth() {
    $("keys-view").hidden = true;
    $("key-secret-text").textContent = "";
    ui.chatView.hidden = true;
    ui.who.hidden = true;
    ui.authView.hidden = false;
    ui.currentUser.textContent = "";
    show(ui.createResult, "");
    show(ui.sidebarError, "");
    banner("");
    ui.username.focus();
  }

  // ---------------------------------------------------------------------------
  // WebSocket
  // ---------------------------------------------------------------------------
  function sendFrame(obj) {
    return !!state.conn && state.conn.sendFrame(obj);
  }

  function socketOpen() {
    return !!state.conn && state.conn.isOpen;
  }

  // The connection reconnects by itself until the page signs out.
  function connect() {
    if (!state.loggedIn || state.conn) return;
    const conn = state.client.connect();
    state.conn = conn;
    conn.on("frame", (frame) => {
      if (state.conn === conn) handleFrame(frame);
    });
    conn.on("state", (change) => {
      if (state.conn === conn) onConnectionState(change);
    });
  }

  function onConnectionState(change) {
    if (change.state === "online") {
      state.connGen++;
      setStatus("online");
      for (const id of state.pendingLeaves) sendFrame({ leave: { room_id: id } });
      state.pendingLeaves.clear();
      for (const room of state.rooms.values()) joinRoom(room);
      return;
    }
    // Not online: nothing is joined until the next open.
    for (const room of state.rooms.values()) {
      room.joined = false;
      room.joining = false;
      room.historyInFlight = false;
      clearTyping(room);
    }
    state.shortJoins = [];
    renderRoomView();
    if (change.state === "closed") {
      // The credentials were refused.
      state.conn = null;
      if (state.loggedIn) sessionEnded("Your session has expired. Please log in again.");
      return;
    }
    if (change.state === "connecting") {
      setStatus("connecting");
      return;
    }
    const secs = Math.max(1, Math.round(change.retryInMs / 1000));
    const why = change.reason && change.reason !== "opening" ? change.reason.charAt(0).toUpperCase() + change.reason.slice(1) : "";
    setStatus("reconnecting", change.retryInMs > 0 ? (why || "Connection lost") + ", retrying in " + secs + " s…" : "Reconnecting…");
  }

  // ---------------------------------------------------------------------------
  // Frames from the server
  // ---------------------------------------------------------------------------
  function handleFrame(frame) {
    if (!frame || typeof frame !== "object") return;
    const key = Object.keys(frame)[0];
    const body = frame[key] || {};
    switch (key) {
      case "joined":
        return onJoined(body);
      case "left":
        return onLeft(body);
      case "message":
        return onMessage(body);
      case "ack":
        return onAck(body);
      case "typing":
        return onTyping(body);
      case "presence":
        return onPresence(body);
      case "history":
        return onHistory(body);
      case "pong":
      case "refreshed":
        return;
      case "error":
        return onErrorFrame(body);
      case "message_edited":
        return onEdited(body);
      case "message_deleted":
        return onDeleted(body);
      case "reaction":
        return onReaction(body);
      case "read":
        return; // other members' markers are not shown
      case "member_update":
        return onMemberUpdate(body);
      case "room_updated":
        return onRoomUpdated(body);
      default:
        return; // frames added later are ignored
    }
  }

  function onJoined(j) {
    let room = state.rooms.get(j.room_id);
    if (!room || (!room.joining && !room.joined)) {
      // Answer to a join by short code: now the room id is known.
      const sj = state.shortJoins.shift();
      if (!room) {
        room = newRoom(j.room_id, sj ? { shortCode: sj.short_code, isPrivate: true, password: sj.password } : {});
        addRoom(room);
        selectRoom(room.id);
        closeSidebarOnNarrow();
      }
    }
    room.joining = false;
    room.joined = true;
    room.everJoined = true;
    room.removedBy = "";
    if (j.name) room.name = j.name;
    room.isPrivate = !!j.private;
    room.direct = !!j.direct;
    room.role = j.role || "";
    setMuted(room, !!j.muted, j.muted_until || "");
    const readSeq = Number(j.read_seq) || 0;
    if (readSeq > room.readSeq) room.readSeq = readSeq;
    room.members = new Map();
    for (const m of j.members || []) room.members.set(m.user_id, m.name);
    clearTyping(room);
    const lastSeq = Number(j.last_seq) || 0;
    if (j.replay_truncated) {
      // Messages were missed beyond what is replayed: start over from the
      // newest ones so the list has no gap; older ones come from history.
      resetMessages(room);
      room.hasMore = true;
      room.historyLoaded = false;
    }
    if (room.historyLoaded && room.maxSeq === 0 && lastSeq > 0) {
      // Nothing seen yet, so since_seq could not be sent: fetch what was missed.
      room.historyLoaded = false;
      room.hasMore = true;
    }
    if (!room.historyLoaded) {
      if (lastSeq === 0 && room.seqs.length === 0) {
        room.hasMore = false;
        room.historyLoaded = true;
      } else {
        requestHistory(room, 0);
      }
    }
    flushPending(room);
    renderRoomItem(room);
    if (room.id === state.current) renderRoomView();
    saveRooms();
  }

  function onLeft(l) {
    const room = state.rooms.get(l.room_id);
    // A join sent after the leave is already under way: keep that room.
    if (!room || room.joining) return;
    // The user's own leaves take the room off at once, so a `left` for a
    // room still listed came from the server: a kick, a ban or a deletion.
    banner(room.removedBy || "“" + (room.name || room.id) + "” was deleted.", true);
    removeRoom(room);
  }

  function displayName(room) {
    return room.name || room.id;
  }

  function untilText(until) {
    return until ? " until " + formatTime(until) : "";
  }

  function setMuted(room, muted, until) {
    clearTimeout(room.mutedTimer);
    room.mutedTimer = 0;
    room.muted = muted;
    room.mutedUntil = muted ? until || "" : "";
    if (muted && until) {
      // A mute ends by itself; the server stops refusing at the same time.
      const left = Date.parse(until) - Date.now();
      room.mutedTimer = setTimeout(() => setMuted(room, false, ""), Math.max(0, left) + 250);
    }
    if (room.id === state.current) updateComposer();
  }

  function roomNotice(room, text) {
    if (room.id !== state.current) return;
    show(ui.roomNotice, text);
    clearTimeout(roomNotice.timer);
    roomNotice.timer = setTimeout(() => show(ui.roomNotice, ""), 8000);
  }

  const ACTION_TEXT = {
    kick: "removed from the room",
    ban: "banned",
    unban: "unbanned",
    mute: "muted",
    unmute: "unmuted",
  };

  function onMemberUpdate(u) {
    const room = state.rooms.get(u.room_id);
    if (!room) return;
    noteEvent(room, u);
    const self = state.me && u.user_id === state.me.id;
    const by = u.by_name || "a moderator";
    const what =
      u.action === "set_role" ? "made " + (u.role === "moderator" ? "a moderator" : "a member") : ACTION_TEXT[u.action] || u.action;
    const until = u.action === "ban" || u.action === "mute" ? untilText(u.until) : "";
    if (self) {
      const where = "“" + displayName(room) + "”";
      if (u.action === "kick") room.removedBy = "You were removed from " + where + " by " + by + ".";
      else if (u.action === "ban") room.removedBy = "You were banned from " + where + " by " + by + until + ".";
      else if (u.action === "mute") {
        setMuted(room, true, u.until || "");
        banner("You were muted in " + where + " by " + by + until + ".", true);
      } else if (u.action === "unmute") {
        setMuted(room, false, "");
        banner("You can write in " + where + " again.");
      } else if (u.action === "set_role") {
        room.role = u.role || "member";
        if (room.id === state.current) renderRoomView();
        roomNotice(room, by + " made you " + (u.role === "moderator" ? "a moderator" : "a member") + ".");
      }
      return;
    }
    if (u.action === "kick" || u.action === "ban") {
      room.members.delete(u.user_id);
      if (room.id === state.current) renderMembers();
    }
    roomNotice(room, (u.name || "Someone") + " was " + what + until + " by " + by + ".");
  }

  function onRoomUpdated(u) {
    const room = state.rooms.get(u.room_id);
    if (!room) return;
    noteEvent(room, u);
    const renamed = u.name && u.name !== room.name;
    const locked = !!u.private !== room.isPrivate;
    room.name = u.name || room.name;
    room.isPrivate = !!u.private;
    renderRoomItem(room);
    if (room.id === state.current) renderRoomView();
    saveRooms();
    const by = u.by_name || "The owner";
    if (renamed) roomNotice(room, by + " renamed the room to “" + room.name + "”.");
    else if (locked) roomNotice(room, by + (room.isPrivate ? " set a password on the room." : " made the room public."));
  }

  function onMessage(m) {
    const room = state.rooms.get(m.room_id);
    if (!room) return;
    const own = state.me && m.sender_id === state.me.id;
    if (own && m.client_id && room.pending.has(m.client_id)) dropPending(room, m.client_id);
    const fresh = insertMessage(room, m, false);
    const t = room.typing.get(m.sender_id);
    if (t) {
      clearTimeout(t.timer);
      room.typing.delete(m.sender_id);
      if (room.id === state.current) renderTyping();
    }
    if (fresh && !own && seqOf(m) > room.readSeq) {
      if (room.id !== state.current || document.hidden) {
        room.unread++;
        renderRoomItem(room);
      }
    }
    if (room.id === state.current) markRead(room);
  }

  // A timeline event changes a message already shown (or about to be,
  // from history, which then carries the change).
  function seqOf(x) {
    return Number(x.seq) || 0;
  }

  function noteEvent(room, e) {
    const seq = seqOf(e);
    if (seq > room.maxSeq) room.maxSeq = seq;
  }

  function changeMessage(room, seq, change) {
    const entry = room.bySeq.get(seq);
    if (!entry) return;
    change(entry.msg);
    const fresh = messageNode(entry.msg, "sent");
    entry.node.replaceWith(fresh);
    entry.node = fresh;
    placeInSequence(room, bisect(room.seqs, seq));
    // Replies quoting it show its new text.
    for (const other of room.bySeq.values()) {
      if (Number(other.msg.reply_to) === seq) {
        const node = messageNode(other.msg, "sent");
        other.node.replaceWith(node);
        other.node = node;
      }
    }
  }

  function onEdited(e) {
    const room = state.rooms.get(e.room_id);
    if (!room) return;
    noteEvent(room, e);
    changeMessage(room, Number(e.target_seq), (m) => {
      m.content = e.content;
      m.edited_at = e.edited_at;
    });
  }

  function onDeleted(e) {
    const room = state.rooms.get(e.room_id);
    if (!room) return;
    noteEvent(room, e);
    changeMessage(room, Number(e.target_seq), (m) => {
      m.deleted = true;
      m.content = "";
      m.reactions = [];
    });
    if (state.composing && state.composing.roomId === room.id && state.composing.seq === Number(e.target_seq)) {
      setComposing(null);
    }
  }

  function onReaction(e) {
    const room = state.rooms.get(e.room_id);
    if (!room) return;
    noteEvent(room, e);
    changeMessage(room, Number(e.target_seq), (m) => {
      const list = Array.isArray(m.reactions) ? m.reactions : (m.reactions = []);
      let r = list.find((x) => x.emoji === e.emoji);
      const added = e.state !== "removed";
      if (!r) {
        if (!added) return;
        r = { emoji: e.emoji, count: 0, user_ids: [] };
        list.push(r);
      }
      const ids = Array.isArray(r.user_ids) ? r.user_ids : (r.user_ids = []);
      const known = ids.includes(e.user_id);
      // Applied once even when a replay repeats what history already had.
      if (added && !known) {
        r.count = Number(r.count) + 1;
        if (ids.length < 20) ids.push(e.user_id);
      } else if (!added && (known || Number(r.count) > ids.length)) {
        r.count = Math.max(0, Number(r.count) - 1);
        r.user_ids = ids.filter((id) => id !== e.user_id);
      }
      m.reactions = list.filter((x) => Number(x.count) > 0);
    });
  }

  // Moves the read marker to the newest event shown, at most every READ_EVERY_MS.
  function markRead(room) {
    if (!room.joined || document.hidden || room.id !== state.current) return;
    room.unread = 0;
    renderRoomItem(room);
    // What was on screen now is what was read, even if the marker goes
    // out a moment later, after the user has moved on.
    room.seenSeq = Math.max(room.seenSeq || 0, room.maxSeq);
    if (room.seenSeq <= room.readSent || room.readTimer) return;
    room.readTimer = setTimeout(() => sendRead(room), READ_EVERY_MS);
  }

  function sendRead(room) {
    clearTimeout(room.readTimer);
    room.readTimer = 0;
    const seq = room.seenSeq;
    if (seq > room.readSent && room.joined && sendFrame({ read: { room_id: room.id, seq } })) {
      room.readSent = seq;
      if (seq > room.readSeq) room.readSeq = seq;
    }
  }

  // A marker still waiting for its timer goes out now: the user moved on
  // to another room, or the page is going away.
  function flushRead(room) {
    if (room && room.readTimer) sendRead(room);
  }

  function onAck(a) {
    const moderation = state.moderations.get(a.client_id);
    if (moderation) {
      state.moderations.delete(a.client_id);
      const room = state.rooms.get(moderation.roomId);
      if (room) roomNotice(room, moderation.text);
      return;
    }
    for (const room of state.rooms.values()) {
      const p = room.pending.get(a.client_id);
      if (!p) continue;
      dropPending(room, a.client_id);
      if (!room.bySeq.has(Number(a.seq))) {
        // The acked message itself may come a moment later: show it now.
        insertMessage(
          room,
          {
            id: a.message_id,
            room_id: room.id,
            seq: Number(a.seq),
            sender_id: state.me ? state.me.id : "",
            sender_name: state.me ? state.me.username : "",
            content: p.content,
            client_id: a.client_id,
            sent_at: new Date().toISOString(),
            reply_to: p.replyTo || 0,
          },
          true
        );
      }
      return;
    }
  }

  function onTyping(t) {
    const room = state.rooms.get(t.room_id);
    if (!room || (state.me && t.user_id === state.me.id)) return;
    const prev = room.typing.get(t.user_id);
    if (prev) clearTimeout(prev.timer);
    const timer = setTimeout(() => {
      room.typing.delete(t.user_id);
      if (room.id === state.current) renderTyping();
    }, TYPING_SHOW_MS);
    room.typing.set(t.user_id, { name: t.name || "Someone", timer });
    if (room.id === state.current) renderTyping();
  }

  function onPresence(p) {
    const room = state.rooms.get(p.room_id);
    if (!room) return;
    if (p.state === "joined") room.members.set(p.user_id, p.name);
    else if (p.state === "left") {
      room.members.delete(p.user_id);
      const t = room.typing.get(p.user_id);
      if (t) {
        clearTimeout(t.timer);
        room.typing.delete(p.user_id);
      }
    }
    if (room.id === state.current) {
      renderMembers();
      renderTyping();
    }
  }

  function onHistory(h) {
    const room = state.rooms.get(h.room_id);
    if (!room) return;
    const current = room.id === state.current;
    const sc = ui.scroller;
    const initial = !room.historyLoaded;
    const fromBottom = sc.scrollHeight - sc.scrollTop;
    room.historyInFlight = false;
    room.historyLoaded = true;
    room.hasMore = !!h.has_more;
    for (const m of h.messages || []) insertMessage(room, m, false, true);
    if (current) {
      placeDivider(room);
      markRead(room);
      renderHistoryBar();
      if (initial) scrollToBottom();
      else sc.scrollTop = sc.scrollHeight - fromBottom; // keep the view still
      renderEmpty();
    }
  }

  function onErrorFrame(e) {
    const code = e.code || "UNKNOWN";
    const text = e.message || code;
    if (e.client_id && state.moderations.has(e.client_id)) {
      state.moderations.delete(e.client_id);
      showSendError(text);
      return;
    }
    if (e.client_id) {
      for (const room of state.rooms.values()) {
        const p = room.pending.get(e.client_id);
        if (!p) continue;
        if (code === "UNAVAILABLE" || code === "DEADLINE_EXCEEDED") {
          // Transient: keep it pending, it is re-sent (same client_id) on reconnect
          // or by a click on it.
          p.sentGen = -1;
          markPending(p, "failed", "Not sent yet: " + text + " Click to retry.");
        } else {
          markPending(p, "failed", "Not sent: " + text + " Click to retry.");
          p.failed = true;
        }
        if (room.id === state.current) showSendError(text);
        return;
      }
      showSendError(text);
      return;
    }
    const room = e.room_id ? state.rooms.get(e.room_id) : null;
    if (room && room.joining && !room.everJoined) {
      // A first join that failed: take the room off the list.
      removeRoom(room);
      showSidebarError("Could not join “" + e.room_id + "”: " + text);
      return;
    }
    if (room && room.joining) {
      room.joining = false;
      showSidebarError("Could not rejoin “" + room.id + "”: " + text);
      renderRoomItem(room);
      return;
    }
    if (room && room.historyInFlight) {
      room.historyInFlight = false;
      room.hasMore = false;
      if (room.id === state.current) {
        renderHistoryBar();
        show(ui.historyStatus, "History unavailable: " + text);
      }
      return;
    }
    if (!e.room_id && state.shortJoins.length > 0 && /^(NOT_FOUND|PERMISSION_DENIED|INVALID_ARGUMENT|RESOURCE_EXHAUSTED)$/.test(code)) {
      state.shortJoins.shift();
      showSidebarError("Could not join: " + text);
      return;
    }
    if (code === "UNAUTHENTICATED") {
      // A refresh frame was refused; the socket keeps its old token until a
      // 4001 close, which leads to a fresh token and a reconnect.
      return;
    }
    if (room && room.id === state.current) showSendError(text);
    else banner(text);
  }

  // ---------------------------------------------------------------------------
  // Rooms
  // ---------------------------------------------------------------------------
  function addRoom(room) {
    state.rooms.set(room.id, room);
    renderRoomItem(room);
    renderListHints();
    saveRooms();
  }

  function removeRoom(room) {
    for (const t of room.typing.values()) clearTimeout(t.timer);
    clearTimeout(room.mutedTimer);
    state.rooms.delete(room.id);
    if (room.itemNode) room.itemNode.remove();
    renderListHints();
    if (state.current === room.id) {
      state.current = null;
      selectRoom(state.rooms.keys().next().value || null);
    }
    saveRooms();
  }

  function joinRoom(room) {
    if (room.joined || room.joining) return;
    if (!socketOpen()) return; // joined on open
    const join = { room_id: room.id };
    if (room.maxSeq > 0) join.since_seq = room.maxSeq;
    if (room.password) join.password = room.password;
    room.joining = true;
    sendFrame({ join });
    renderRoomItem(room);
  }

  function requestHistory(room, beforeSeq) {
    if (room.historyInFlight) return;
    if (!socketOpen()) return;
    room.historyInFlight = true;
    sendFrame({ get_chat_history: { room_id: room.id, limit: HISTORY_PAGE, before_seq: beforeSeq } });
    if (room.id === state.current) renderHistoryBar();
  }

  function loadOlder() {
    const room = currentRoom();
    if (!room || !room.historyLoaded || !room.hasMore || room.historyInFlight) return;
    requestHistory(room, room.seqs.length ? room.seqs[0] : 0);
  }

  function onJoinPublic(ev) {
    ev.preventDefault();
    show(ui.sidebarError, "");
    const id = ui.roomId.value.trim();
    if (!ROOM_ID_RE.test(id)) {
      showSidebarError("A room id is 1–64 letters, digits, “_”, “.” or “-”.");
      ui.roomId.focus();
      return;
    }
    ui.roomId.value = "";
    openRoom(id, {});
  }

  function openRoom(id, extra) {
    let room = state.rooms.get(id);
    if (!room) {
      room = newRoom(id, extra);
      addRoom(room);
    } else if (extra && extra.password) {
      room.password = extra.password;
    }
    selectRoom(id);
    closeSidebarOnNarrow();
    joinRoom(room); // or on the next open, if the socket is down
  }

  function onJoinPrivate(ev) {
    ev.preventDefault();
    show(ui.sidebarError, "");
    const raw = ui.privateRoom.value.trim();
    const password = ui.privatePassword.value;
    if (!raw) {
      showSidebarError("Enter the room's short code or id.");
      ui.privateRoom.focus();
      return;
    }
    if (!password) {
      showSidebarError("Enter the room's password.");
      ui.privatePassword.focus();
      return;
    }
    const code = raw.toUpperCase();
    if (SHORT_CODE_RE.test(code) && !state.rooms.has(raw)) {
      if (!socketOpen()) {
        showSidebarError("Not connected yet; try again in a moment.");
        return;
      }
      state.shortJoins.push({ short_code: code, password });
      sendFrame({ join: { short_code: code, password } });
    } else if (ROOM_ID_RE.test(raw)) {
      openRoom(raw, { password, isPrivate: true });
    } else {
      showSidebarError("That is neither a 6-character short code nor a valid room id.");
      return;
    }
    ui.privateRoom.value = "";
    ui.privatePassword.value = "";
  }

  async function onCreate(ev) {
    ev.preventDefault();
    show(ui.sidebarError, "");
    const name = ui.createName.value.trim();
    const password = ui.createPassword.value;
    if (!name) {
      showSidebarError("Give the new room a name.");
      ui.createName.focus();
      return;
    }
    const btn = ui.createForm.querySelector("button");
    btn.disabled = true;
    try {
      const body = { name };
      if (password) body.password = password;
      const r = await api("POST", "/rooms", body);
      ui.createName.value = "";
      ui.createPassword.value = "";
      renderCreateResult(r);
      openRoom(r.id, { name: r.name || name, shortCode: r.short_code || "", isPrivate: !!r.private, password });
      const room = state.rooms.get(r.id);
      if (room) {
        room.name = r.name || name;
        room.shortCode = r.short_code || "";
        room.isPrivate = !!r.private;
        renderRoomItem(room);
        renderRoomView();
        saveRooms();
      }
    } catch (e) {
      showSidebarError("Could not create the room: " + e.message);
    } finally {
      btn.disabled = false;
    }
  }

  function renderCreateResult(r) {
    ui.createResult.textContent = "";
    ui.createResult.append(
      el("p", { text: "Created “" + (r.name || "") + "”" + (r.private ? " (private)" : "") + "." }),
      el("p", {}, ["Room id: ", el("code", { "data-testid": "created-room-id", text: r.id })]),
      el("p", {}, ["Short code: ", el("code", { "data-testid": "created-short-code", text: r.short_code || "" })])
    );
    ui.createResult.hidden = false;
  }

  function onLeave() {
    const room = currentRoom();
    if (!room) return;
    if (!sendFrame({ leave: { room_id: room.id } })) {
      state.pendingLeaves.add(room.id);
      removeRoom(room);
      return;
    }
    // Take it off at once; the "left" answer is then a no-op.
    removeRoom(room);
  }

  function currentRoom() {
    return state.current ? state.rooms.get(state.current) || null : null;
  }

  function selectRoom(id) {
    const prev = currentRoom();
    if (prev && prev.id !== id) flushRead(prev);
    if (!prev || prev.id !== id) {
      closeMemberMenu();
      show(ui.roomNotice, "");
      if (!ui.settings.hidden) toggleSettings(false);
    }
    if (prev && prev.id !== id) {
      prev.scrollTop = ui.scroller.scrollTop;
      prev.stickBottom = nearBottom();
    }
    state.current = id && state.rooms.has(id) ? id : null;
    const room = currentRoom();
    if (state.composing && (!room || state.composing.roomId !== room.id)) setComposing(null);
    if (room) {
      room.dividerSeq = room.readSeq;
      placeDivider(room);
      room.unread = 0;
      renderRoomItem(room);
      markRead(room);
    }
    for (const r of state.rooms.values()) {
      if (r.itemNode) r.itemNode.classList.toggle("active", r.id === state.current);
      if (r.itemNode) {
        const b = r.itemNode.querySelector("button");
        if (r.id === state.current) b.setAttribute("aria-current", "true");
        else b.removeAttribute("aria-current");
      }
    }
    ui.listSlot.textContent = "";
    if (room) ui.listSlot.append(room.list);
    renderPendingList();
    renderRoomView();
    if (room) {
      if (room.stickBottom) scrollToBottom();
      else ui.scroller.scrollTop = room.scrollTop;
    }
    show(ui.sendError, "");
    saveRooms();
  }

  // ---------------------------------------------------------------------------
  // Messages
  // ---------------------------------------------------------------------------
  function bisect(arr, x) {
    let lo = 0;
    let hi = arr.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (arr[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // Adds a message to a room, de-duplicated by seq. Returns true if it is new.
  function insertMessage(room, m, provisional, fromHistory) {
    const seq = Number(m.seq);
    if (!Number.isFinite(seq) || seq <= 0) return false;
    const existing = room.bySeq.get(seq);
    if (existing) {
      if (existing.provisional && !provisional) {
        existing.provisional = false;
        existing.msg = m;
        const fresh = messageNode(m, "sent");
        existing.node.replaceWith(fresh);
        existing.node = fresh;
        placeInSequence(room, bisect(room.seqs, seq));
      }
      return false;
    }
    const current = room.id === state.current;
    const stick = current && !fromHistory && nearBottom();
    const node = messageNode(m, "sent");
    const idx = bisect(room.seqs, seq);
    let next = idx < room.seqs.length ? room.bySeq.get(room.seqs[idx]).node : null;
    if (next && next.previousSibling && next.previousSibling.classList.contains("unread-divider") && seq <= room.dividerSeq) {
      next = next.previousSibling;
    }
    room.seqs.splice(idx, 0, seq);
    room.bySeq.set(seq, { msg: m, node, provisional: !!provisional });
    room.list.insertBefore(node, next);
    placeInSequence(room, idx);
    if (seq > room.maxSeq) room.maxSeq = seq;
    if (current) {
      renderEmpty();
      const own = state.me && m.sender_id === state.me.id;
      if (!fromHistory && (stick || own)) scrollToBottom();
    }
    return true;
  }

  // A "new" line before the first message after the read marker the room
  // was opened with.
  function placeDivider(room) {
    const old = room.list.querySelector(".unread-divider");
    if (old) old.remove();
    const idx = bisect(room.seqs, room.dividerSeq + 1);
    if (room.dividerSeq < 0 || idx >= room.seqs.length) return;
    const first = room.bySeq.get(room.seqs[idx]);
    if (!first || (state.me && first.msg.sender_id === state.me.id && idx === room.seqs.length - 1)) return;
    room.list.insertBefore(
      el("li", { className: "unread-divider", "data-testid": "unread-divider", "aria-label": "New messages" }, [el("span", { text: "New" })]),
      first.node
    );
  }

  function resetMessages(room) {
    room.seqs = [];
    room.bySeq = new Map();
    room.list.textContent = "";
  }

  function formatTime(iso) {
    const d = new Date(iso);
    if (isNaN(d.getTime())) return { short: "", full: "" };
    const now = new Date();
    const sameDay = d.toDateString() === now.toDateString();
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const short = sameDay ? time : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
    return { short, full: d.toLocaleString() };
  }

  function messageNode(m, status) {
    const own = !!(state.me && m.sender_id === state.me.id);
    const t = formatTime(m.sent_at);
    const room = state.rooms.get(m.room_id);
    const seq = Number(m.seq);
    const children = [
      el("div", { className: "meta" }, [
        el("span", { className: "sender", "data-testid": "message-sender", text: m.sender_name || "unknown" }),
        el("time", { className: "time", "data-testid": "message-time", datetime: m.sent_at, title: t.full, text: t.short }),
        m.edited_at && !m.deleted ? el("span", { className: "mark", "data-testid": "message-edited", title: formatTime(m.edited_at).full, text: "edited" }) : null,
      ]),
    ];
    const replyTo = Number(m.reply_to) || 0;
    if (replyTo > 0) children.push(replyQuote(room, replyTo));
    if (m.deleted) {
      children.push(el("div", { className: "content deleted", "data-testid": "message-deleted", text: "Message deleted" }));
    } else {
      if (m.content) children.push(contentNode(m.content));
      const files = attachmentsNode(m.attachments);
      if (files) children.push(files);
      children.push(reactionRow(room, m));
    }
    const li = el(
      "li",
      {
        className: "msg" + (own ? " own" : "") + (m.deleted ? " is-deleted" : ""),
        "data-testid": "message-item",
        "data-seq": m.seq,
        "data-client-id": m.client_id || "",
        "data-own": own ? "true" : "false",
        "data-status": status,
        "data-sender-id": m.sender_id,
      },
      children
    );
    if (!m.deleted && seq > 0) li.append(messageActions(room, m, own));
    return li;
  }

  // Text with its http(s) links made clickable: built from text nodes and
  // anchors, never from HTML, and links open apart from the page.
  function contentNode(text) {
    const div = el("div", { className: "content", "data-testid": "message-content" });
    let at = 0;
    for (const match of text.matchAll(URL_RE)) {
      // A sentence's closing punctuation is not part of the link.
      const url = match[0].replace(/[.,;:!?)\]]+$/, "");
      if (match.index > at) div.append(document.createTextNode(text.slice(at, match.index)));
      div.append(el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: url }));
      at = match.index + url.length;
    }
    if (at < text.length) div.append(document.createTextNode(text.slice(at)));
    return div;
  }

  // A message's place among its neighbours: a day line before the first
  // of each day, and no header for one following the same sender's within
  // a few minutes (the header stays for screen readers).
  function placeInSequence(room, index) {
    for (const i of [index, index + 1]) {
      if (i < 0 || i >= room.seqs.length) continue;
      const entry = room.bySeq.get(room.seqs[i]);
      const prev = i > 0 ? room.bySeq.get(room.seqs[i - 1]).msg : null;
      const at = new Date(entry.msg.sent_at);
      const before = prev ? new Date(prev.sent_at) : null;
      const newDay = !before || at.toDateString() !== before.toDateString();
      if (newDay) entry.node.dataset.day = dayLabel(at);
      else delete entry.node.dataset.day;
      const grouped =
        !newDay && prev && prev.sender_id === entry.msg.sender_id && !Number(entry.msg.reply_to) && at - before < GROUP_WITHIN_MS;
      entry.node.classList.toggle("grouped", !!grouped);
    }
  }

  function dayLabel(d) {
    if (isNaN(d.getTime())) return "";
    const today = new Date();
    const yesterday = new Date(today.getTime() - 86400000);
    if (d.toDateString() === today.toDateString()) return "Today";
    if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
    return d.toLocaleDateString([], { weekday: "long", month: "long", day: "numeric", year: d.getFullYear() === today.getFullYear() ? undefined : "numeric" });
  }

  function replyQuote(room, seq) {
    const target = room && room.bySeq.get(seq);
    let text = "an earlier message";
    if (target) {
      const tm = target.msg;
      text = (tm.sender_name || "unknown") + ": " + (tm.deleted ? "message deleted" : summary(tm));
    }
    const quote = el("button", { type: "button", className: "reply-quote", "data-testid": "message-reply-quote", title: "Show the message", text });
    quote.addEventListener("click", () => {
      const t = room && room.bySeq.get(seq);
      if (t) {
        t.node.scrollIntoView({ block: "center", behavior: "smooth" });
        t.node.classList.add("flash");
        setTimeout(() => t.node.classList.remove("flash"), 1200);
      }
    });
    return quote;
  }

  function reactionRow(room, m) {
    const row = el("div", { className: "reactions", "data-testid": "message-reactions" });
    for (const r of Array.isArray(m.reactions) ? m.reactions : []) {
      const mine = !!(state.me && Array.isArray(r.user_ids) && r.user_ids.includes(state.me.id));
      const chip = el(
        "button",
        {
          type: "button",
          className: "reaction" + (mine ? " mine" : ""),
          "data-testid": "reaction-chip",
          "data-emoji": r.emoji,
          "data-count": r.count,
          "data-mine": mine ? "true" : "false",
          "aria-pressed": mine ? "true" : "false",
          title: mine ? "Take your reaction back" : "React with " + r.emoji,
        },
        [el("span", { className: "emoji", text: r.emoji }), el("span", { className: "n", text: String(r.count) })]
      );
      chip.addEventListener("click", () => sendReaction(room, m, r.emoji, mine));
      row.append(chip);
    }
    return row;
  }

  function messageActions(room, m, own) {
    const bar = el("div", { className: "actions-bar" });
    const action = (label, testid, fn) => {
      const b = el("button", { type: "button", className: "act", "data-testid": testid, text: label });
      b.addEventListener("click", (ev) => {
        ev.stopPropagation();
        fn(b);
      });
      bar.append(b);
      return b;
    };
    action("Reply", "action-reply", () => setComposing({ mode: "reply", roomId: room.id, seq: Number(m.seq) }));
    action("React", "action-react", (b) => togglePicker(bar, room, m, b));
    if (own) {
      action("Edit", "action-edit", () => {
        setComposing({ mode: "edit", roomId: room.id, seq: Number(m.seq) });
        ui.input.value = m.content;
        autoGrow();
        ui.input.focus();
      });
      action("Delete", "action-delete", (b) => {
        if (b.dataset.confirm !== "true") {
          b.dataset.confirm = "true";
          b.textContent = "Delete?";
          setTimeout(() => {
            b.dataset.confirm = "";
            b.textContent = "Delete";
          }, CONFIRM_MS);
          return;
        }
        sendFrame({ delete: { room_id: room.id, seq: Number(m.seq), client_id: newClientId() } });
      });
    }
    return bar;
  }

  function togglePicker(bar, room, m, button) {
    const open = bar.querySelector(".picker");
    if (open) {
      open.remove();
      button.setAttribute("aria-expanded", "false");
      return;
    }
    const picker = el("div", { className: "picker", "data-testid": "react-picker", role: "group", "aria-label": "Reactions" });
    for (const emoji of REACTIONS) {
      const b = el("button", { type: "button", className: "pick", "data-testid": "react-option", "data-emoji": emoji, text: emoji });
      b.addEventListener("click", (ev) => {
        ev.stopPropagation();
        picker.remove();
        const mine = (m.reactions || []).some((r) => r.emoji === emoji && state.me && (r.user_ids || []).includes(state.me.id));
        sendReaction(room, m, emoji, mine);
      });
      picker.append(b);
    }
    button.setAttribute("aria-expanded", "true");
    bar.append(picker);
  }

  function sendReaction(room, m, emoji, remove) {
    if (!room || !room.joined) {
      showSendError("Not connected; try again in a moment.");
      return;
    }
    sendFrame({ react: { room_id: room.id, seq: Number(m.seq), emoji, remove: !!remove, client_id: newClientId() } });
  }

  // Shows what the composer will do next: reply to or edit a message.
  function setComposing(c) {
    const was = state.composing;
    state.composing = c;
    if (!c) {
      ui.composeContext.hidden = true;
      if (was && was.mode === "edit") {
        ui.input.value = "";
        autoGrow();
      }
      return;
    }
    const room = state.rooms.get(c.roomId);
    const target = room && room.bySeq.get(c.seq);
    const who = target ? target.msg.sender_name || "unknown" : "a message";
    ui.composeContextText.textContent =
      c.mode === "edit" ? "Editing your message" : "Replying to " + who + (target ? ": " + summary(target.msg) : "");
    ui.composeContext.dataset.mode = c.mode;
    ui.composeContext.hidden = false;
    ui.input.focus();
  }

  function pendingNode(clientId, content, attachments) {
    const name = state.me ? state.me.username : "";
    return el(
      "li",
      {
        className: "msg own pending",
        "data-testid": "message-item",
        "data-client-id": clientId,
        "data-own": "true",
        "data-status": "pending",
        title: "Sending…",
      },
      [
        el("div", { className: "meta" }, [
          el("span", { className: "sender", "data-testid": "message-sender", text: name }),
          el("span", { className: "time status-note", text: "sending…" }),
        ]),
        content ? contentNode(content) : null,
        attachmentsNode(attachments),
        el("div", { className: "failed-actions", "data-testid": "failed-actions" }, [
          el("span", { className: "failed-note", "data-testid": "failed-note" }),
          el("button", { type: "button", className: "btn btn-quiet small", "data-action": "retry", "data-testid": "failed-retry", text: "Retry" }),
          el("button", { type: "button", className: "btn btn-quiet small", "data-action": "edit", "data-testid": "failed-edit", text: "Edit" }),
          el("button", { type: "button", className: "btn btn-quiet small", "data-action": "dismiss", "data-testid": "failed-dismiss", text: "Dismiss" }),
        ]),
      ]
    );
  }

  function markPending(p, status, note) {
    p.node.dataset.status = status;
    p.node.classList.toggle("failed", status === "failed");
    p.node.title = note || "";
    const n = p.node.querySelector(".status-note");
    if (n) n.textContent = status === "failed" ? "not sent" : "sending…";
    const why = p.node.querySelector(".failed-note");
    if (why) why.textContent = status === "failed" ? note || "Not sent." : "";
  }

  // A failed message is never left pinned: send it again, take it back into
  // the composer to change it, or let it go.
  function onPendingAction(room, clientId, action) {
    const p = room.pending.get(clientId);
    if (!p || p.node.dataset.status !== "failed") return;
    if (action === "retry") retryPending(room, clientId);
    else if (action === "edit") {
      dropPending(room, clientId);
      ui.input.value = p.content;
      autoGrow();
      onInput();
      ui.input.focus();
    } else if (action === "dismiss") {
      dropPending(room, clientId);
      renderEmpty();
    }
  }

  function newClientId() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    state.clientCounter++;
    return "c-" + Date.now().toString(36) + "-" + state.clientCounter + "-" + Math.random().toString(36).slice(2, 10);
  }

  function onSend(ev) {
    ev.preventDefault();
    const room = currentRoom();
    if (!room) return;
    const content = ui.input.value;
    if (state.uploads.some((u) => u.status === "uploading")) {
      showSendError("Wait for the files to finish uploading.");
      return;
    }
    if (state.uploads.some((u) => u.status === "failed")) {
      showSendError("Remove the files that could not be uploaded first.");
      return;
    }
    const attachments = state.uploads.map((u) => u.attachment);
    const editing = state.composing && state.composing.mode === "edit";
    if (!content.trim() && (editing || attachments.length === 0)) {
      showSendError("Type a message first.");
      return;
    }
    if (byteLength(content) > MAX_CONTENT_BYTES) {
      showSendError("That message is too long: at most " + MAX_CONTENT_BYTES + " bytes.");
      return;
    }
    show(ui.sendError, "");
    const composing = state.composing && state.composing.roomId === room.id ? state.composing : null;
    if (composing && composing.mode === "edit") {
      if (sendFrame({ edit: { room_id: room.id, seq: composing.seq, content, client_id: newClientId() } })) {
        ui.input.value = "";
        autoGrow();
        renderByteCounter();
        setComposing(null);
      } else {
        showSendError("Not connected; try again in a moment.");
      }
      return;
    }
    const replyTo = composing && composing.mode === "reply" ? composing.seq : 0;
    setComposing(null);
    const clientId = newClientId();
    const p = { content, replyTo, attachments, node: pendingNode(clientId, content, attachments), sentGen: -1, failed: false, roomId: room.id, clientId };
    clearUploads();
    p.node.addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (button) onPendingAction(room, clientId, button.dataset.action);
    });
    room.pending.set(clientId, p);
    ui.pendingList.append(p.node);
    renderEmpty();
    scrollToBottom();
    ui.input.value = "";
    autoGrow();
    renderByteCounter();
    state.lastTypingSent = 0; // the next keystroke starts a new "typing"
    trySend(room, p);
    ui.input.focus();
  }

  function trySend(room, p) {
    if (!room.joined) return; // flushed when the join answer comes
    const send = { room_id: room.id, content: p.content, client_id: p.clientId };
    if (p.replyTo) send.reply_to = p.replyTo;
    if (p.attachments && p.attachments.length) send.attachments = p.attachments.map((a) => a.id);
    if (sendFrame({ send })) {
      p.sentGen = state.connGen;
    }
  }

  function retryPending(room, clientId) {
    const p = room.pending.get(clientId);
    if (!p || p.node.dataset.status !== "failed") return;
    p.failed = false;
    p.sentGen = -1;
    markPending(p, "pending", "Sending…");
    trySend(room, p);
  }

  // (Re)sends, with their original client_id, what never got an ack.
  function flushPending(room) {
    for (const p of room.pending.values()) {
      if (p.failed || p.sentGen === state.connGen) continue;
      markPending(p, "pending", "Sending…");
      trySend(room, p);
    }
  }

  function dropPending(room, clientId) {
    const p = room.pending.get(clientId);
    if (!p) return;
    room.pending.delete(clientId);
    p.node.remove();
  }

  function renderPendingList() {
    ui.pendingList.textContent = "";
    const room = currentRoom();
    if (!room) return;
    for (const p of room.pending.values()) ui.pendingList.append(p.node);
  }

  // ---------------------------------------------------------------------------
  // Attachments
  // ---------------------------------------------------------------------------
  function formatBytes(n) {
    const units = ["B", "KB", "MB", "GB"];
    let size = Number(n) || 0;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) {
      size /= 1024;
      unit++;
    }
    return (unit === 0 ? String(size) : size.toFixed(size < 10 ? 1 : 0)) + " " + units[unit];
  }

  // A message in one line: its text, else the names of its files.
  function summary(m) {
    if (m.content) return m.content;
    const files = Array.isArray(m.attachments) ? m.attachments : [];
    return files.length ? "📎 " + files.map((a) => a.filename || "file").join(", ") : "";
  }

  // The bytes of an attachment (or its thumbnail) by URL, for <img> and
  // links, which cannot send headers: the token rides in the query.
  function attachmentUrl(id, thumbnail) {
    return state.client.attachmentUrl(id, { thumbnail });
  }

  function fileLink(a) {
    const link = el("a", {
      className: "att-file",
      href: attachmentUrl(a.id),
      download: a.filename || "file",
      rel: "noopener",
      "data-testid": "attachment-file",
      title: "Download " + (a.filename || "file"),
    }, [
      el("span", { className: "att-icon", "aria-hidden": "true", text: "📄" }),
      el("span", { className: "att-name", text: a.filename || "file" }),
      el("span", { className: "att-size", text: formatBytes(a.size) }),
    ]);
    // The token in the URL may have been refreshed since it was drawn.
    link.addEventListener("click", () => {
      link.href = attachmentUrl(a.id);
    });
    return link;
  }

  // Images as thumbnails (sized before they load, so the list does not
  // jump) that open the full image; everything else as a download link.
  function attachmentsNode(list) {
    if (!Array.isArray(list) || list.length === 0) return null;
    const box = el("div", { className: "attachments", "data-testid": "message-attachments" });
    for (const a of list) {
      const width = Number(a.width) || 0;
      const height = Number(a.height) || 0;
      if (!SHOWN_INLINE.test(a.content_type || "") || width <= 0 || height <= 0) {
        box.append(fileLink(a));
        continue;
      }
      const scale = Math.min(1, THUMBNAIL_BOX / Math.max(width, height));
      const img = el("img", {
        src: attachmentUrl(a.id, true),
        alt: a.filename || "image",
        width: Math.max(1, Math.round(width * scale)),
        height: Math.max(1, Math.round(height * scale)),
        loading: "lazy",
        decoding: "async",
        "data-testid": "attachment-thumbnail",
      });
      const link = el("a", {
        className: "att-image",
        href: attachmentUrl(a.id),
        target: "_blank",
        rel: "noopener noreferrer",
        title: (a.filename || "image") + " (" + width + "×" + height + ", " + formatBytes(a.size) + ")",
        "data-testid": "attachment-image",
      }, [img]);
      link.addEventListener("click", () => {
        link.href = attachmentUrl(a.id);
      });
      // No thumbnail after all: a plain link instead.
      img.addEventListener("error", () => link.replaceWith(fileLink(a)), { once: true });
      box.append(link);
    }
    return box;
  }

  function addFiles(files) {
    const room = currentRoom();
    if (!room || !state.loggedIn || room.muted) return;
    for (const file of files) {
      if (state.uploads.length >= MAX_ATTACHMENTS) {
        showSendError("A message carries at most " + MAX_ATTACHMENTS + " files.");
        break;
      }
      state.uploadCounter++;
      const u = { key: state.uploadCounter, file, status: "uploading", attachment: null, abort: null, node: null, error: "" };
      u.node = trayNode(u);
      state.uploads.push(u);
      ui.tray.append(u.node);
      upload(u);
    }
    ui.tray.hidden = state.uploads.length === 0;
  }

  function trayNode(u) {
    const remove = el("button", { type: "button", className: "btn btn-quiet small", "aria-label": "Remove " + u.file.name, "data-testid": "attachment-remove", text: "✕" });
    remove.addEventListener("click", () => removeUpload(u));
    return el("li", { className: "tray-item", "data-testid": "attachment-upload", "data-status": "uploading" }, [
      el("span", { className: "att-name", text: u.file.name || "pasted image" }),
      el("span", { className: "att-size", text: formatBytes(u.file.size) }),
      el("progress", { max: 100, value: 0, "data-testid": "attachment-progress" }),
      el("span", { className: "tray-note", "data-testid": "attachment-note" }),
      remove,
    ]);
  }

  function setUploadStatus(u, status, note) {
    u.status = status;
    u.node.dataset.status = status;
    u.node.querySelector(".tray-note").textContent = note || "";
    if (status === "done") u.node.querySelector("progress").value = 100;
  }

  // The client reports progress as the bytes leave, and renews a token
  // the gateway refused before it gives up.
  function upload(u) {
    const abort = new AbortController();
    u.abort = abort;
    const name = u.file.name || "pasted-image." + ((u.file.type || "").split("/")[1] || "bin");
    const bar = u.node.querySelector("progress");
    state.client
      .upload(u.file, {
        filename: name,
        contentType: u.file.type || "application/octet-stream",
        signal: abort.signal,
        onProgress: (sent, total) => {
          if (total > 0) bar.value = Math.round((sent / total) * 100);
        },
      })
      .then(
        (attachment) => {
          if (u.abort !== abort) return;
          u.attachment = attachment;
          setUploadStatus(u, "done", "");
        },
        (e) => {
          if (u.abort !== abort || e.code === "CANCELLED") return;
          const note =
            e.status === 413 ? "Too large" : e.code === "NETWORK" ? "Network error" : e.status === 401 ? "Signed out" : e.message || "Upload failed";
          setUploadStatus(u, "failed", note);
        }
      );
  }

  function removeUpload(u) {
    if (u.abort && u.status === "uploading") u.abort.abort();
    u.abort = null;
    u.node.remove();
    state.uploads = state.uploads.filter((x) => x !== u);
    ui.tray.hidden = state.uploads.length === 0;
  }

  // After a send the files belong to the message; the tray starts empty.
  function clearUploads() {
    for (const u of state.uploads) u.node.remove();
    state.uploads = [];
    ui.tray.hidden = true;
  }

  function hasFiles(ev) {
    return !!ev.dataTransfer && [...(ev.dataTransfer.types || [])].includes("Files");
  }

  // ---------------------------------------------------------------------------
  // Typing
  // ---------------------------------------------------------------------------
  function byteLength(text) {
    return new TextEncoder().encode(text).length;
  }

  // Bytes are what the server limits: shown as the message grows, and the
  // send button is off past the limit.
  function renderByteCounter() {
    const bytes = byteLength(ui.input.value);
    const over = bytes > MAX_CONTENT_BYTES;
    ui.byteCounter.textContent = bytes > 0 ? bytes + " / " + MAX_CONTENT_BYTES : "";
    ui.byteCounter.classList.toggle("over", over);
    ui.byteCounter.title = over ? "Too long: shorten the message to send it" : "Bytes used of the message limit";
    const room = currentRoom();
    ui.send.disabled = !room || !state.loggedIn || room.muted || over;
  }

  function onInput() {
    autoGrow();
    renderByteCounter();
    const room = currentRoom();
    if (!room || !room.joined || !ui.input.value.trim()) return;
    const now = Date.now();
    if (now - state.lastTypingSent < TYPING_SEND_EVERY_MS) return;
    if (sendFrame({ typing: { room_id: room.id } })) state.lastTypingSent = now;
  }

  function clearTyping(room) {
    for (const t of room.typing.values()) clearTimeout(t.timer);
    room.typing.clear();
    if (room.id === state.current) renderTyping();
  }

  function renderTyping() {
    const room = currentRoom();
    const names = room ? [...room.typing.values()].map((t) => t.name) : [];
    let text = "";
    if (names.length === 1) text = names[0] + " is typing…";
    else if (names.length === 2) text = names[0] + " and " + names[1] + " are typing…";
    else if (names.length > 2) text = names.length + " people are typing…";
    ui.typing.textContent = text;
  }

  // ---------------------------------------------------------------------------
  // Rendering
  // ---------------------------------------------------------------------------
  // "#" for a public room, a small padlock for a private one (no emoji font needed).
  function roomIcon(room) {
    const span = el("span", { className: "room-icon", "aria-hidden": "true" });
    if (room.direct) {
      span.textContent = "@";
      span.title = "Direct conversation";
      return span;
    }
    if (!room.isPrivate) {
      span.textContent = "#";
      return span;
    }
    span.title = "Private room";
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 16 16");
    svg.setAttribute("width", "13");
    svg.setAttribute("height", "13");
    const body = document.createElementNS(NS, "rect");
    for (const [k, v] of [["x", "3"], ["y", "7"], ["width", "10"], ["height", "8"], ["rx", "1.5"], ["fill", "currentColor"]]) {
      body.setAttribute(k, v);
    }
    const shackle = document.createElementNS(NS, "path");
    shackle.setAttribute("d", "M5 7V5a3 3 0 0 1 6 0v2");
    shackle.setAttribute("fill", "none");
    shackle.setAttribute("stroke", "currentColor");
    shackle.setAttribute("stroke-width", "1.6");
    svg.append(body, shackle);
    span.append(svg);
    return span;
  }

  function renderRoomItem(room) {
    if (!room.itemNode) {
      const btn = el("button", { type: "button", className: "room-btn" });
      btn.addEventListener("click", () => {
        selectRoom(room.id);
        closeSidebarOnNarrow();
      });
      room.itemNode = el("li", { className: "room-item", "data-testid": "room-item", "data-room-id": room.id }, [btn]);
    }
    const list = room.direct ? ui.dmList : ui.roomList;
    if (room.itemNode.parentNode !== list) list.append(room.itemNode);
    const btn = room.itemNode.querySelector("button");
    btn.textContent = "";
    btn.append(
      roomIcon(room),
      el("span", { className: "room-name", text: room.name || room.id })
    );
    if (room.unread > 0) {
      btn.append(
        el("span", { className: "badge", "data-testid": "unread-badge", "aria-label": room.unread + " unread", text: room.unread > 99 ? "99+" : String(room.unread) })
      );
    }
    btn.title = room.name ? room.name + " (" + room.id + ")" : room.id;
    room.itemNode.classList.toggle("active", room.id === state.current);
    room.itemNode.classList.toggle("joining", !room.joined);
    renderListHints();
  }

  function renderListHints() {
    let dms = 0;
    for (const r of state.rooms.values()) if (r.direct) dms++;
    ui.noRooms.hidden = state.rooms.size - dms > 0;
    ui.noDms.hidden = dms > 0;
  }

  function renderRoomView() {
    const room = currentRoom();
    ui.roomTitle.textContent = "";
    if (room) {
      ui.roomTitle.append(
        roomIcon(room),
        el("span", { text: room.name || room.id })
      );
      if (room.shortCode) {
        ui.roomTitle.append(el("span", { className: "code-chip", title: "Short join code", text: room.shortCode }));
      }
    } else {
      ui.roomTitle.textContent = "No room selected";
    }
    ui.leave.hidden = !room;
    if (!room || (ui.memberMenu.dataset.userId && !room.members.has(ui.memberMenu.dataset.userId))) closeMemberMenu();
    ui.settingsButton.hidden = !canManage(room);
    if (ui.settingsButton.hidden) toggleSettings(false);
    ui.chatView.classList.toggle("has-room", !!room);
    $("room").classList.toggle("no-room", !room);
    $("members").hidden = !room;
    renderMembers();
    renderTyping();
    renderHistoryBar();
    renderEmpty();
    updateComposer();
  }

  function renderMembers() {
    const room = currentRoom();
    ui.memberList.textContent = "";
    if (!room) {
      ui.memberCount.textContent = "";
      return;
    }
    const list = [...room.members.entries()].sort((a, b) => a[1].localeCompare(b[1]));
    for (const [id, name] of list) {
      const self = state.me && id === state.me.id;
      const nameNode = el("span", { className: "member-name", "data-testid": "member-name", text: name });
      const item = el("li", { className: "member" + (self ? " self" : ""), "data-testid": "member-item", "data-user-id": id }, [
        el("span", { className: "dot", "aria-hidden": "true" }),
        self
          ? nameNode
          : el("button", { type: "button", className: "member-btn", "data-testid": "member-button", "aria-haspopup": "menu", title: "Message or moderate " + name }, [nameNode]),
        self ? el("span", { className: "muted small", text: " (you)" }) : null,
      ]);
      if (!self) item.querySelector("button").addEventListener("click", () => toggleMemberMenu(room, id, name));
      ui.memberList.append(item);
    }
    ui.memberCount.textContent = room.joined ? "(" + list.length + ")" : "";
    // While disconnected the list is the last one known: shown dimmed.
    ui.memberList.classList.toggle("stale", !room.joined);
  }

  function isAdmin() {
    const roles = accessToken() ? tokenClaims(accessToken()).roles : null;
    return Array.isArray(roles) && roles.includes("admin");
  }

  function canModerate(room) {
    return !!room && !room.direct && (room.role === "owner" || room.role === "moderator" || isAdmin());
  }

  function canManage(room) {
    return !!room && !room.direct && (room.role === "owner" || isAdmin());
  }

  // A member's menu: a direct conversation, and the moderation the user's
  // role allows (the server checks again and says why when it refuses).
  function toggleMemberMenu(room, userId, name) {
    const menu = ui.memberMenu;
    const open = !menu.hidden && menu.dataset.userId === userId;
    closeMemberMenu();
    if (open) return;
    menu.dataset.userId = userId;
    const action = (label, testid, fn, extraClass) => {
      const b = el("button", { type: "button", className: "btn small " + (extraClass || ""), role: "menuitem", "data-testid": testid, text: label });
      b.addEventListener("click", () => {
        closeMemberMenu();
        fn();
      });
      menu.append(b);
    };
    menu.append(el("strong", { className: "member-menu-name", text: name }));
    action("Message", "member-dm", () => openDirect(userId, name), "btn-primary");
    if (canModerate(room)) {
      const duration = el("select", { className: "small", "data-testid": "member-duration", "aria-label": "How long a mute or ban lasts" });
      for (const [value, label] of DURATIONS) duration.append(el("option", { value, text: label }));
      const timed = () => (duration.value ? { duration: duration.value } : {});
      action("Mute", "member-mute", () => moderate(room, userId, name, "mute", timed()));
      action("Unmute", "member-unmute", () => moderate(room, userId, name, "unmute", {}));
      action("Kick", "member-kick", () => moderate(room, userId, name, "kick", {}));
      action("Ban", "member-ban", () => moderate(room, userId, name, "ban", timed()), "btn-danger");
      menu.append(duration);
    }
    if (canManage(room)) {
      action("Make moderator", "member-promote", () => moderate(room, userId, name, "set_role", { role: "moderator" }));
      action("Make member", "member-demote", () => moderate(room, userId, name, "set_role", { role: "member" }));
    }
    const close = el("button", { type: "button", className: "btn btn-quiet small", "aria-label": "Close", text: "✕" });
    close.addEventListener("click", closeMemberMenu);
    menu.append(close);
    menu.hidden = false;
  }

  function closeMemberMenu() {
    ui.memberMenu.hidden = true;
    ui.memberMenu.textContent = "";
    delete ui.memberMenu.dataset.userId;
  }

  function moderate(room, userId, name, action, extra) {
    const clientId = newClientId();
    const frame = Object.assign({ room_id: room.id, user_id: userId, action, client_id: clientId }, extra);
    const what =
      action === "set_role" ? "made " + (extra.role === "moderator" ? "a moderator" : "a member") : ACTION_TEXT[action] || action;
    state.moderations.set(clientId, { roomId: room.id, text: name + " was " + what + "." });
    if (!sendFrame({ moderate: frame })) {
      state.moderations.delete(clientId);
      showSendError("Not connected; try again in a moment.");
    }
  }

  async function openDirect(userId, name) {
    try {
      const r = await api("POST", "/dms", { user_id: userId });
      openRoom(r.id, { name: r.name || name, isPrivate: true, direct: true });
      const room = state.rooms.get(r.id);
      if (room) {
        room.direct = true;
        room.name = r.name || name;
        renderRoomItem(room);
        renderRoomView();
        saveRooms();
      }
    } catch (e) {
      showSendError("Could not open a conversation with " + name + ": " + e.message);
    }
  }

  function toggleSettings(open) {
    const room = currentRoom();
    ui.settings.hidden = !open;
    ui.settingsButton.setAttribute("aria-expanded", open ? "true" : "false");
    show(ui.settingsError, "");
    if (open && room) {
      ui.settingsName.value = room.name || room.id;
      ui.settingsPassword.value = "";
    }
  }

  async function updateRoom(body) {
    const room = currentRoom();
    if (!room) return;
    show(ui.settingsError, "");
    try {
      const r = await api("PATCH", "/rooms/" + encodeURIComponent(room.id), body);
      room.name = r.name || room.name;
      room.isPrivate = !!r.private;
      if ("password" in body) room.password = body.password;
      renderRoomItem(room);
      renderRoomView();
      saveRooms();
      toggleSettings(false);
    } catch (e) {
      show(ui.settingsError, e.message);
    }
  }

  let deleteArmed = 0;
  async function onDeleteRoom() {
    const room = currentRoom();
    if (!room) return;
    if (!deleteArmed) {
      // A second click within a few seconds deletes.
      ui.settingsDelete.textContent = "Click again to delete “" + displayName(room) + "” and its history";
      deleteArmed = setTimeout(() => {
        deleteArmed = 0;
        ui.settingsDelete.textContent = "Delete room…";
      }, CONFIRM_MS);
      return;
    }
    clearTimeout(deleteArmed);
    deleteArmed = 0;
    ui.settingsDelete.textContent = "Delete room…";
    try {
      await api("DELETE", "/rooms/" + encodeURIComponent(room.id));
      toggleSettings(false);
      removeRoom(room);
    } catch (e) {
      show(ui.settingsError, e.message);
    }
  }

  function renderHistoryBar() {
    const room = currentRoom();
    if (!room) {
      ui.loadOlder.hidden = true;
      show(ui.historyStatus, "");
      return;
    }
    if (room.historyInFlight) {
      ui.loadOlder.hidden = true;
      show(ui.historyStatus, "Loading history…");
    } else if (room.hasMore && room.historyLoaded && room.seqs.length > 0) {
      ui.loadOlder.hidden = false;
      show(ui.historyStatus, "");
    } else {
      ui.loadOlder.hidden = true;
      show(ui.historyStatus, room.historyLoaded && room.seqs.length > 0 ? "Start of the conversation" : "");
    }
  }

  function renderEmpty() {
    const room = currentRoom();
    let text = "";
    if (!room) text = state.rooms.size ? "Pick a room on the left." : "You are in no room yet.";
    else if (room.seqs.length === 0 && room.pending.size === 0) {
      text = room.joined ? (room.historyInFlight ? "" : "No messages yet. Say hello!") : "Joining…";
    }
    ui.emptyRoom.textContent = text;
    if (!room && !state.rooms.size) {
      // A first room to try, one click away.
      const join = el("button", { type: "button", className: "btn btn-primary", "data-testid": "join-general", text: "Join #general" });
      join.addEventListener("click", () => openRoom("general", {}));
      ui.emptyRoom.append(el("br"), join, el("span", { className: "muted small", text: " or pick a room id on the left." }));
    }
    ui.emptyRoom.hidden = !text;
  }

  function updateComposer() {
    const room = currentRoom();
    const usable = !!room && state.loggedIn && !room.muted;
    ui.input.disabled = !usable;
    ui.attach.disabled = !usable;
    ui.send.disabled = !usable || byteLength(ui.input.value) > MAX_CONTENT_BYTES;
    ui.input.placeholder = !room
      ? "Join a room to chat"
      : room.muted
        ? "You are muted here" + untilText(room.mutedUntil)
        : room.joined
        ? "Message " + (room.direct ? "@" : "#") + (room.name || room.id)
        : state.status === "online"
          ? "Joining…"
          : "Offline — messages are sent when back online";
  }

  let sendErrorTimer = 0;
  function showSendError(text) {
    clearTimeout(sendErrorTimer);
    show(ui.sendError, text);
    sendErrorTimer = setTimeout(() => show(ui.sendError, ""), 10000);
  }

  function showSidebarError(text) {
    show(ui.sidebarError, text);
    openSidebarOnNarrow();
    ui.sidebarError.scrollIntoView({ block: "nearest" });
  }

  function nearBottom() {
    const sc = ui.scroller;
    return sc.scrollHeight - sc.scrollTop - sc.clientHeight < 80;
  }

  function scrollToBottom() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
  }

  function autoGrow() {
    ui.input.style.height = "auto";
    ui.input.style.height = Math.min(ui.input.scrollHeight, 160) + "px";
  }

  const narrow = window.matchMedia("(max-width: 40rem)");
  function setSidebar(open) {
    ui.chatView.classList.toggle("sidebar-open", open);
    ui.sidebarToggle.setAttribute("aria-expanded", open ? "true" : "false");
  }
  function closeSidebarOnNarrow() {
    if (narrow.matches) setSidebar(false);
  }
  function openSidebarOnNarrow() {
    if (narrow.matches) setSidebar(true);
  }

  // ---------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------
  ui.authForm.addEventListener("submit", onLogin);
  ui.registerBtn.addEventListener("click", onRegister);

  // ---------------------------------------------------------------------------
  // Bots and API keys (README, "Bots and API keys")
  // ---------------------------------------------------------------------------
  const keysUi = {
    open: $("keys-button"),
    view: $("keys-view"),
    close: $("keys-close"),
    botList: $("bot-list"),
    noBots: $("no-bots"),
    botForm: $("bot-form"),
    botName: $("bot-name"),
    owner: $("key-owner"),
    keyList: $("key-list"),
    noKeys: $("no-keys"),
    keyForm: $("key-form"),
    keyName: $("key-name"),
    keyExpiry: $("key-expiry"),
    secret: $("key-secret"),
    secretText: $("key-secret-text"),
    copy: $("key-copy"),
    error: $("keys-error"),
  };

  function keysFailed(e) {
    show(keysUi.error, e instanceof ParleyError ? e.message : "Something went wrong. Try again.");
  }

  async function openKeys() {
    keysUi.view.hidden = false;
    keysUi.open.setAttribute("aria-expanded", "true");
    show(keysUi.error, "");
    keysUi.secret.hidden = true;
    keysUi.secretText.textContent = "";
    try {
      await loadBots();
      await loadKeys();
    } catch (e) {
      keysFailed(e);
    }
    keysUi.keyName.focus();
  }

  function closeKeys() {
    keysUi.view.hidden = true;
    keysUi.open.setAttribute("aria-expanded", "false");
    // The secret is not kept around once the panel closes.
    keysUi.secretText.textContent = "";
    keysUi.secret.hidden = true;
    keysUi.open.focus();
  }

  async function loadBots(select) {
    const data = await api("GET", "/bots");
    const bots = (data && data.bots) || [];
    keysUi.botList.textContent = "";
    for (const bot of bots) {
      keysUi.botList.append(
        el("li", { dataset: { botId: bot.id } }, [
          el("span", { className: "key-meta" }, [
            el("strong", { text: bot.username }),
            el("span", { className: "muted small", text: "bot" }),
          ]),
        ]),
      );
    }
    keysUi.noBots.hidden = bots.length > 0;
    const chosen = select || keysUi.owner.value;
    keysUi.owner.textContent = "";
    keysUi.owner.append(el("option", { value: "", text: "you" }));
    for (const bot of bots) keysUi.owner.append(el("option", { value: bot.id, text: bot.username }));
    keysUi.owner.value = bots.some((b) => b.id === chosen) ? chosen : "";
  }

  async function loadKeys() {
    const owner = keysUi.owner.value;
    const data = await api("GET", "/api-keys" + (owner ? "?user_id=" + encodeURIComponent(owner) : ""));
    const keys = (data && data.keys) || [];
    keysUi.keyList.textContent = "";
    for (const key of keys) {
      const revoke = el("button", { type: "button", className: "btn btn-danger small", text: "Revoke", "data-testid": "key-revoke" });
      revoke.addEventListener("click", () => revokeKey(key.id, revoke));
      const when = key.last_used_at ? "last used " + new Date(key.last_used_at).toLocaleString() : "never used";
      const until = key.expires_at ? ", expires " + new Date(key.expires_at).toLocaleDateString() : "";
      keysUi.keyList.append(
        el("li", { dataset: { keyId: key.id } }, [
          el("span", { className: "key-meta" }, [
            el("strong", { text: key.name }),
            el("span", { className: "muted small", text: key.scopes.join(" ") }),
            el("span", { className: "muted small", text: when + until }),
          ]),
          revoke,
        ]),
      );
    }
    keysUi.noKeys.hidden = keys.length > 0;
  }

  async function revokeKey(id, button) {
    // A second click confirms, as for deleting a room.
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Revoke now?";
      setTimeout(() => {
        button.dataset.armed = "";
        button.textContent = "Revoke";
      }, CONFIRM_MS);
      return;
    }
    button.disabled = true;
    try {
      await api("DELETE", "/api-keys/" + encodeURIComponent(id));
      await loadKeys();
    } catch (e) {
      button.disabled = false;
      keysFailed(e);
    }
  }

  async function onMakeBot(event) {
    event.preventDefault();
    show(keysUi.error, "");
    const username = keysUi.botName.value.trim();
    if (!username) return show(keysUi.error, "Give the bot a username.");
    try {
      const bot = await api("POST", "/bots", { username });
      keysUi.botName.value = "";
      await loadBots(bot.id);
      await loadKeys();
    } catch (e) {
      keysFailed(e);
    }
  }

  async function onMakeKey(event) {
    event.preventDefault();
    show(keysUi.error, "");
    const name = keysUi.keyName.value.trim();
    const scopes = [...keysUi.keyForm.querySelectorAll("input[name=scope]:checked")].map((c) => c.value);
    if (!name) return show(keysUi.error, "Give the key a name.");
    if (!scopes.length) return show(keysUi.error, "Pick at least one scope.");
    const body = { name, scopes };
    if (keysUi.owner.value) body.user_id = keysUi.owner.value;
    if (keysUi.keyExpiry.value) body.expires_at = keysUi.keyExpiry.value + "T00:00:00Z";
    try {
      const made = await api("POST", "/api-keys", body);
      keysUi.secretText.textContent = made.secret;
      keysUi.secret.hidden = false;
      keysUi.copy.textContent = "Copy";
      keysUi.keyName.value = "";
      await loadKeys();
    } catch (e) {
      keysFailed(e);
    }
  }

  async function onCopyKey() {
    const text = keysUi.secretText.textContent;
    try {
      await navigator.clipboard.writeText(text);
      keysUi.copy.textContent = "Copied";
    } catch (_) {
      // No clipboard (an insecure origin): select it for the user to copy.
      const range = document.createRange();
      range.selectNodeContents(keysUi.secretText);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      keysUi.copy.textContent = "Selected";
    }
  }

  keysUi.open.addEventListener("click", openKeys);
  keysUi.close.addEventListener("click", closeKeys);
  keysUi.view.addEventListener("click", (event) => {
    if (event.target === keysUi.view) closeKeys();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !keysUi.view.hidden) closeKeys();
  });
  keysUi.botForm.addEventListener("submit", onMakeBot);
  keysUi.keyForm.addEventListener("submit", onMakeKey);
  keysUi.owner.addEventListener("change", () => loadKeys().catch(keysFailed));
  keysUi.copy.addEventListener("click", onCopyKey);

  ui.logout.addEventListener("click", onLogout);
  ui.joinForm.addEventListener("submit", onJoinPublic);
  ui.privateForm.addEventListener("submit", onJoinPrivate);
  ui.createForm.addEventListener("submit", onCreate);
  ui.leave.addEventListener("click", onLeave);
  ui.loadOlder.addEventListener("click", loadOlder);
  ui.compose.addEventListener("submit", onSend);
  ui.input.addEventListener("input", onInput);
  ui.input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      ui.compose.requestSubmit();
    } else if (ev.key === "Escape" && state.composing) {
      setComposing(null);
    }
  });
  ui.composeContextCancel.addEventListener("click", () => setComposing(null));
  ui.attach.addEventListener("click", () => ui.fileInput.click());
  ui.fileInput.addEventListener("change", () => {
    addFiles([...ui.fileInput.files]);
    ui.fileInput.value = "";
  });
  // Drop files anywhere on the conversation, or paste an image.
  let dragDepth = 0;
  ui.room.addEventListener("dragenter", (ev) => {
    if (!hasFiles(ev) || ui.attach.disabled) return;
    dragDepth++;
    ui.dropZone.hidden = false;
  });
  ui.room.addEventListener("dragover", (ev) => {
    if (!hasFiles(ev) || ui.attach.disabled) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = "copy";
  });
  ui.room.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) ui.dropZone.hidden = true;
  });
  ui.room.addEventListener("drop", (ev) => {
    dragDepth = 0;
    ui.dropZone.hidden = true;
    if (!hasFiles(ev) || ui.attach.disabled) return;
    ev.preventDefault();
    addFiles([...ev.dataTransfer.files]);
  });
  ui.input.addEventListener("paste", (ev) => {
    const files = [...((ev.clipboardData && ev.clipboardData.files) || [])];
    if (files.length === 0) return;
    ev.preventDefault();
    addFiles(files);
  });
  document.addEventListener("visibilitychange", () => {
    const room = currentRoom();
    if (room && !document.hidden) markRead(room);
    else flushRead(room);
  });
  window.addEventListener("pagehide", () => {
    for (const room of state.rooms.values()) flushRead(room);
  });
  ui.scroller.addEventListener("scroll", () => {
    if (ui.scroller.scrollTop < 40) loadOlder();
  }, { passive: true });
  ui.sidebarToggle.addEventListener("click", () => {
    const open = !ui.chatView.classList.contains("sidebar-open");
    setSidebar(open);
    // Opening the list is when a new direct room should show up.
    if (open && state.loggedIn) loadMyRooms().catch(() => {});
  });
  ui.settingsButton.addEventListener("click", () => toggleSettings(ui.settings.hidden));
  ui.settings.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = ui.settingsName.value.trim();
    if (!name) {
      show(ui.settingsError, "Give the room a name.");
      return;
    }
    updateRoom({ name });
  });
  $("settings-set-password").addEventListener("click", () => {
    const password = ui.settingsPassword.value;
    if (!password) {
      show(ui.settingsError, "Enter the new password.");
      return;
    }
    updateRoom({ password });
  });
  $("settings-clear-password").addEventListener("click", () => updateRoom({ password: "" }));
  ui.settingsDelete.addEventListener("click", onDeleteRoom);
  window.addEventListener("focus", () => {
    if (state.loggedIn) loadMyRooms().catch(() => {});
  });
  $("sidebar-close").addEventListener("click", () => setSidebar(false));

  // Boot: resume the session of this tab, if any.
  (async function boot() {
    setStatus("offline");
    setSidebar(true);
    renderRoomView();
    const tokens = loadTokens();
    state.client = newClient(tokens);
    if (!tokens) {
      showAuth();
      return;
    }
    state.loggedIn = true;
    try {
      await state.client.bearer(); // renews an expired token first
      await startSession();
    } catch (e) {
      if (e instanceof ParleyError && e.status === 401) {
        sessionEnded("Your session has expired. Please log in again.");
      } else if (state.loggedIn) {
        // Server unreachable: keep the session and let the socket retry.
        await startSession().catch(() => {});
      }
    }
  })();
})();
