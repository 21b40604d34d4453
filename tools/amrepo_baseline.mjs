// automerge-repo's own Node sync server, the baseline of tools/bench_amrepo.py: a Repo
// with the NodeWSServerAdapter on PORT, holding the document saved in FILE under DOC_ID.
// Run with tests/js as the working directory (its node_modules), script on stdin.
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { WebSocketServer } from "ws"
import fs from "node:fs"

const [port, file, docId] = process.env.BASELINE_ARGS.split(" ")
const server = new WebSocketServer({ port: Number(port), maxPayload: 64 * 1024 * 1024 })
const repo = new Repo({ network: [new NodeWSServerAdapter(server)], sharePolicy: async () => false })
repo.import(fs.readFileSync(file), { docId })
server.on("listening", () => console.log("listening"))
