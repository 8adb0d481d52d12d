// The Node socket.io peer of `make bench`: one node of two behind the same Redis
// (@socket.io/redis-adapter). Chat semantics only: "join" a room (acked), "chat" is emitted to
// every member of the message's room, the sender included, on every node.
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.BENCH_PORT);
const redisUrl = process.env.BENCH_REDIS_URL;

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const server = http.createServer((req, res) => {
    res.statusCode = req.url === "/healthz" ? 200 : 404;
    res.end();
  });
  const io = new Server(server, {
    transports: ["websocket"],
    perMessageDeflate: false,
    serveClient: false,
    adapter: createAdapter(pub, sub),
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack();
    });
    socket.on("chat", (msg) => {
      if (msg && typeof msg.room === "string") io.to(msg.room).emit("chat", msg);
    });
  });
  server.listen(port, "127.0.0.1");
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
