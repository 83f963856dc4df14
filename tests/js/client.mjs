// The official JavaScript Socket.IO client against the realtime server, for
// tests/integration/test_pages.py. Prints one JSON line per thing that happens:
//   {"type": "connect", "transport": ...} | {"type": "event", "event": name, "data": payload}
//   {"type": "connect_error", "message": ...}
// and exits when its standard input closes or after the given number of seconds.
//
//   node client.mjs URL COMPETITION [TOKEN|-] [websocket|polling] [SECONDS]
import { io } from "socket.io-client";

const [url, competition, token = "-", transport = "websocket", seconds = "60"] = process.argv.slice(2);
const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

const auth = { competition };
if (token !== "-") auth.token = token;
const socket = io(url, { auth, transports: [transport], reconnection: false });

socket.on("connect", () => print({ type: "connect", transport: socket.io.engine.transport.name }));
socket.on("connect_error", (err) => {
  print({ type: "connect_error", message: err.message });
  process.exit(0);
});
socket.onAny((event, data) => print({ type: "event", event, data }));

const stop = () => { socket.disconnect(); process.exit(0); };
process.stdin.on("end", stop);
process.stdin.resume();
setTimeout(stop, Number(seconds) * 1000);
