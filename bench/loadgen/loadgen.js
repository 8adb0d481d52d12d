// The one load generator of `make bench`: many WebSocket clients in one Node process, driven by
// JSON-line commands on stdin and answering JSON lines on stdout. A protocol adapter per stack:
//   mesh - this project's /ws frames (create_message -> message_created)
//   sio  - Socket.IO v4 over a raw WebSocket (Engine.IO "0" open, "40" connect, "42[...]" events,
//          ping "2" answered with "3"); the peers' "join" (with ack) and "chat" events.
// Every frame carries its send time, so latency is measured per receiving client.
"use strict";

const WebSocket = require("ws");
const readline = require("readline");
const { performance } = require("perf_hooks");

const now = () => performance.timeOrigin + performance.now(); // wall clock, ms, sub-ms resolution
const BUCKET_MS = 0.1; // latency histogram resolution
const MAX_BUCKET = 100000; // 10 s; later arrivals share the last bucket (max is kept exactly)

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// ---- clients -------------------------------------------------------------------------------

class Client {
  constructor(spec) {
    this.spec = spec; // {idx, url, proto, room, user, send}
    this.ws = null;
    this.counter = 0;
    this.lastSeq = 0; // mesh: highest seq seen in its room
    this.lastFrom = new Map(); // sender idx -> last counter seen (out-of-order detection)
    this.seen = new Set(); // "sender:counter" this step (duplicate detection)
    this.syncDone = null;
    this.replayed = 0;
  }

  connect(timeoutMs) {
    return new Promise((resolve) => {
      let settled = false;
      const done = (ok, why) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ ok, why });
      };
      const timer = setTimeout(() => done(false, "timeout"), timeoutMs);
      const ws = new WebSocket(this.spec.url, { perMessageDeflate: false });
      this.ws = ws;
      ws.on("error", (e) => done(false, String(e.message || e)));
      ws.on("close", () => done(false, "closed"));
      if (this.spec.proto === "mesh") {
        ws.on("open", () => done(true));
        ws.on("message", (data) => onMeshFrame(this, data));
      } else {
        this.onSioReady = () => done(true);
        ws.on("message", (data) => onSioFrame(this, data));
      }
    });
  }

  sendChat(stepTag) {
    const c = this.counter++;
    const content = `${stepTag}|${this.spec.idx}|${c}|${now().toFixed(3)}`;
    if (this.spec.proto === "mesh") {
      this.ws.send(
        JSON.stringify({
          action: "create_message",
          roomId: this.spec.room,
          messageId: `${runId}-${this.spec.idx}-${c}`,
          content,
          senderId: this.spec.user,
          createdAt: isoNow(),
        }),
      );
    } else {
      this.ws.send(`42["chat",${JSON.stringify({ room: this.spec.room, c: content })}]`);
    }
  }
}

const runId = `b${process.pid}${Date.now().toString(36)}`;
let isoCache = { at: 0, iso: "" };
function isoNow() {
  const t = Date.now();
  if (t - isoCache.at >= 5) isoCache = { at: t, iso: new Date(t).toISOString() };
  return isoCache.iso;
}

function onMeshFrame(client, data) {
  let f;
  try {
    f = JSON.parse(data.toString());
  } catch {
    return;
  }
  if (f.type === "message_created") {
    const m = f.message;
    if (m.seq > client.lastSeq) client.lastSeq = m.seq;
    if (client.syncDone) client.replayed++;
    received(client, m.content);
  } else if (f.type === "synced") {
    if (client.syncDone) client.syncDone();
  } else if (f.type === "error") {
    stats.errors++;
  }
}

function onSioFrame(client, data) {
  const s = data.toString();
  const t = s.charCodeAt(0);
  if (t === 50 /* "2" ping */) {
    client.ws.send("3");
  } else if (t === 48 /* "0" open */) {
    client.ws.send("40");
  } else if (t === 52 /* "4" message */) {
    const p = s.charCodeAt(1);
    if (p === 50 /* "42" event */) {
      const ev = JSON.parse(s.slice(2));
      if (ev[0] === "chat") received(client, ev[1].c);
    } else if (p === 48 /* "40" connected */) {
      if (client.spec.room) client.ws.send(`421["join",${JSON.stringify(client.spec.room)}]`);
      else client.onSioReady();
    } else if (p === 51 /* "43" ack */) {
      client.onSioReady();
    } else if (p === 52 /* "44" connect error */) {
      stats.errors++;
    }
  }
}

// ---- per-step figures ----------------------------------------------------------------------

let stats = newStats(-1);
function newStats(step) {
  return {
    step,
    sentByRoom: {},
    recvByRoom: {},
    dup: 0,
    ooo: 0,
    late: 0,
    errors: 0,
    hist: new Map(),
    max: 0,
    frames: 0,
    reported: { recv: 0, dup: 0 }, // what the step's answer counted (see cmdTail)
  };
}

// frames of this step counted so far (each client's distinct messages, summed over rooms)
const recvTotal = () => Object.values(stats.recvByRoom).reduce((a, b) => a + b, 0);

function received(client, content) {
  stats.frames++;
  const parts = content.split("|");
  const step = Number(parts[0]);
  if (step !== stats.step) {
    stats.late++;
    return;
  }
  const sender = parts[1];
  const counter = Number(parts[2]);
  const lat = now() - Number(parts[3]);
  const key = sender + ":" + counter;
  if (client.seen.has(key)) {
    stats.dup++;
    return;
  }
  client.seen.add(key);
  const last = client.lastFrom.get(sender);
  if (last !== undefined && counter < last) stats.ooo++;
  else client.lastFrom.set(sender, counter);
  const room = client.spec.room;
  stats.recvByRoom[room] = (stats.recvByRoom[room] || 0) + 1;
  const b = Math.min(MAX_BUCKET, Math.max(0, Math.floor(lat / BUCKET_MS)));
  stats.hist.set(b, (stats.hist.get(b) || 0) + 1);
  if (lat > stats.max) stats.max = lat;
}

// ---- commands ------------------------------------------------------------------------------

let clients = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function pool(items, concurrency, fn) {
  let i = 0;
  const worker = async () => {
    while (i < items.length) {
      const item = items[i++];
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
}

async function cmdConnect(msg) {
  const t0 = now();
  const fresh = msg.clients.map((spec) => new Client(spec));
  let failed = 0;
  const why = {};
  await pool(fresh, msg.concurrency || 200, async (c) => {
    const r = await c.connect(msg.timeoutMs || 30000);
    if (!r.ok) {
      failed++;
      why[r.why] = (why[r.why] || 0) + 1;
    }
  });
  clients = clients.concat(fresh);
  return { connected: fresh.length - failed, failed, why, seconds: (now() - t0) / 1000 };
}

async function cmdStep(msg) {
  // Send `rate` msg/s spread evenly over this process's senders for `duration` s, then wait
  // `drain` s for the last frames. Only frames of this step count.
  stats = newStats(msg.step);
  for (const c of clients) {
    c.seen.clear();
    c.lastFrom.clear();
  }
  const senders = clients.filter((c) => c.spec.send && c.ws && c.ws.readyState === 1);
  const cpu0 = process.cpuUsage();
  const elu0 = performance.eventLoopUtilization();
  const t0 = now();
  const end = t0 + msg.duration * 1000;
  let sent = 0;
  let rr = 0;
  if (senders.length > 0 && msg.rate > 0) {
    for (;;) {
      const t = now();
      if (t >= end) break;
      const target = Math.floor(((t - t0) / 1000) * msg.rate);
      while (sent < target) {
        const c = senders[rr++ % senders.length];
        c.sendChat(msg.step);
        stats.sentByRoom[c.spec.room] = (stats.sentByRoom[c.spec.room] || 0) + 1;
        sent++;
      }
      await sleep(2);
    }
  } else {
    await sleep(msg.duration * 1000);
  }
  const elu = performance.eventLoopUtilization(elu0);
  const cpu = process.cpuUsage(cpu0);
  const sendSeconds = (now() - t0) / 1000;
  await sleep((msg.drain || 2) * 1000);
  stats.reported = { recv: recvTotal(), dup: stats.dup };
  return {
    step: msg.step,
    sent,
    sendSeconds,
    sentByRoom: { ...stats.sentByRoom },
    recvByRoom: { ...stats.recvByRoom },
    dup: stats.dup,
    ooo: stats.ooo,
    late: stats.late,
    errors: stats.errors,
    hist: Object.fromEntries(stats.hist),
    bucketMs: BUCKET_MS,
    maxMs: stats.max,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    elu: elu.utilization,
    open: clients.filter((c) => c.ws && c.ws.readyState === 1).length,
  };
}

async function cmdTail(msg) {
  // After a failing step: keep counting that step's frames (they still count, as in its drain)
  // until none came for `quiet` s or `max` s passed, to tell frames that were only late from
  // frames never delivered. Counted from what the step's answer reported, not from now:
  // frames may have come between that answer and this call.
  const t0 = now();
  let frames = stats.frames;
  let quietSince = now();
  while (now() - t0 < msg.max * 1000 && now() - quietSince < msg.quiet * 1000) {
    await sleep(100);
    if (stats.frames !== frames) {
      frames = stats.frames;
      quietSince = now();
    }
  }
  return {
    step: stats.step,
    arrived: recvTotal() - stats.reported.recv,
    dup: stats.dup - stats.reported.dup,
    seconds: (now() - t0) / 1000,
  };
}

async function cmdSync(msg) {
  // Every client drops its socket, reconnects at once and sends `sync` for its room with its
  // last seq minus `missed`; time until every client has its `synced`.
  for (const c of clients) c.ws.terminate();
  await sleep(200);
  stats = newStats(-2);
  const t0 = now();
  let failed = 0;
  let synced = 0;
  const times = [];
  await pool(clients, msg.concurrency || 1000, async (c) => {
    const from = Math.max(0, c.lastSeq - msg.missed);
    c.replayed = 0;
    const ts = now();
    const wait = new Promise((resolve) => {
      c.syncDone = resolve;
    });
    const r = await c.connect(msg.timeoutMs || 60000);
    if (!r.ok) {
      failed++;
      return;
    }
    c.ws.send(JSON.stringify({ action: "sync", rooms: { [c.spec.room]: from } }));
    const timeout = sleep(msg.timeoutMs || 60000).then(() => false);
    if ((await Promise.race([wait.then(() => true), timeout])) === true) {
      synced++;
      times.push(now() - ts);
    } else failed++;
    c.syncDone = null;
  });
  times.sort((a, b) => a - b);
  const q = (p) => (times.length ? times[Math.min(times.length - 1, Math.floor(p * times.length))] : null);
  return {
    synced,
    failed,
    seconds: (now() - t0) / 1000,
    replayed: clients.reduce((n, c) => n + c.replayed, 0),
    p50Ms: q(0.5),
    p99Ms: q(0.99),
    maxMs: times.length ? times[times.length - 1] : null,
  };
}

async function cmdHttp(msg) {
  // `concurrency` readers GET random history pages (?before=) for `duration` s.
  const hist = new Map();
  let ok = 0;
  let bad = 0;
  let max = 0;
  const end = now() + msg.duration * 1000;
  const cpu0 = process.cpuUsage();
  const elu0 = performance.eventLoopUtilization();
  const reader = async () => {
    while (now() < end) {
      const t = msg.targets[Math.floor(Math.random() * msg.targets.length)];
      const before = t.maxSeq > msg.limit ? 1 + msg.limit + Math.floor(Math.random() * (t.maxSeq - msg.limit)) : t.maxSeq + 1;
      const t0 = now();
      try {
        const r = await fetch(`${msg.base}/rooms/${t.room}/messages?limit=${msg.limit}&before=${before}`, {
          headers: { authorization: `Bearer ${t.token}` },
        });
        await r.arrayBuffer();
        if (r.status === 200) ok++;
        else bad++;
      } catch {
        bad++;
      }
      const lat = now() - t0;
      const b = Math.min(MAX_BUCKET, Math.floor(lat / BUCKET_MS));
      hist.set(b, (hist.get(b) || 0) + 1);
      if (lat > max) max = lat;
    }
  };
  await Promise.all(Array.from({ length: msg.concurrency }, reader));
  const cpu = process.cpuUsage(cpu0);
  return {
    ok,
    bad,
    seconds: msg.duration,
    hist: Object.fromEntries(hist),
    bucketMs: BUCKET_MS,
    maxMs: max,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    elu: performance.eventLoopUtilization(elu0).utilization,
  };
}

async function cmdClose() {
  for (const c of clients) if (c.ws) c.ws.terminate();
  clients = [];
  return { closed: true };
}

async function cmdStatus() {
  return { open: clients.filter((c) => c.ws && c.ws.readyState === 1).length };
}

const handlers = { status: cmdStatus, connect: cmdConnect, step: cmdStep, tail: cmdTail, sync: cmdSync, http: cmdHttp, close: cmdClose };

const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on("line", (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  chain = chain.then(async () => {
    try {
      out({ ok: true, cmd: msg.cmd, ...(await handlers[msg.cmd](msg)) });
    } catch (e) {
      out({ ok: false, cmd: msg.cmd, error: String((e && e.stack) || e) });
    }
  });
});
rl.on("close", () => chain.then(() => process.exit(0)));
out({ ok: true, cmd: "ready", pid: process.pid });
