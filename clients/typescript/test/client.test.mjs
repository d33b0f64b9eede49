// @parley/client against a running Parley, with Node's own test runner.
//
//   PARLEY_GATEWAYS=http://127.0.0.1:8080[,http://…] \
//   PARLEY_TOKEN_TTL_SECONDS=3 \
//   node --experimental-websocket --test test/
//
// `tests/tests/api/client.rs` starts both topologies and runs this file.
// PARLEY_TOKEN_TTL_SECONDS is the server's AUTH_ACCESS_TOKEN_TTL: the
// renewal test outlives three tokens.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import { test } from "node:test";

import { ParleyClient, ParleyError } from "../dist/parley-client.js";

const GATEWAYS = (process.env.PARLEY_GATEWAYS ?? "http://127.0.0.1:8080").split(",");
const TOKEN_TTL_MS = Number(process.env.PARLEY_TOKEN_TTL_SECONDS ?? "0") * 1000;
const PASSWORD = "correct horse battery staple";
/** Long enough for anything on loopback; a failing test fails here. */
const WAIT_MS = 20_000;

let names = 0;
function unique(prefix) {
  names += 1;
  return `${prefix}${process.pid}x${Date.now().toString(36)}x${names}`;
}

async function signedIn(server, prefix) {
  const client = new ParleyClient({ server });
  const name = unique(prefix);
  await client.register(name, PASSWORD);
  await client.login(name, PASSWORD);
  return client;
}

function within(promise, what) {
  let timeout;
  const timer = new Promise((_, reject) => {
    timeout = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timer]).finally(() => clearTimeout(timeout));
}

/** Collects a room's messages as `[seq, content]`, in the order they come. */
function messagesOf(room) {
  const seen = [];
  const waiters = [];
  room.on("event", (event) => {
    if (event.kind !== "message") return;
    seen.push([event.seq, event.data.content]);
    for (const waiter of [...waiters]) {
      if (seen.length >= waiter.count) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  });
  return {
    seen,
    /** Resolves once `count` messages have come. */
    until(count) {
      if (seen.length >= count) return Promise.resolve(seen);
      return within(new Promise((resolve) => waiters.push({ count, resolve })), `${count} messages`).then(() => seen);
    },
  };
}

/** Resolves at the next `state` event of `connection` that is `state`. */
function stateReached(connection, state) {
  if (connection.state === state) return Promise.resolve();
  return within(
    new Promise((resolve) => {
      const off = connection.on("state", (change) => {
        if (change.state === state) {
          off();
          resolve();
        }
      });
    }),
    `the connection to be ${state}`,
  );
}

/** A TCP proxy whose connections the test cuts, as a network would. */
async function proxyTo(server) {
  const upstream = new URL(server);
  const open = new Set();
  const proxy = net.createServer((client) => {
    const backend = net.connect(Number(upstream.port), upstream.hostname);
    open.add(client);
    open.add(backend);
    client.pipe(backend).pipe(client);
    const drop = () => {
      client.destroy();
      backend.destroy();
      open.delete(client);
      open.delete(backend);
    };
    client.on("error", drop).on("close", drop);
    backend.on("error", drop).on("close", drop);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${proxy.address().port}`,
    /** Drops every connection open now; new ones pass. */
    cut() {
      for (const socket of [...open]) socket.destroy();
    },
    close() {
      this.cut();
      proxy.close();
    },
  };
}

test("messages cross gateways with their seqs, and errors say what to do", async () => {
  const alice = await signedIn(GATEWAYS[0], "alice");
  const bob = await signedIn(GATEWAYS[GATEWAYS.length - 1], "bob");
  const roomId = unique("room");
  const [alices, bobs] = [alice.connect(), bob.connect()];
  const atAlice = await within(alices.join(roomId), "alice's join");
  const atBob = await within(bobs.join(roomId), "bob's join");
  const [seenByAlice, seenByBob] = [messagesOf(atAlice), messagesOf(atBob)];

  const first = await within(atAlice.send("hello bob"), "an ack");
  const second = await within(atBob.send("hello alice"), "an ack");
  assert.deepEqual([first.seq, second.seq], [1, 2]);
  const expected = [
    [1, "hello bob"],
    [2, "hello alice"],
  ];
  assert.deepEqual(await seenByAlice.until(2), expected);
  assert.deepEqual(await seenByBob.until(2), expected);

  // The same client_id again is the same message.
  const again = await within(atAlice.send("hello again", { clientId: first.client_id }), "an ack");
  assert.deepEqual([again.seq, again.message_id], [1, first.message_id]);
  const page = await bob.history(roomId);
  assert.equal(page.messages.length, 2);

  // What the server refuses says what to do.
  const empty = await atBob.send("   ").catch((err) => err);
  assert.ok(empty instanceof ParleyError);
  assert.deepEqual([empty.code, empty.action], ["INVALID_ARGUMENT", "fix_input"]);
  // A room left is answered at once, not left waiting.
  atBob.leave();
  const left = await within(atBob.send("after leaving").catch((err) => err), "the refusal");
  assert.equal(left.code, "CANCELLED");
  const stranger = new ParleyClient({ server: GATEWAYS[0] });
  const refused = await stranger.login(unique("nobody"), PASSWORD).catch((err) => err);
  assert.deepEqual([refused.status, refused.action], [401, "sign_in"]);
  alices.close();
  bobs.close();
});

test("cut connections lose and repeat nothing", async () => {
  const proxy = await proxyTo(GATEWAYS[GATEWAYS.length - 1]);
  const alice = await signedIn(GATEWAYS[0], "alice");
  const bob = await signedIn(proxy.url, "bob");
  const roomId = unique("cut");
  const [alices, bobs] = [alice.connect(), bob.connect()];
  const atAlice = await within(alices.join(roomId), "alice's join");
  const atBob = await within(bobs.join(roomId), "bob's join");
  const seen = messagesOf(atBob);

  // Alice sends while bob's connection is cut three times; bob sends
  // across the cuts too.
  const COUNT = 60;
  const sending = (async () => {
    for (let n = 1; n <= COUNT; n++) await atAlice.send(`m${n}`);
  })();
  for (let cut = 0; cut < 3; cut++) {
    await seen.until((cut + 1) * 10);
    const lost = stateReached(bobs, "reconnecting");
    proxy.cut();
    await lost;
    // Sent while disconnected: goes out, once, after the rejoin.
    const ack = await within(atBob.send(`bob after cut ${cut}`), "an ack after the rejoin");
    assert.ok(ack.seq > 0);
  }
  await within(sending, "alice's sends");
  const total = COUNT + 3;
  const got = await seen.until(total);
  assert.deepEqual(
    got.map(([seq]) => seq),
    Array.from({ length: total }, (_, i) => i + 1),
    "each once, in order",
  );
  assert.deepEqual(
    got.map(([, content]) => content).filter((c) => c.startsWith("m")),
    Array.from({ length: COUNT }, (_, i) => `m${i + 1}`),
  );
  const page = await alice.history(roomId, { limit: 200 });
  assert.equal(page.messages.length, total, "no send stored twice");
  alices.close();
  bobs.close();
  proxy.close();
});

test("a send whose ack is lost to a dropped connection is stored once", async () => {
  const proxy = await proxyTo(GATEWAYS[0]);
  const bob = await signedIn(proxy.url, "bob");
  const roomId = unique("lost");
  const connection = bob.connect();
  const room = await within(connection.join(roomId), "the join");
  for (let n = 0; n < 5; n++) {
    // The frame is on its way when the connection drops: the ack (if the
    // server stored it at all) is lost, and the send goes out again.
    const sent = room.send(`once ${n}`);
    proxy.cut();
    const ack = await within(sent, "the ack after the rejoin");
    assert.equal(ack.seq, n + 1);
  }
  const page = await bob.history(roomId);
  assert.deepEqual(
    page.messages.map((m) => m.content),
    ["once 0", "once 1", "once 2", "once 3", "once 4"],
  );
  connection.close();
  proxy.close();
});

test("tokens are renewed under a live connection without a disconnect", { skip: TOKEN_TTL_MS === 0 }, async () => {
  const alice = await signedIn(GATEWAYS[0], "alice");
  const renewed = [];
  alice.on("session", (session) => renewed.push(session));
  const connection = alice.connect();
  const room = await within(connection.join(unique("long")), "the join");
  const seen = messagesOf(room);
  const changes = [];
  connection.on("state", (change) => changes.push(change.state));
  // Three lifetimes of the first token: without renewals in band, the
  // gateway would have closed the connection with 4001.
  for (let n = 1; n <= 3; n++) {
    await new Promise((resolve) => setTimeout(resolve, TOKEN_TTL_MS));
    const ack = await within(room.send(`still here ${n}`), "an ack");
    const got = await seen.until(n);
    assert.deepEqual(got[n - 1], [ack.seq, `still here ${n}`]);
  }
  assert.deepEqual(changes, [], "never reconnected");
  assert.ok(renewed.length >= 3, `renewed ${renewed.length} times`);
  await alice.me();
  connection.close();
});

test("attachments go up and come down whole, and travel on messages", async () => {
  const alice = await signedIn(GATEWAYS[0], "alice");
  const bob = await signedIn(GATEWAYS[GATEWAYS.length - 1], "bob");
  const bytes = randomBytes(300 * 1024);
  const progress = [];
  const attachment = await alice.upload(bytes, {
    filename: "notes.bin",
    contentType: "application/octet-stream",
    onProgress: (sent, total) => progress.push([sent, total]),
  });
  assert.equal(attachment.size, bytes.length);
  assert.equal(attachment.sha256, createHash("sha256").update(bytes).digest("hex"));
  assert.deepEqual(progress.at(-1), [bytes.length, bytes.length]);

  const roomId = unique("files");
  const [alices, bobs] = [alice.connect(), bob.connect()];
  const atAlice = await within(alices.join(roomId), "alice's join");
  const atBob = await within(bobs.join(roomId), "bob's join");
  const arrived = within(
    new Promise((resolve) => atBob.on("event", (event) => event.kind === "message" && resolve(event))),
    "the message",
  );
  await atAlice.send("", { attachments: [attachment.id] });
  const message = await arrived;
  assert.deepEqual(
    message.data.attachments.map((a) => [a.id, a.filename, a.size]),
    [[attachment.id, "notes.bin", bytes.length]],
  );
  const download = await bob.download(attachment.id);
  assert.equal(download.headers.get("etag")?.replaceAll('"', ""), attachment.sha256);
  assert.ok(Buffer.from(await download.arrayBuffer()).equals(bytes), "the same bytes");
  const missing = await bob.download("no-such-attachment").catch((err) => err);
  assert.deepEqual([missing.status, missing.action], [404, "fix_input"]);
  alices.close();
  bobs.close();
});
