// Streams a room through faults another program causes (the Rust test
// `tests/tests/api/client_faults.rs` kills a chat replica when this prints
// "seen 20", restarts the streaming user's gateway at "seen 50", and brings
// the replica back at "streamed", answering "go" on standard input).
//
//   node --experimental-websocket test/faults.mjs SENDER_URL STREAMER_URL COUNT PACE_MS
//
// The sender sends COUNT messages PACE_MS apart; the streamer sends one
// more across the restart. Exits 0 after printing
// {"seen": N, "stored": N} when every message arrived once and in order,
// else 1 with the reason on standard error.

import { ParleyClient } from "../dist/parley-client.js";

const [senderUrl, streamerUrl, countArg, paceArg] = process.argv.slice(2);
const COUNT = Number(countArg);
const PACE_MS = Number(paceArg);
const PASSWORD = "correct horse battery staple";
const TOTAL = COUNT + 1;
/** When the streamer sends its own message: after the restart, with a 150-message run. */
const ACROSS_AT = Math.min(60, Math.floor(COUNT / 2));

function fail(reason) {
  console.error(reason);
  process.exit(1);
}

async function signedIn(server, prefix) {
  const client = new ParleyClient({ server });
  const name = `${prefix}${process.pid}x${Date.now().toString(36)}`;
  await client.register(name, PASSWORD);
  await client.login(name, PASSWORD);
  return client;
}

const timeout = setTimeout(() => fail("timed out"), 90_000);
const alice = await signedIn(senderUrl, "alice");
const bob = await signedIn(streamerUrl, "bob");
const roomId = `faults${process.pid}x${Date.now().toString(36)}`;
const atAlice = await alice.connect().join(roomId);
const atBob = await bob.connect().join(roomId);

const seen = [];
let across = null;
const all = new Promise((resolve) => {
  atBob.on("event", (event) => {
    if (event.kind !== "message") return;
    seen.push([event.seq, event.data.content]);
    if (seen.length === 20 || seen.length === 50) console.log(`seen ${seen.length}`);
    if (seen.length === ACROSS_AT) across = atBob.send("bob across the restart");
    if (seen.length === TOTAL) resolve();
  });
});
for (let n = 1; n <= COUNT; n++) {
  await atAlice.send(`m${n}`);
  await new Promise((resolve) => setTimeout(resolve, PACE_MS));
}
await all;
console.log("streamed");
await new Promise((resolve) => process.stdin.once("data", resolve));
process.stdin.pause();
const ack = await across;
if (!(ack.seq > 0)) fail(`the send across the restart was not stored: ${JSON.stringify(ack)}`);
const seqs = seen.map(([seq]) => seq).join(",");
const expected = Array.from({ length: TOTAL }, (_, i) => i + 1).join(",");
if (seqs !== expected) fail(`not each once in order: ${seqs}`);
const alices = seen.map(([, content]) => content).filter((c) => c.startsWith("m")).join(",");
if (alices !== Array.from({ length: COUNT }, (_, i) => `m${i + 1}`).join(",")) fail(`alice's order: ${alices}`);
const page = await alice.history(roomId, { limit: 200 });
clearTimeout(timeout);
console.log(JSON.stringify({ seen: seen.length, stored: page.messages.length }));
process.exit(0);
