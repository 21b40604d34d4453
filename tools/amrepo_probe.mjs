// The Node client of tools/bench_amrepo.py: opens URL's document, prints how long the
// first sync took and how many bytes the server sent, then, for each stdin line "PATH
// VALUE" on the pipe PROBE_FD, prints the time (ms, performance.timeOrigin + now) at which
// doc[PATH] == VALUE ("seen") and at which the last frame before it arrived ("arrived").
// Run with tests/js as the working directory (its node_modules), script on stdin.
import { Repo, cbor } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import fs from "node:fs"
import readline from "node:readline"

const [wsUrl, docUrl] = process.env.PROBE_ARGS.split(" ")
const now = () => performance.timeOrigin + performance.now()
const adapter = new WebSocketClientAdapter(wsUrl, 1000)
let bytes = 0, frames = 0, arrived = 0
const received = adapter.receiveMessage.bind(adapter)
adapter.receiveMessage = data => {
  arrived = now(); bytes += data.byteLength; frames += 1; received(data)
}
const joined = new Promise(resolve => adapter.once("peer-candidate", resolve))
const repo = new Repo({ network: [adapter] })
const started = now()
await joined
const handle = await repo.find(docUrl)
const products = Object.keys(handle.doc().products).length
console.log(JSON.stringify({ first_sync_ms: now() - started, bytes, frames, products }))

let wanted = null
const check = doc => {
  if (wanted && String(doc.products[wanted[0]]?.price) === wanted[1]) {
    wanted = null
    console.log(JSON.stringify({ seen: now(), arrived }))
  }
}
handle.on("change", ({ doc }) => check(doc))
const commands = fs.createReadStream(null, { fd: Number(process.env.PROBE_FD) })
for await (const line of readline.createInterface({ input: commands })) {
  if (line === "quit") { await repo.shutdown(); process.exit(0) }
  wanted = line.split(" ")
  check(handle.doc())  // it may have come before this line was read
}
