// The team page: register, the live board, claim and answer, mystery boxes, points and time.
// Every write is a job; its result comes back as a `job_update` on the team's Socket.IO room
// (with a poll of the job as a fallback if the event is late).
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat();
  const STORE = `quiz:${config.competition}:team`;
  const QUESTIONS = `quiz:${config.competition}:questions`;
  const FLASH = `quiz:${config.competition}:flash`;
  const DIFFICULTIES = ["EASY", "MEDIUM", "HARD"];
  const STATE_NAMES = {
    draft: "Not started", open: "Registration open", running: "Running",
    paused: "Paused", finished: "Finished",
  };
  // Refused jobs, in plain words. The server's own message is shown for anything not here.
  const REFUSALS = {
    question_already_claimed: "Another team got there first.",
    claim_limit_reached: "You already hold as many questions as you may. Answer one first.",
    question_not_found: "That question is not on the board.",
    question_not_claimed: "Claim the question before answering it.",
    already_answered: "Your team has already answered this question.",
    claim_expired: "You held that question too long, so it went back to the board.",
    insufficient_points: "Your team has not got enough points for that.",
    no_mystery_left: "There are no mystery boxes of that kind left.",
    mystery_already_open: "Answer or forfeit your open mystery box first.",
    no_open_mystery_box: "You have no open mystery box.",
    competition_not_running: "The competition is not running right now.",
    deadline_passed: "Your team's time is up.",
    team_disqualified: "Your team has been disqualified.",
    registration_closed: "Registration is closed.",
    registration_code_invalid: "That registration code is not right. Ask the organisers for it.",
    team_name_taken: "Another team already has that name. Pick another one.",
  };
  const FIELDS = {
    teamName: "Team name", members: "Members", email: "Email", registrationCode: "Registration code",
    answer: "Answer", questionId: "Question",
  };

  const team = load(STORE);
  let questionTexts = load(QUESTIONS) || {};
  let competition = null;
  let me = null;
  let board = new Map(); // questionId -> {questionId, points, difficulty, category, claimed}
  let current = null; // {questionId, question, options, points, mystery}
  let deadlineAt = null; // this browser's clock
  let lastSeq = 0;
  let socket = null;
  const waiting = new Map(); // jobId -> resolve
  const arrived = new Map(); // jobId -> job, for updates that beat the POST's response
  const finishedBy = { event: 0, poll: 0 }; // how job results arrived (the tests read it)

  function load(key) {
    try { return JSON.parse(localStorage.getItem(key)); } catch (err) { return null; }
  }
  function save(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch (err) { /* private mode */ }
  }

  // -- messages -------------------------------------------------------------------------------

  function say(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = `message ${kind || "info"}`;
    box.hidden = false;
  }

  function refusal(error) {
    if (!error) return "That did not work.";
    if (error.code === "question_already_claimed" && /your team/i.test(error.message || "")) {
      return "Your team already holds this question.";
    }
    return REFUSALS[error.code] || error.message || error.code;
  }

  class Refused extends Error {}

  async function problemText(resp) {
    let body = {};
    try { body = await resp.json(); } catch (err) { /* not JSON */ }
    if (resp.status === 429) {
      const wait = resp.headers.get("Retry-After");
      return `Too many tries. Wait ${wait ? `${wait} seconds` : "a moment"} and try again.`;
    }
    if (resp.status === 503) return "The quiz server is busy. Try again in a moment.";
    if (Array.isArray(body.errors) && body.errors.length) {
      return body.errors.map((e) => `${FIELDS[e.field] || e.field}: ${e.message}`).join(". ");
    }
    return body.detail || body.title || `The server answered ${resp.status}.`;
  }

  // -- HTTP -----------------------------------------------------------------------------------

  function headers(extra) {
    const h = { Accept: "application/json", ...extra };
    if (team) h.Authorization = `Bearer ${team.token}`;
    return h;
  }

  async function getJson(path) {
    const resp = await fetch(path, { headers: headers() });
    if (resp.status === 401 && team) { forget("This device's team is not known here any more. Register again."); }
    if (!resp.ok) throw new Refused(await problemText(resp));
    return resp.json();
  }

  // A write: POST (or DELETE) makes a job; its result comes by job_update.
  async function act(method, path, body) {
    const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
    if (body) init.body = JSON.stringify(body);
    const resp = await fetch(config.api + path, init);
    if (resp.status === 401) { forget("This device's team is not known here any more. Register again."); }
    if (resp.status !== 200 && resp.status !== 202) throw new Refused(await problemText(resp));
    const job = await resp.json();
    const done = job.status === "succeeded" || job.status === "failed" ? job : await waitJob(job.jobId);
    if (done.status === "failed") throw new Refused(refusal(done.error));
    return done.result;
  }

  function waitJob(jobId) {
    if (arrived.has(jobId)) {
      const job = arrived.get(jobId);
      arrived.delete(jobId);
      return Promise.resolve(job);
    }
    return new Promise((resolve) => {
      waiting.set(jobId, resolve);
      // The event should come within a second; if the socket is down, ask.
      const poll = async (delay) => {
        await new Promise((r) => setTimeout(r, delay));
        if (!waiting.has(jobId)) return;
        try {
          const job = await getJson(`/api/v1/jobs/${jobId}`);
          if (job.status === "succeeded" || job.status === "failed") { finishJob(job, "poll"); return; }
        } catch (err) { /* try again */ }
        poll(Math.min(delay * 2, 5000));
      };
      poll(3000);
    });
  }

  function finishJob(job, via) {
    finishedBy[via] += 1;
    const resolve = waiting.get(job.jobId);
    if (resolve) { waiting.delete(job.jobId); resolve(job); return; }
    arrived.set(job.jobId, job);
    if (arrived.size > 50) arrived.delete(arrived.keys().next().value);
  }

  // Buttons stay disabled while their job runs, so a double tap is one job.
  async function busy(button, work) {
    if (button) { button.disabled = true; button.dataset.busy = "1"; }
    try {
      return await work();
    } catch (err) {
      say(err instanceof Refused ? err.message : "No connection to the quiz server. Try again.", "error");
      return undefined;
    } finally {
      if (button) { delete button.dataset.busy; button.disabled = false; }
      render();
    }
  }

  // -- registration -----------------------------------------------------------------------------

  function codeRequired(c) {
    return Boolean(c && (c.registrationCodeRequired || c.requiresRegistrationCode || c.registrationCode === true));
  }

  let registrationKey = null;
  let registrationBody = null;

  function randomKey() {
    // 256 random bits: a key that high in entropy is one the API may safely answer a replay of.
    const bytes = new Uint8Array(32);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function register(event) {
    event.preventDefault();
    const form = $("register-form");
    if (!form.reportValidity()) return;
    const body = { teamName: $("team-name-input").value.trim() };
    const members = $("members-input").value.split(",").map((m) => m.trim()).filter(Boolean);
    if (members.length) body.members = members;
    const email = $("email-input").value.trim();
    if (email) body.email = email;
    const code = $("code-input").value.trim();
    if (code) body.registrationCode = code;
    // A retry of the same form after a lost answer gets the same job, not a second team.
    const text = JSON.stringify(body);
    if (text !== registrationBody) { registrationKey = randomKey(); registrationBody = text; }
    await busy($("register-button"), async () => {
      const resp = await fetch(`${config.api}/teams`, {
        method: "POST",
        headers: { Accept: "application/json", "Content-Type": "application/json", Prefer: "wait=10",
                   "Idempotency-Key": registrationKey },
        body: text,
      });
      if (resp.status === 403) await codeRefused(resp.clone(), body);
      if (resp.status !== 200 && resp.status !== 202) throw new Refused(await problemText(resp));
      const accepted = await resp.json();
      let job = accepted;
      for (let tries = 0; job.status !== "succeeded" && job.status !== "failed"; tries += 1) {
        if (tries === 60) throw new Refused("Registration is taking long. Try again in a minute.");
        await new Promise((r) => setTimeout(r, 1000));
        const poll = await fetch(`/api/v1/jobs/${accepted.jobId}`,
          { headers: { Accept: "application/json", Authorization: `Bearer ${accepted.teamToken}` } });
        if (poll.ok) job = await poll.json();
      }
      if (job.status === "failed") {
        registrationKey = null;
        registrationBody = null;
        if (job.error && job.error.code === "registration_code_invalid") {
          $("code-field").hidden = false;
          $("code-input").focus();
        }
        throw new Refused(refusal(job.error));
      }
      save(STORE, { token: accepted.teamToken, teamName: job.result.teamName });
      // A fresh start with the token: the socket joins the team's room on connect.
      window.location.reload();
    });
  }

  // The API refuses a missing or wrong registration code before making a job (403 naming
  // registrationCode); the worker checks it again (the job's registration_code_invalid).
  async function codeRefused(resp, body) {
    let problem = {};
    try { problem = await resp.json(); } catch (err) { return; }
    if (!(problem.errors || []).some((e) => e.field === "registrationCode")) return;
    $("code-field").hidden = false;
    $("code-input").focus();
    throw new Refused(body.registrationCode ? REFUSALS.registration_code_invalid
      : "This competition needs a registration code. Ask the organisers for it.");
  }

  function forget(text) {
    localStorage.removeItem(STORE);
    localStorage.removeItem(QUESTIONS);
    if (socket) socket.disconnect();
    // Said after the reload, on the registration form.
    if (text) sessionStorage.setItem(FLASH, text);
    window.location.reload();
  }

  // -- reads --------------------------------------------------------------------------------------

  async function loadCompetition() {
    competition = await getJson(config.api);
    if (codeRequired(competition)) $("code-field").hidden = false;
  }

  async function loadBoard() {
    const next = new Map();
    let cursor = null;
    do {
      const page = await getJson(`${config.api}/questions?limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      for (const q of page.items) next.set(q.questionId, q);
      cursor = page.nextCursor;
    } while (cursor);
    board = next;
  }

  async function loadMe() {
    me = await getJson(`${config.api}/teams/me`);
    setDeadline(me.remainingSeconds);
    const box = me.openMysteryBox;
    if (box) {
      current = { questionId: box.mysteryQuestionId, question: box.question, options: box.options,
                  points: box.potentialPoints, difficulty: box.difficulty, mystery: true };
    } else if (current && current.mystery) {
      current = null;
    }
  }

  async function refresh() {
    try {
      await Promise.all([loadCompetition(), team ? loadBoard() : null, team ? loadMe() : null]);
    } catch (err) {
      say(err instanceof Refused ? err.message : "No connection to the quiz server. Retrying.", "error");
    }
    render();
  }

  function setDeadline(remainingSeconds) {
    deadlineAt = typeof remainingSeconds === "number" ? Date.now() + remainingSeconds * 1000 : null;
    updateClock();
  }

  // -- actions --------------------------------------------------------------------------------

  function claimedByMe(code) {
    return me && me.claims.find((c) => c.questionId === code);
  }

  async function claim(code, button) {
    await busy(button, async () => {
      const result = await act("POST", "/claims", { questionId: code });
      questionTexts[code] = { question: result.question, options: result.options, points: result.points };
      save(QUESTIONS, questionTexts);
      current = { questionId: code, question: result.question, options: result.options, points: result.points,
                  mystery: false };
      if (me && !claimedByMe(code)) me.claims.push({ questionId: code, points: result.points, answered: false });
      const q = board.get(code);
      if (q) q.claimed = true;
      say(`${code} is yours. Answer it below.`, "ok");
      render();
      $("current-title").focus();
    });
  }

  function openQuestion(code) {
    const text = questionTexts[code];
    const held = claimedByMe(code);
    if (!text) {
      say(`${code} is yours, but its text was shown on the device that claimed it.`, "info");
      current = { questionId: code, question: "(open it on the device that claimed it)", options: [],
                  points: held ? held.points : 0, mystery: false };
    } else {
      current = { questionId: code, question: text.question, options: text.options, points: text.points,
                  mystery: false };
    }
    render();
    $("current-title").focus();
  }

  async function answer(event) {
    event.preventDefault();
    if (!current) return;
    let given;
    if (current.options && current.options.length) {
      const picked = document.querySelector('input[name="option"]:checked');
      if (!picked) { say("Pick one of the options first.", "error"); return; }
      given = picked.value;
    } else {
      given = $("answer-input").value.trim();
      if (!given) { say("Type an answer first.", "error"); $("answer-input").focus(); return; }
    }
    const asked = current;
    await busy($("answer-button"), async () => {
      const result = await act("POST", "/submissions", { questionId: asked.questionId, answer: given });
      const held = claimedByMe(asked.questionId);
      if (held) held.answered = true;
      current = null;
      if (me) { me.points = result.totalPoints; me.rank = result.rank; if (asked.mystery) me.openMysteryBox = null; }
      const earned = result.pointsEarned ? ` ${result.pointsEarned > 0 ? "+" : ""}${numbers.format(result.pointsEarned)} points.` : "";
      const standing = ` You have ${numbers.format(result.totalPoints)} points${result.rank ? `, rank ${result.rank}` : ""}.`;
      say(result.correct ? `Right!${earned}${standing}` : `Not right.${earned}${standing}`, result.correct ? "ok" : "error");
    });
  }

  async function buyBox(difficulty, button) {
    await busy(button, async () => {
      const result = await act("POST", "/mystery-boxes", { difficulty });
      current = { questionId: result.mysteryQuestionId, question: result.question, options: result.options,
                  points: result.potentialPoints, difficulty, mystery: true };
      if (me) {
        me.points = result.totalPoints !== undefined ? result.totalPoints : me.points - result.deductedPoints;
        me.openMysteryBox = result;
      }
      say(`Mystery box opened: ${numbers.format(result.deductedPoints)} points paid, `
        + `${numbers.format(result.potentialPoints)} to win.`, "ok");
      render();
      $("current-title").focus();
    });
  }

  async function forfeit() {
    await busy($("forfeit-button"), async () => {
      await act("DELETE", "/mystery-boxes/current");
      current = null;
      if (me) me.openMysteryBox = null;
      say("Mystery box forfeited. The points paid are not refunded.", "info");
    });
  }

  // -- rendering -------------------------------------------------------------------------------

  function running() {
    return competition && competition.state === "running";
  }

  function render() {
    const state = competition ? competition.state : "";
    $("state").dataset.state = state;
    $("state").textContent = STATE_NAMES[state] || state || "loading";
    $("register").hidden = Boolean(team);
    $("game").hidden = !team;
    if (!team) return;
    $("team-line").hidden = false;
    $("team-name").textContent = me ? me.teamName : team.teamName;
    $("points").textContent = me ? numbers.format(me.points) : "-";
    $("rank").textContent = me && me.rank ? me.rank : "-";
    renderCurrent();
    renderBoard();
    renderBoxes();
  }

  function renderCurrent() {
    const panel = $("current");
    if (!current) { panel.hidden = true; return; }
    const wasHidden = panel.hidden || panel.dataset.question !== current.questionId;
    panel.hidden = false;
    panel.dataset.question = current.questionId;
    const label = current.mystery ? `Mystery box (${(current.difficulty || "").toLowerCase()})` : current.questionId;
    $("current-title").textContent = `${label} \u00b7 ${numbers.format(current.points)} points`;
    $("current-text").textContent = current.question;
    $("forfeit-button").hidden = !current.mystery;
    $("answer-button").disabled = Boolean($("answer-button").dataset.busy) || !running();
    const hasOptions = current.options && current.options.length > 0;
    $("options-box").hidden = !hasOptions;
    $("free-answer").hidden = hasOptions;
    if (!wasHidden) return;
    $("answer-input").value = "";
    const options = $("options");
    options.replaceChildren();
    (current.options || []).forEach((option, i) => {
      const label = document.createElement("label");
      label.className = "option";
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "option";
      input.value = option;
      input.id = `option-${i}`;
      label.append(input, document.createTextNode(option));
      options.appendChild(label);
    });
  }

  // Buttons are made once and updated in place: a re-render must never take the keyboard
  // focus away from the button someone is about to press.
  const questionButtons = new Map(); // questionId -> button
  const boxButtons = new Map(); // difficulty -> button

  function span(className) {
    const el = document.createElement("span");
    if (className) el.className = className;
    return el;
  }

  function questionButton(q) {
    let button = questionButtons.get(q.questionId);
    if (button) return button;
    button = document.createElement("button");
    button.type = "button";
    button.dataset.question = q.questionId;
    button.append(span("code"), span("pts"), span("tag"));
    button.addEventListener("click", () => {
      if (button.dataset.status === "free") claim(q.questionId, button);
      else if (button.dataset.status === "mine") openQuestion(q.questionId);
    });
    const li = document.createElement("li");
    li.appendChild(button);
    questionButtons.set(q.questionId, button);
    return button;
  }

  function renderBoard() {
    const list = $("questions");
    $("board-empty").hidden = board.size > 0;
    let i = 0;
    for (const q of board.values()) {
      const held = claimedByMe(q.questionId);
      const status = held ? (held.answered ? "answered" : "mine") : q.claimed ? "taken" : "free";
      const button = questionButton(q);
      button.dataset.status = status;
      button.querySelector(".code").textContent = q.questionId;
      button.querySelector(".pts").textContent = `${numbers.format(q.points)} pts`;
      button.querySelector(".tag").textContent = { free: (q.difficulty || "").toLowerCase() || "free",
                                                   taken: "taken", mine: "yours: answer",
                                                   answered: "answered" }[status];
      const what = { free: "claim", taken: "taken by another team", mine: "yours, open to answer",
                     answered: "answered" }[status];
      button.setAttribute("aria-label", `${q.questionId}, ${q.points} points, ${what}`);
      button.disabled = Boolean(button.dataset.busy) || (status === "free" ? !running() : status !== "mine");
      const li = button.parentElement;
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
      i += 1;
    }
    for (const [code, button] of questionButtons) {
      if (!board.has(code)) { button.parentElement.remove(); questionButtons.delete(code); }
    }
  }

  function renderBoxes() {
    if (!competition) return;
    const open = Boolean(me && me.openMysteryBox) || Boolean(current && current.mystery);
    for (const difficulty of DIFFICULTIES) {
      const price = competition.mysteryPrices[difficulty];
      const reward = competition.mysteryRewards[difficulty];
      let button = boxButtons.get(difficulty);
      if (!button) {
        button = document.createElement("button");
        button.type = "button";
        button.dataset.difficulty = difficulty;
        button.append(span("kind"), span("price"), span("reward"));
        button.addEventListener("click", () => buyBox(difficulty, button));
        boxButtons.set(difficulty, button);
        $("boxes").appendChild(button);
      }
      const name = difficulty.charAt(0) + difficulty.slice(1).toLowerCase();
      button.querySelector(".kind").textContent = name;
      button.querySelector(".price").textContent = `costs ${numbers.format(price)}`;
      button.querySelector(".reward").textContent = `wins ${numbers.format(reward)}`;
      button.setAttribute("aria-label", `${name} mystery box: costs ${price} points, wins ${reward}`);
      button.disabled = Boolean(button.dataset.busy) || open || !running() || Boolean(me && me.points < price);
    }
  }

  function updateClock() {
    const box = $("time-box");
    if (deadlineAt === null) { box.hidden = true; return; }
    const left = Math.max(0, Math.round((deadlineAt - Date.now()) / 1000));
    const m = Math.floor(left / 60);
    $("time-left").textContent = `${m}:${String(left % 60).padStart(2, "0")}`;
    box.classList.toggle("ending", left <= 60);
    box.hidden = false;
  }

  // -- live events -------------------------------------------------------------------------------

  function fresh(payload) {
    if (!payload || payload.competition !== config.competition) return false;
    if (typeof payload.seq === "number") {
      if (payload.seq <= lastSeq) return false;
      lastSeq = payload.seq;
    }
    return true;
  }

  function connect() {
    socket = io(config.realtimeUrl, { auth: { competition: config.competition, token: team.token } });
    const conn = $("connection");
    conn.hidden = false;
    socket.on("connect", () => {
      conn.dataset.ok = "true";
      conn.textContent = "live";
      // Whatever happened while the socket was down: read it again.
      refresh();
    });
    socket.on("disconnect", () => {
      // A new session numbers its events afresh (the snapshot comes before "connect").
      lastSeq = 0;
      conn.dataset.ok = "false";
      conn.textContent = "reconnecting";
    });
    socket.on("connect_error", (err) => {
      conn.dataset.ok = "false";
      conn.textContent = "offline";
      if (!socket.active && /token/i.test(err.message)) {
        forget("This device's team is not known here any more. Register again.");
      }
    });
    socket.on("job_update", (p) => { if (fresh(p)) finishJob(p, "event"); });
    socket.on("score_update", (p) => {
      if (!fresh(p) || !me) return;
      me.points = p.points;
      if (p.rank) me.rank = p.rank;
      render();
    });
    socket.on("time_update", (p) => { if (fresh(p)) setDeadline(p.remainingSeconds); });
    socket.on("question_claimed", (p) => {
      if (!fresh(p)) return;
      const claims = Array.isArray(p.claims) && p.claims.length ? p.claims : [p];
      for (const c of claims) { const q = board.get(c.questionId); if (q) q.claimed = true; }
      render();
    });
    socket.on("question_released", (p) => {
      if (!fresh(p)) return;
      const releases = Array.isArray(p.releases) && p.releases.length ? p.releases : [p];
      for (const r of releases) {
        const q = board.get(r.questionId);
        if (q) q.claimed = false;
        const held = claimedByMe(r.questionId);
        if (held && !held.answered) {
          me.claims = me.claims.filter((c) => c.questionId !== r.questionId);
          if (current && current.questionId === r.questionId) current = null;
          say(r.reason === "expired" ? `${r.questionId} went back to the board: it was held too long.`
            : `${r.questionId} went back to the board.`, "error");
        }
      }
      render();
    });
    socket.on("competition_state", (p) => {
      if (!fresh(p)) return;
      if (competition) competition.state = p.state;
      say(`The competition is now ${(STATE_NAMES[p.state] || p.state).toLowerCase()}.`, "info");
      render();
    });
    socket.on("leaderboard_update", (p) => { fresh(p); });
  }

  // -- start --------------------------------------------------------------------------------------

  $("register-form").addEventListener("submit", register);
  $("answer-form").addEventListener("submit", answer);
  $("forfeit-button").addEventListener("click", forfeit);
  $("forget").addEventListener("click", () => forget());
  setInterval(updateClock, 1000);
  render();
  const flashed = sessionStorage.getItem(FLASH);
  if (flashed) { sessionStorage.removeItem(FLASH); say(flashed, "error"); }
  refresh();
  if (team) connect();
  window.quizPlay = { finishedBy, get socket() { return socket; }, get lastSeq() { return lastSeq; } };
})();
