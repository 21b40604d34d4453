// An automerge-repo client driven by a test: one JSON command per stdin line, one JSON
// answer per stdout line.  Usage: node client.mjs WS_URL AUTOMERGE_URL [ACTOR_HEX]
//
// Commands: {"op": "read"} -> {"doc": ...}
//           {"op": "wait", "path": [...], "value": v} -> {"doc": ...} once doc[path] == v
//           {"op": "change", "edits": [[path, value, kind]]}  (kind: string, immutable,
//               int, float, counter, object) -> {"heads": [...]}
//           {"op": "errors"} -> {"errors": [the messages of the server's error frames]}
//           {"op": "close"} -> {} and exit
import * as A from "@automerge/automerge"
import { Repo, cbor } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import readline from "node:readline"

const [wsUrl, docUrl, actor] = process.argv.slice(2)
const adapter = new WebSocketClientAdapter(wsUrl, 300)
const errors = []
const received = adapter.receiveMessage.bind(adapter)
adapter.receiveMessage = bytes => {
  try {
    const message = cbor.decode(new Uint8Array(bytes))
    if (message.type === "error") errors.push(message.message)
  } catch {}
  received(bytes)
}
// Wait for the server's "peer" before find(): a find() before it reports unavailable.
const joined = new Promise(resolve => adapter.once("peer-candidate", resolve))
const repo = new Repo({ network: [adapter] })
await joined
const handle = await repo.find(docUrl)
if (actor) handle.update(doc => A.clone(doc, { actor }))

const plain = () => JSON.parse(JSON.stringify(handle.doc()))
const at = (doc, path) => path.reduce((o, k) => (o == null ? undefined : o[k]), doc)
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b)

function make(value, kind) {
  switch (kind) {
    case "immutable": return new A.ImmutableString(value)
    case "counter": return new A.Counter(value)
    case "float": return Number(value)
    default: return value  // string (Text), int, object (its strings become Text)
  }
}

function answer(data) { process.stdout.write(JSON.stringify(data) + "\n") }

const waiting = []
handle.on("change", () => {
  for (const w of [...waiting]) if (same(at(plain(), w.path), w.value)) {
    waiting.splice(waiting.indexOf(w), 1)
    answer({ doc: plain() })
  }
})

answer({ ready: true, doc: plain() })
for await (const line of readline.createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line)
  if (cmd.op === "read") answer({ doc: plain() })
  else if (cmd.op === "wait") {
    if (same(at(plain(), cmd.path), cmd.value)) answer({ doc: plain() })
    else waiting.push(cmd)
  } else if (cmd.op === "change") {
    handle.change(doc => {
      for (const [path, value, kind] of cmd.edits) {
        let obj = doc
        for (const key of path.slice(0, -1)) obj = obj[key] ??= {}
        const last = path[path.length - 1]
        if (value === null) delete obj[last]
        else obj[last] = make(value, kind)
      }
    })
    answer({ heads: A.getHeads(handle.doc()) })
  } else if (cmd.op === "errors") answer({ errors })
  else if (cmd.op === "close") {
    answer({})
    await repo.shutdown()
    process.exit(0)
  }
}
