// Opens a websocket to URL and prints "open" or the HTTP status that refused it.
import WebSocket from "ws"

const socket = new WebSocket(process.argv[2])
socket.on("open", () => { console.log("open"); socket.close() })
socket.on("unexpected-response", (_, response) => { console.log(response.statusCode); process.exit(0) })
socket.on("error", error => { console.log("error " + error.message); process.exit(0) })
