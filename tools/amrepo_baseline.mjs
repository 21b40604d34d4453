// automerge-repo's own Node sync server, the baseline of tools/bench_amrepo.py: a Repo
// with the NodeWSServerAdapter on PORT, holding the document saved in FILE under DOC_ID.
// For each line "ID PRICE" on the pipe PROBE_FD it sets products[ID].price = PRICE itself
// (the same edit the bench makes on the till through its HTTP API).
// Run with tests/js as the working directory (its node_modules), script on stdin.
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { WebSocketServer } from "ws"
import fs from "node:fs"
import readline from "node:readline"

const [port, file, docId] = process.env.BASELINE_ARGS.split(" ")
const server = new WebSocketServer({ port: Number(port), maxPayload: 64 * 1024 * 1024 })
const repo = new Repo({ network: [new NodeWSServerAdapter(server)], sharePolicy: async () => false })
const handle = repo.import(fs.readFileSync(file), { docId })
server.on("listening", () => console.log("listening"))
const commands = fs.createReadStream(null, { fd: Number(process.env.PROBE_FD) })
for await (const line of readline.createInterface({ input: commands })) {
  const [id, price] = line.split(" ")
  handle.change(doc => { doc.products[id].price = Number(price) })
}
