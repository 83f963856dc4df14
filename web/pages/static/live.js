// The projector: the leaderboard, a ticker, the state, the countdown and the freeze.
// Starts from the snapshot the realtime server sends on every connect, then applies events in
// `seq` order; a reconnect is a new session that begins with a fresh snapshot.
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat();
  const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  const TICKER_MAX = 14;
  const TICKER_PER_EVENT = 6;
  const STATUS_EVERY_MS = 5000;
  const MOVE_SHOWN_MS = 10000;
  const STATE_NAMES = {
    draft: "Not started", open: "Registration open", running: "Running",
    paused: "Paused", finished: "Finished",
  };

  let lastSeq = 0;
  let rows = new Map(); // teamName -> <li>
  let status = null;
  let clockOffset = 0; // server clock minus this browser's clock, in ms
  // The realtime server sends the top `leaderboardSize`; a longer ?limit= reads the REST board.
  const needRest = config.limit > config.leaderboardSize;

  const time = (iso) => new Date(iso)
    .toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const clock = (iso) => new Date(iso || Date.now())
    .toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  const signed = (n) => (n > 0 ? "+" : n < 0 ? "\u2212" : "") + numbers.format(Math.abs(n));

  // -- the board ---------------------------------------------------------------------------

  function makeRow(name) {
    const li = document.createElement("li");
    li.className = "row";
    li.dataset.team = name;
    for (const part of ["rank", "name", "move", "points"]) {
      const span = document.createElement("span");
      span.className = part;
      li.appendChild(span);
    }
    li.querySelector(".name").textContent = name;
    return li;
  }

  function renderBoard(leaderboard) {
    const board = $("board");
    const shown = leaderboard.slice(0, config.limit);
    // FLIP: remember where every row was, move them, then animate from there to the new place.
    const before = new Map();
    for (const [name, li] of rows) before.set(name, li.getBoundingClientRect().top);
    const next = new Map();
    for (const entry of shown) {
      let li = rows.get(entry.teamName);
      if (!li) li = makeRow(entry.teamName);
      const oldRank = Number(li.dataset.rank || 0);
      const oldPoints = li.dataset.points === undefined ? null : Number(li.dataset.points);
      li.dataset.rank = entry.rank;
      li.dataset.points = entry.points;
      li.querySelector(".rank").textContent = entry.rank;
      li.querySelector(".points").textContent = numbers.format(entry.points);
      const move = li.querySelector(".move");
      if (oldRank && entry.rank !== oldRank) {
        const up = entry.rank < oldRank;
        move.textContent = up ? "\u25B2" : "\u25BC";
        move.className = "move " + (up ? "up" : "down");
        move.setAttribute("aria-label", up ? "up" : "down");
        clearTimeout(li.moveTimer);
        li.moveTimer = setTimeout(() => { move.textContent = ""; move.className = "move"; }, MOVE_SHOWN_MS);
      }
      if (oldPoints !== null && oldPoints !== entry.points) flash(li);
      next.set(entry.teamName, li);
    }
    for (const [name, li] of rows) if (!next.has(name)) li.remove();
    let i = 0;
    for (const li of next.values()) {
      if (board.children[i] !== li) board.insertBefore(li, board.children[i] || null);
      i += 1;
    }
    rows = next;
    $("empty").hidden = rows.size > 0;
    if (reduceMotion) return;
    for (const [name, li] of next) {
      const old = before.get(name);
      if (old === undefined) {
        li.animate([{ opacity: 0 }, { opacity: 1 }], { duration: 500 });
        continue;
      }
      const dy = old - li.getBoundingClientRect().top;
      if (Math.abs(dy) > 1) {
        li.animate([{ transform: `translateY(${dy}px)` }, { transform: "none" }],
          { duration: 800, easing: "cubic-bezier(.2,.8,.2,1)" });
      }
    }
  }

  function flash(li) {
    li.classList.remove("changed");
    void li.offsetWidth; // restart the animation
    li.classList.add("changed");
  }

  let restTimer = null;
  let restBusy = false;
  let restAgain = false;

  async function loadRestBoard() {
    if (restBusy) { restAgain = true; return; }
    restBusy = true;
    try {
      const resp = await fetch(`/api/v1/competitions/${encodeURIComponent(config.competition)}/leaderboard`
        + `?limit=${config.limit}`, { headers: { Accept: "application/json" } });
      if (resp.ok) renderBoard((await resp.json()).leaderboard);
    } catch (err) {
      // The next event or reconnect tries again.
    } finally {
      restBusy = false;
      if (restAgain) { restAgain = false; scheduleRest(); }
    }
  }

  function scheduleRest() {
    if (restTimer) return;
    restTimer = setTimeout(() => { restTimer = null; loadRestBoard(); }, 300);
  }

  // -- the ticker --------------------------------------------------------------------------

  function tick(text, at, kind) {
    const list = $("ticker");
    const li = document.createElement("li");
    li.className = "tick " + (kind || "");
    const when = document.createElement("time");
    when.textContent = clock(at);
    if (at) when.dateTime = at;
    const what = document.createElement("span");
    what.textContent = text;
    li.append(when, what);
    list.prepend(li);
    while (list.children.length > TICKER_MAX) list.lastElementChild.remove();
  }

  function describe(change) {
    const name = change.teamName;
    const delta = change.delta || 0;
    const reason = change.reason || "";
    const pts = delta ? ` ${signed(delta)}` : "";
    if (reason === "registered") return [`${name} joined`, "join"];
    if (reason === "correct_answer") return [`${name} answered right${pts}`, "up"];
    if (reason === "wrong_answer") return [`${name} answered wrong${pts}`, "down"];
    if (reason === "mystery_box") return [`${name} bought a mystery box${pts}`, "mystery"];
    if (reason === "mystery_correct_answer") return [`${name} cracked a mystery box${pts}`, "up"];
    if (reason === "mystery_wrong_answer") return [`${name} missed a mystery box${pts}`, "down"];
    if (reason.startsWith("adjustment")) return [`${name}: adjusted${pts}`, delta < 0 ? "down" : "up"];
    if (reason.includes("disqualified")) return [`${name} was disqualified`, "down"];
    return [`${name}${pts} (${reason.replace(/_/g, " ")})`, delta < 0 ? "down" : "up"];
  }

  function tickMany(items, at) {
    for (const [text, kind] of items.slice(-TICKER_PER_EVENT)) tick(text, at, kind);
    if (items.length > TICKER_PER_EVENT) tick(`and ${items.length - TICKER_PER_EVENT} more`, at, "more");
  }

  // -- state, countdown, freeze -------------------------------------------------------------

  function showState(state) {
    const badge = $("state");
    badge.dataset.state = state;
    badge.textContent = STATE_NAMES[state] || state;
  }

  function showStatus() {
    if (!status) return;
    showState(status.state);
    const banner = $("frozen");
    if (status.frozen && status.freezeAt) {
      banner.textContent = `Standings frozen at ${time(status.freezeAt)}`;
      banner.hidden = false;
      document.body.classList.add("is-frozen");
    } else {
      banner.hidden = true;
      document.body.classList.remove("is-frozen");
    }
    updateCountdown();
  }

  function updateCountdown() {
    const box = $("countdown");
    const live = status && status.endsAt && !["finished", "draft"].includes(status.state);
    if (!live) { box.hidden = true; return; }
    const left = Math.max(0, Math.round((Date.parse(status.endsAt) - (Date.now() + clockOffset)) / 1000));
    const h = Math.floor(left / 3600);
    const m = Math.floor((left % 3600) / 60);
    const s = String(left % 60).padStart(2, "0");
    box.textContent = `Time left ${h ? `${h}:${String(m).padStart(2, "0")}` : m}:${s}`;
    box.classList.toggle("ending", left <= 60);
    box.hidden = false;
  }

  let statusBusy = false;
  async function loadStatus() {
    if (statusBusy) return;
    statusBusy = true;
    const sent = Date.now();
    try {
      const resp = await fetch(config.status, { headers: { Accept: "application/json" } });
      if (resp.ok) {
        const body = await resp.json();
        const received = Date.now();
        clockOffset = Date.parse(body.serverTime) - (sent + received) / 2;
        const wasFrozen = status && status.frozen;
        status = body;
        showStatus();
        // The reveal: the standings during the freeze were never sent to spectators.
        if (wasFrozen && !status.frozen && needRest) scheduleRest();
      }
    } catch (err) {
      // Shown as offline by the socket; the next poll tries again.
    } finally {
      statusBusy = false;
    }
  }

  // -- events -------------------------------------------------------------------------------

  function fresh(payload) {
    if (!payload || payload.competition !== config.competition) return false;
    if (typeof payload.seq === "number") {
      if (payload.seq <= lastSeq) return false;
      lastSeq = payload.seq;
    }
    return true;
  }

  function connect() {
    const socket = io(config.realtimeUrl, { auth: { competition: config.competition } });
    const conn = $("connection");

    socket.on("connect", () => {
      conn.dataset.ok = "true";
      conn.textContent = "live";
      loadStatus();
      if (needRest) scheduleRest();
    });
    socket.on("disconnect", () => {
      // The next session starts with a fresh snapshot, numbered afresh, perhaps by another
      // realtime process whose numbers are lower. Reset here, not on "connect": the client
      // hands over events that came with the connection (the snapshot) before "connect".
      lastSeq = 0;
      conn.dataset.ok = "false";
      conn.textContent = "reconnecting";
    });
    socket.on("connect_error", (err) => {
      conn.dataset.ok = "false";
      conn.textContent = socket.active ? "reconnecting" : `refused: ${err.message}`;
    });

    socket.on("leaderboard_update", (p) => {
      if (!fresh(p)) return;
      if (needRest) scheduleRest(); else renderBoard(p.leaderboard || []);
      tickMany((p.changes || []).map(describe), p.at);
      if (status && status.frozen) loadStatus();
    });
    socket.on("question_claimed", (p) => {
      if (!fresh(p)) return;
      const claims = Array.isArray(p.claims) && p.claims.length ? p.claims : [p];
      tickMany(claims.map((c) => [`${c.teamName} claimed ${c.questionId}`, "claim"]), p.at);
    });
    socket.on("question_released", (p) => {
      if (!fresh(p)) return;
      // Coalesced like claims: every release since the last broadcast is in `releases`.
      const releases = Array.isArray(p.releases) && p.releases.length ? p.releases : [p];
      tickMany(releases.map((r) => [`${r.questionId} is back on the board${r.reason ? ` (${r.reason})` : ""}`,
        "release"]), p.at);
    });
    socket.on("competition_state", (p) => {
      if (!fresh(p)) return;
      showState(p.state);
      if (status) status.state = p.state;
      tick(`The competition is ${STATE_NAMES[p.state] ? STATE_NAMES[p.state].toLowerCase() : p.state}`, p.at, "state");
      loadStatus();
    });
    return socket;
  }

  $("board").style.setProperty("--rows", String(Math.max(config.limit, 6)));
  $("board").style.setProperty("--rank-digits", String(String(config.limit).length));
  const socket = connect();
  loadStatus();
  setInterval(() => {
    loadStatus();
    // Without the realtime server (stopped, or a port the venue's network blocks) the board
    // still moves, every few seconds, from the API.
    if (!socket.connected) loadRestBoard();
  }, STATUS_EVERY_MS);
  setInterval(updateCountdown, 1000);
  // For the browser tests: the socket, and the last `seq` applied.
  window.quizLive = {
    socket,
    get lastSeq() { return lastSeq; },
    set lastSeq(value) { lastSeq = value; },
  };
})();
