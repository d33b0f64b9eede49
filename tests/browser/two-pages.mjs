// Two users chat through Parley's web client in headless Chromium.
//
// Usage: node two-pages.mjs <base_url>      e.g. node two-pages.mjs http://127.0.0.1:8080
// Env:   CHROMIUM    path of the Chromium binary (default /usr/bin/chromium)
//        SCREENSHOT  if set, a PNG of page A is saved there at the end
//        SCREENSHOT_DIR  if set, desktop.png (page A) and phone.png (page B)
//                    are saved there mid-conversation, for the README
//        MAX_CONTENT_BYTES  the server's CHAT_MAX_CONTENT_BYTES (default
//                    600, as the Rust test starts it), below the client's
//                    own limit of 4096, so an over-long message fails there
//
// Exits 0 and prints "ok: two pages chatted in room <id>" on success; on
// failure prints the step, what was expected, and both pages' console errors,
// then exits 1.
import { chromium } from "playwright-core";
import { existsSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { crc32, deflateSync } from "node:zlib";

const TIMEOUT = 15_000;
const OVERALL_TIMEOUT = 180_000;

const baseArg = process.argv[2];
if (!baseArg || !/^https?:\/\//.test(baseArg)) {
  console.error("usage: node two-pages.mjs <base_url>   (e.g. http://127.0.0.1:8080)");
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, "");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(executablePath)) {
  console.error(`FAIL: no Chromium at ${executablePath} (install Debian's package: apt-get install -y chromium, or set CHROMIUM)`);
  process.exit(1);
}

const tag = () => randomBytes(4).toString("hex");
const run = tag();
const roomId = `pw-${run}-${tag()}`;
const alice = `alice_${tag()}`;
const bob = `bob_${tag()}`;
const password = `pw-${tag()}-${tag()}-secret`; // 27 characters
const exact = (s) => new RegExp(`^\\s*${s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s*$`);
const tid = (id) => `[data-testid="${id}"]`;

let currentStep = "start";
let currentExpect = "";
const pages = []; // {label, page, consoleErrors, pageErrors}
let browser;

function fail(message) {
  const err = new Error(message);
  err.stepFailure = true;
  throw err;
}

async function step(name, expectation, fn) {
  currentStep = name;
  currentExpect = expectation;
  await fn();
  for (const p of pages) {
    if (p.pageErrors.length) fail(`page ${p.label} threw a JavaScript error: ${p.pageErrors[0]}`);
  }
}

function track(label, page) {
  const entry = { label, page, consoleErrors: [], pageErrors: [] };
  page.on("console", (msg) => {
    if (msg.type() === "error") entry.consoleErrors.push(msg.text());
  });
  page.on("pageerror", (err) => entry.pageErrors.push(String(err && err.stack ? err.stack : err)));
  pages.push(entry);
  return entry;
}

async function visibleErrors(page) {
  try {
    return await page.evaluate(() =>
      ["auth-error", "sidebar-error", "send-error", "banner", "conn-status"]
        .map((id) => {
          const el = document.querySelector(`[data-testid="${id}"]`);
          return el && !el.hidden && el.textContent.trim() ? `${id}: ${el.textContent.trim()}` : null;
        })
        .filter(Boolean)
    );
  } catch {
    return [];
  }
}

// Waits for one of two locators; returns which one showed up.
async function either(ok, bad, what) {
  await ok.or(bad).filter({ visible: true }).first().waitFor({ state: "visible", timeout: TIMEOUT });
  if (await bad.first().isVisible()) {
    fail(`${what}: the page shows an error: ${(await bad.first().textContent()).trim()}`);
  }
}

async function signUpAndIn({ page }, username) {
  await step(`open ${base}/ as ${username}`, "the login form with username and password inputs", async () => {
    const res = await page.goto(`${base}/`, { waitUntil: "load", timeout: TIMEOUT });
    if (!res || !res.ok()) fail(`GET / answered ${res ? res.status() : "nothing"}`);
    await page.locator(tid("username-input")).waitFor({ state: "visible", timeout: TIMEOUT });
  });
  await step(`register ${username}`, `registering logs in: the header shows "${username}" and the connection becomes online`, async () => {
    await page.locator(tid("username-input")).fill(username);
    await page.locator(tid("password-input")).fill(password);
    await page.locator(tid("register-button")).click();
    await either(page.locator(tid("current-user"), { hasText: username }), page.locator(tid("auth-error")), "register");
    await page.locator(`${tid("conn-status")}[data-state="online"]`).waitFor({ timeout: TIMEOUT });
  });
  await step(`${username} joins room ${roomId}`, `room ${roomId} listed, shown, and joined (own name in the member list)`, async () => {
    await page.locator(tid("room-id-input")).fill(roomId);
    await page.locator(tid("join-button")).click();
    await page.locator(`${tid("room-item")}[data-room-id="${roomId}"]`).waitFor({ state: "attached", timeout: TIMEOUT });
    await page.locator(tid("room-title"), { hasText: roomId }).waitFor({ timeout: TIMEOUT });
    await member(page, username).waitFor({ timeout: TIMEOUT });
  });
}

function member(page, name) {
  return page
    .locator(tid("member-item"))
    .filter({ has: page.locator(tid("member-name"), { hasText: exact(name) }) })
    .first();
}

function messageItem(page, { sender, content, own, status }) {
  let sel = tid("message-item");
  if (own !== undefined) sel += `[data-own="${own}"]`;
  if (status) sel += `[data-status="${status}"]`;
  let loc = page.locator(sel).filter({ has: page.locator(tid("message-content"), { hasText: exact(content) }) });
  if (sender) loc = loc.filter({ has: page.locator(tid("message-sender"), { hasText: exact(sender) }) });
  return loc.first();
}

// A real PNG of width × height (an RGB gradient), made here: signature,
// IHDR, one IDAT of filtered rows, IEND.
function png(width, height) {
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "latin1");
    data.copy(out, 8);
    out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // RGB
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      rows[row + 1 + x * 3] = (x * 255) / width;
      rows[row + 2 + x * 3] = (y * 255) / height;
      rows[row + 3 + x * 3] = 160;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

// Hands `files` ({name, type, text}) to the page as a paste into the
// composer or a drop on the conversation, as a person would.
async function pasteOrDrop(page, how, files) {
  await page.evaluate(
    ([how, files]) => {
      const data = new DataTransfer();
      for (const f of files) data.items.add(new File([f.text], f.name, { type: f.type }));
      if (how === "paste") {
        const ev = new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
        document.getElementById("message-input").dispatchEvent(ev);
      } else {
        const room = document.getElementById("room");
        for (const type of ["dragenter", "dragover", "drop"]) {
          room.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
        }
      }
    },
    [how, files]
  );
}

async function sendMessage(page, content) {
  await page.locator(tid("message-input")).fill(content);
  await page.locator(tid("send-button")).click();
}

// On a narrow screen the room list is behind the "Rooms" button.
async function showSidebar(page) {
  if (!(await page.locator(tid("join-button")).isVisible())) {
    await page.locator(tid("sidebar-toggle")).click();
    await page.locator(tid("join-button")).waitFor({ state: "visible", timeout: TIMEOUT });
  }
}

async function openRoom(page, id) {
  await showSidebar(page);
  await page.locator(`${tid("room-item")}[data-room-id="${id}"] button`).click();
  await page.locator(tid("room-title"), { hasText: id }).waitFor({ timeout: TIMEOUT });
}

function badge(page, id) {
  return page.locator(`${tid("room-item")}[data-room-id="${id}"] ${tid("unread-badge")}`);
}

function reaction(page, item, emoji) {
  return item.locator(`${tid("reaction-chip")}[data-emoji="${emoji}"]`);
}

// Waits for the element to carry the attribute value; Playwright watches
// the page, so nothing polls here.
async function waitForAttr(locator, name, value) {
  await locator.and(locator.page().locator(`[${name}="${value}"]`)).waitFor({ timeout: TIMEOUT });
}

async function main() {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
      "--no-first-run",
    ],
  });
  // Two contexts: two separate users, cookies and sessionStorage apart.
  // B has a phone-sized screen, so the narrow layout is exercised too.
  const ctxA = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const ctxB = await browser.newContext({ viewport: { width: 390, height: 800 } });
  const A = track("A", await ctxA.newPage());
  const B = track("B", await ctxB.newPage());
  for (const { page } of [A, B]) page.setDefaultTimeout(TIMEOUT);

  await signUpAndIn(A, alice);
  await signUpAndIn(B, bob);

  const hello = `hello from alice ${tag()}`;
  await step("A sends a message", `B shows "${hello}" from ${alice}`, async () => {
    await sendMessage(A.page, hello);
    await messageItem(B.page, { sender: alice, content: hello, own: false }).waitFor({ timeout: TIMEOUT });
  });
  await step("A sees its own message acknowledged", `A shows "${hello}" as its own, no longer pending`, async () => {
    await messageItem(A.page, { sender: alice, content: hello, own: true, status: "sent" }).waitFor({ timeout: TIMEOUT });
    const pending = await A.page.locator(`${tid("message-item")}[data-status="pending"]`).count();
    const failed = await A.page.locator(`${tid("message-item")}[data-status="failed"]`).count();
    if (pending + failed > 0) fail(`A still has ${pending} pending and ${failed} failed messages`);
  });

  const again = `and one more thing ${tag()}`;
  await step("A's messages in a row share a header", `A's "${again}" right after "${hello}" is grouped under it on both pages`, async () => {
    await sendMessage(A.page, again);
    for (const { page } of [A, B]) {
      await messageItem(page, { sender: alice, content: again }).and(page.locator(".msg.grouped")).waitFor({ timeout: TIMEOUT });
    }
    if (await messageItem(B.page, { sender: alice, content: hello }).and(B.page.locator(".msg.grouped")).count()) {
      fail("the first message of a run keeps its header");
    }
  });

  const reply = `hi alice, bob here ${tag()}`;
  await step("B replies", `A shows "${reply}" from ${bob}, and B shows it as its own`, async () => {
    await sendMessage(B.page, reply);
    await messageItem(A.page, { sender: bob, content: reply, own: false }).waitFor({ timeout: TIMEOUT });
    await messageItem(B.page, { sender: bob, content: reply, own: true, status: "sent" }).waitFor({ timeout: TIMEOUT });
  });

  await step("B types", `A shows "${bob} is typing…"`, async () => {
    await B.page.locator(tid("message-input")).pressSequentially("still typ");
    await A.page.locator(tid("typing-indicator"), { hasText: bob }).waitFor({ timeout: TIMEOUT });
  });
  await step("typing indicator expires", "A's typing indicator empties a few seconds after B stops typing", async () => {
    await A.page.waitForFunction(
      (sel) => {
        const el = document.querySelector(sel);
        return el && el.textContent.trim() === "";
      },
      tid("typing-indicator"),
      { timeout: TIMEOUT }
    );
  });

  await step("member lists", `A's member list shows ${bob} and B's shows ${alice}`, async () => {
    await member(A.page, bob).waitFor({ timeout: TIMEOUT });
    await member(B.page, alice).waitFor({ timeout: TIMEOUT });
  });

  const answer = `quoting you, alice ${tag()}`;
  await step("B replies to A's message", `A shows "${answer}" with a quote of "${hello}"`, async () => {
    const item = messageItem(B.page, { sender: alice, content: hello });
    await item.locator(tid("action-reply")).click();
    await B.page.locator(tid("compose-context"), { hasText: hello }).waitFor({ timeout: TIMEOUT });
    await sendMessage(B.page, answer);
    const shown = messageItem(A.page, { sender: bob, content: answer });
    await shown.locator(tid("message-reply-quote"), { hasText: hello }).waitFor({ timeout: TIMEOUT });
  });

  const edited = `hello again, edited ${tag()}`;
  await step("A edits its message", `B shows "${edited}" marked edited, and B's quote follows`, async () => {
    const item = messageItem(A.page, { sender: alice, content: hello, own: true });
    await item.locator(tid("action-edit")).click();
    await A.page.locator(`${tid("compose-context")}[data-mode="edit"]`).waitFor({ timeout: TIMEOUT });
    await sendMessage(A.page, edited);
    const shown = messageItem(B.page, { sender: alice, content: edited });
    await shown.locator(tid("message-edited")).waitFor({ timeout: TIMEOUT });
    await B.page.locator(tid("message-reply-quote"), { hasText: edited }).waitFor({ timeout: TIMEOUT });
  });

  await step("B and A react", "a 👍 on A's message, counted 1 then 2, highlighted for whoever reacted", async () => {
    const onB = messageItem(B.page, { sender: alice, content: edited });
    await onB.locator(tid("action-react")).click();
    await onB.locator(`${tid("react-option")}[data-emoji="👍"]`).click();
    const onA = messageItem(A.page, { sender: alice, content: edited });
    await waitForAttr(reaction(A.page, onA, "👍"), "data-count", "1");
    await waitForAttr(reaction(A.page, onA, "👍"), "data-mine", "false");
    await waitForAttr(reaction(B.page, onB, "👍"), "data-mine", "true");
    await reaction(A.page, onA, "👍").click();
    await waitForAttr(reaction(B.page, onB, "👍"), "data-count", "2");
    await waitForAttr(reaction(A.page, onA, "👍"), "data-mine", "true");
  });

  const caption = `the view from here ${tag()}`;
  await step("A attaches an image", `B shows the thumbnail of A's 480×320 PNG under "${caption}", loaded, linking to the full image`, async () => {
    await A.page.locator(tid("file-input")).setInputFiles({ name: "view.png", mimeType: "image/png", buffer: png(480, 320) });
    await A.page.locator(`${tid("attachment-upload")}[data-status="done"]`).waitFor({ timeout: TIMEOUT });
    await sendMessage(A.page, caption);
    const shown = messageItem(B.page, { sender: alice, content: caption });
    const thumb = shown.locator(tid("attachment-thumbnail"));
    await thumb.waitFor({ timeout: TIMEOUT });
    await B.page.waitForFunction(
      (img) => img.complete && img.naturalWidth === 320 && img.naturalHeight === 213,
      await thumb.elementHandle(),
      { timeout: TIMEOUT }
    );
    const href = await shown.locator(tid("attachment-image")).getAttribute("href");
    const full = new URL(href, B.page.url());
    if (full.origin !== new URL(B.page.url()).origin || !/^\/api\/v1\/attachments\/[0-9a-f]{32}$/.test(full.pathname) || !full.searchParams.get("token")) {
      fail(`the thumbnail links to ${href}`);
    }
    if ((await A.page.locator(tid("attachment-upload")).count()) !== 0) fail("the composer's tray is not empty after sending");
  });

  await step("A pastes and drops files", "both go to the tray; one removed, the other sent alone, shown on B as a download link with its name and size", async () => {
    await pasteOrDrop(A.page, "paste", [{ name: "pasted.txt", type: "text/plain", text: "pasted words" }]);
    await pasteOrDrop(A.page, "drop", [{ name: "notes.txt", type: "text/plain", text: "notes dropped on the room" }]);
    await A.page.locator(`${tid("attachment-upload")}[data-status="done"]`).nth(1).waitFor({ timeout: TIMEOUT });
    await A.page.locator(tid("attachment-upload"), { hasText: "pasted.txt" }).locator(tid("attachment-remove")).click();
    await A.page.locator(tid("send-button")).click();
    const link = B.page.locator(tid("attachment-file"), { hasText: "notes.txt" });
    await link.waitFor({ timeout: TIMEOUT });
    const text = (await link.textContent()) || "";
    const size = `${Buffer.byteLength("notes dropped on the room")} B`;
    if (!text.includes(size)) fail(`the link says "${text}", not the size ${size}`);
    if ((await B.page.locator(tid("attachment-file"), { hasText: "pasted.txt" }).count()) !== 0) fail("the removed file was sent");
  });

  await step("uploaded pages cannot run in Parley's origin", "an HTML and an SVG attachment opened by URL are downloaded, not rendered, and no script of theirs touches the origin's storage", async () => {
    const token = await A.page.evaluate(() => JSON.parse(sessionStorage.getItem("parley.tokens")).accessToken);
    const hostile = [
      ["evil.html", "text/html", "<html><body><script>localStorage.setItem('owned', 'html')</script>hi</body></html>"],
      ["evil.svg", "image/svg+xml", '<svg xmlns="http://www.w3.org/2000/svg"><script>localStorage.setItem("owned", "svg")</script></svg>'],
    ];
    for (const [name, type, body] of hostile) {
      const stored = await A.page.evaluate(
        async ([name, type, body, token]) => {
          const r = await fetch(`/api/v1/attachments?filename=${name}`, {
            method: "POST",
            headers: { Authorization: `Bearer ${token}`, "Content-Type": type },
            body,
          });
          return r.json();
        },
        [name, type, body, token]
      );
      if (!stored.id) fail(`uploading ${name}: ${JSON.stringify(stored)}`);
      const page = await ctxA.newPage();
      const download = page.waitForEvent("download", { timeout: TIMEOUT });
      // A download aborts the navigation; that is the point.
      await page.goto(`${base}/api/v1/attachments/${stored.id}?token=${encodeURIComponent(token)}`).catch(() => {});
      const saved = await download;
      if (saved.suggestedFilename() !== name) fail(`${name} was saved as ${saved.suggestedFilename()}`);
      await page.close();
    }
    const owned = await A.page.evaluate(() => localStorage.getItem("owned"));
    if (owned) fail(`an uploaded ${owned} file ran script in the web client's origin`);
  });

  if (process.env.SCREENSHOT_DIR) {
    await step("screenshots", `desktop.png and phone.png in ${process.env.SCREENSHOT_DIR}`, async () => {
      await A.page.screenshot({ path: `${process.env.SCREENSHOT_DIR}/desktop.png` });
      await B.page.screenshot({ path: `${process.env.SCREENSHOT_DIR}/phone.png` });
    });
  }

  await step("the byte counter", "past 4096 bytes the counter turns red and Send is off; emptied, both return", async () => {
    await A.page.locator(tid("message-input")).fill("x".repeat(5000));
    await A.page.locator(`${tid("byte-counter")}.over`, { hasText: "5000 / 4096" }).waitFor({ timeout: TIMEOUT });
    if (!(await A.page.locator(tid("send-button")).isDisabled())) fail("Send stays on past the limit");
    await A.page.locator(tid("message-input")).fill("");
    await A.page.locator(tid("byte-counter"), { hasText: exact("") }).waitFor({ timeout: TIMEOUT });
  });

  const tooLong = `${"y".repeat(Number(process.env.MAX_CONTENT_BYTES || 600) + 50)} ${tag()}`;
  await step("a failed message is dismissed", "a message the server refuses shows why, with Retry, Edit and Dismiss; Dismiss takes it away", async () => {
    await sendMessage(A.page, tooLong);
    const failed = A.page.locator(`${tid("message-item")}[data-status="failed"]`).first();
    await failed.waitFor({ timeout: TIMEOUT });
    await failed.locator(tid("failed-note"), { hasText: "content" }).waitFor({ timeout: TIMEOUT });
    await failed.locator(tid("failed-dismiss")).click();
    await failed.waitFor({ state: "detached", timeout: TIMEOUT });
  });

  await step("A deletes its message", "both pages show the message as deleted", async () => {
    const item = messageItem(A.page, { sender: alice, content: edited, own: true });
    const del = item.locator(tid("action-delete"));
    await del.click();
    await del.click(); // the second click confirms
    for (const { page } of [A, B]) {
      await page.locator(tid("message-deleted")).first().waitFor({ timeout: TIMEOUT });
      if ((await messageItem(page, { sender: alice, content: edited }).count()) > 0) {
        fail(`page still shows the deleted text "${edited}"`);
      }
    }
  });

  const secretName = `Secret plans ${tag()}`;
  await step("a private room joined by short code shows its name", `A joins B's "${secretName}" by its code and sees that name, not the room's id`, async () => {
    await showSidebar(B.page);
    await B.page.locator(tid("create-name-input")).fill(secretName);
    await B.page.locator(tid("create-password-input")).fill(password);
    await B.page.locator(tid("create-button")).click();
    const code = (await B.page.locator(tid("created-short-code")).textContent()).trim();
    if (!/^[A-Z0-9]{6}$/.test(code)) fail(`no short code shown: "${code}"`);
    await A.page.locator(tid("private-room-input")).fill(code);
    await A.page.locator(tid("private-password-input")).fill(password);
    await A.page.locator(tid("private-join-button")).click();
    await A.page.locator(tid("room-title"), { hasText: secretName }).waitFor({ timeout: TIMEOUT });
    await A.page.locator(`${tid("room-item")}`, { hasText: secretName }).waitFor({ timeout: TIMEOUT });
    await openRoom(A.page, roomId);
  });

  const otherRoom = `pw-${run}-${tag()}`;
  const unreadOne = `while you were away ${tag()}`;
  await step("an unread badge", `B, in ${otherRoom}, gets a badge on ${roomId} when A writes there; opening it clears the badge`, async () => {
    await showSidebar(B.page);
    await B.page.locator(tid("room-id-input")).fill(otherRoom);
    await B.page.locator(tid("join-button")).click();
    await B.page.locator(tid("room-title"), { hasText: otherRoom }).waitFor({ timeout: TIMEOUT });
    await sendMessage(A.page, unreadOne);
    await messageItem(A.page, { content: unreadOne, own: true, status: "sent" }).waitFor({ timeout: TIMEOUT });
    await showSidebar(B.page);
    await badge(B.page, roomId).filter({ hasText: exact("1") }).waitFor({ timeout: TIMEOUT });
    await openRoom(B.page, roomId);
    await messageItem(B.page, { sender: alice, content: unreadOne }).waitFor({ timeout: TIMEOUT });
    await badge(B.page, roomId).waitFor({ state: "detached", timeout: TIMEOUT });
  });

  const unreadTwo = `one more ${tag()}`;
  await step("the read marker is kept", `after a reload B's list still counts 1 unread in ${roomId}, and reading clears it`, async () => {
    await openRoom(B.page, otherRoom);
    await sendMessage(A.page, unreadTwo);
    await showSidebar(B.page);
    await badge(B.page, roomId).filter({ hasText: exact("1") }).waitFor({ timeout: TIMEOUT });
    await B.page.reload({ waitUntil: "load" });
    await B.page.locator(`${tid("conn-status")}[data-state="online"]`).waitFor({ timeout: TIMEOUT });
    await showSidebar(B.page);
    await badge(B.page, roomId).filter({ hasText: exact("1") }).waitFor({ timeout: TIMEOUT });
    await openRoom(B.page, roomId);
    await messageItem(B.page, { sender: alice, content: unreadTwo }).waitFor({ timeout: TIMEOUT });
    await B.page.locator(tid("unread-divider")).waitFor({ timeout: TIMEOUT });
    await badge(B.page, roomId).waitFor({ state: "detached", timeout: TIMEOUT });
  });

  const psst = `just between us ${tag()}`;
  const psstBack = `noted ${tag()}`;
  await step("A opens a direct conversation with B from the member list", `A's direct messages list "${bob}"; B finds "${alice}" there with "${psst}", and A gets the answer`, async () => {
    await openRoom(A.page, roomId);
    await member(A.page, bob).locator(tid("member-button")).click();
    await A.page.locator(tid("member-dm")).click();
    await A.page.locator(tid("room-title"), { hasText: bob }).waitFor({ timeout: TIMEOUT });
    await A.page.locator(`${tid("dm-list")} ${tid("room-item")}`, { hasText: bob }).waitFor({ timeout: TIMEOUT });
    await sendMessage(A.page, psst);
    await messageItem(A.page, { content: psst, own: true, status: "sent" }).waitFor({ timeout: TIMEOUT });
    // Opening the room list fetches it again: the new direct room is there.
    await showSidebar(B.page);
    const dm = B.page.locator(`${tid("dm-list")} ${tid("room-item")}`, { hasText: alice });
    await dm.locator("button").click();
    await B.page.locator(tid("room-title"), { hasText: alice }).waitFor({ timeout: TIMEOUT });
    await messageItem(B.page, { sender: alice, content: psst }).waitFor({ timeout: TIMEOUT });
    await sendMessage(B.page, psstBack);
    await messageItem(A.page, { sender: bob, content: psstBack }).waitFor({ timeout: TIMEOUT });
  });

  await step("A, the room's owner, kicks B", `B is told it was removed from ${roomId}, which leaves B's list; A's member list loses ${bob}`, async () => {
    await openRoom(A.page, roomId);
    await member(A.page, bob).locator(tid("member-button")).click();
    await A.page.locator(tid("member-kick")).click();
    await B.page.locator(tid("banner"), { hasText: `You were removed from` }).waitFor({ timeout: TIMEOUT });
    await B.page.locator(`${tid("room-item")}[data-room-id="${roomId}"]`).waitFor({ state: "detached", timeout: TIMEOUT });
    await member(A.page, bob).waitFor({ state: "detached", timeout: TIMEOUT });
    await A.page.locator(tid("room-notice"), { hasText: `${bob} was removed from the room` }).waitFor({ timeout: TIMEOUT });
  });

  await step("A makes a bot and a key for it", "the bot is listed; the key's secret shows once with a Copy button and works; the key is listed with its scopes; revoking it removes it and refuses the secret", async () => {
    const botName = `bot${tag()}`;
    await A.page.locator(tid("keys-button")).click();
    await A.page.locator(tid("keys-view")).waitFor({ state: "visible", timeout: TIMEOUT });
    await A.page.locator(tid("bot-name-input")).fill(botName);
    await A.page.locator(tid("bot-create")).click();
    await A.page.locator(tid("bot-list")).locator("li", { hasText: botName }).waitFor({ timeout: TIMEOUT });
    // The new bot is the owner the key form now speaks of.
    const owner = await A.page.locator(tid("key-owner")).evaluate((s) => s.options[s.selectedIndex].text);
    if (owner !== botName) fail(`the key form is for "${owner}", not the new bot`);
    await A.page.locator(tid("key-name-input")).fill("notifier");
    await A.page.locator('input[name="scope"][value="chat:write"]').check();
    await A.page.locator(tid("key-create")).click();
    await A.page.locator(tid("key-secret")).waitFor({ state: "visible", timeout: TIMEOUT });
    await A.page.locator(tid("key-copy")).waitFor({ state: "visible", timeout: TIMEOUT });
    const secret = (await A.page.locator(tid("key-secret-text")).textContent()).trim();
    if (!secret.startsWith("pk_")) fail(`the secret shown is "${secret}"`);
    const listed = A.page.locator(tid("key-list")).locator("li", { hasText: "notifier" });
    await listed.waitFor({ timeout: TIMEOUT });
    const scopes = await listed.textContent();
    if (!scopes.includes("chat:read chat:write")) fail(`the key is listed as "${scopes}"`);
    if ((await A.page.locator(tid("key-list")).textContent()).includes(secret)) fail("the list shows the secret");
    const rooms = await fetch(`${base}/api/v1/rooms`, { headers: { authorization: `Bearer ${secret}` } });
    if (rooms.status !== 200) fail(`the new key is refused: ${rooms.status}`);
    // Revoking asks for a second click.
    await listed.locator(tid("key-revoke")).click();
    await listed.locator(tid("key-revoke")).click();
    await listed.waitFor({ state: "detached", timeout: TIMEOUT });
    const refused = await fetch(`${base}/api/v1/rooms`, { headers: { authorization: `Bearer ${secret}` } });
    if (refused.status !== 401) fail(`the revoked key answers ${refused.status}`);
    await A.page.locator(tid("keys-close")).click();
    await A.page.locator(tid("keys-view")).waitFor({ state: "hidden", timeout: TIMEOUT });
    await A.page.locator(tid("keys-button")).click();
    if (await A.page.locator(tid("key-secret")).isVisible()) fail("the secret is shown again");
    await A.page.keyboard.press("Escape");
    await A.page.locator(tid("keys-view")).waitFor({ state: "hidden", timeout: TIMEOUT });
  });

  await step("final check", "no JavaScript errors on either page", async () => {});

  if (process.env.SCREENSHOT) {
    await step("screenshot", `a PNG of page A at ${process.env.SCREENSHOT}`, async () => {
      await A.page.screenshot({ path: process.env.SCREENSHOT });
    });
  }
  console.log(`ok: two pages chatted in room ${roomId}`);
}

async function report(err) {
  console.error(`FAIL: step "${currentStep}"`);
  if (currentExpect) console.error(`  expected: ${currentExpect}`);
  const msg = String((err && err.message) || err)
    .replace(/\x1b\[[0-9;]*m/g, "")
    .split("\n")
    .filter((l) => l.trim())
    .slice(0, 6)
    .join("\n    ");
  console.error(`  error: ${msg}`);
  for (const p of pages) {
    const shown = await visibleErrors(p.page);
    console.error(`  page ${p.label} (${p.page.url()}):`);
    for (const s of shown) console.error(`    shows ${s}`);
    const rooms = await p.page
      .evaluate(() =>
        [...document.querySelectorAll('[data-testid="room-item"]')].map(
          (li) => `${li.dataset.roomId}${li.classList.contains("active") ? " (open)" : ""}: ${li.textContent.trim()}`
        )
      )
      .catch(() => []);
    for (const r of rooms) console.error(`    room ${r}`);
    if (!p.pageErrors.length && !p.consoleErrors.length) console.error("    no console errors");
    for (const e of p.pageErrors) console.error(`    pageerror: ${e}`);
    for (const e of p.consoleErrors) console.error(`    console.error: ${e}`);
  }
  if (process.env.SCREENSHOT && pages[0]) {
    await pages[0].page.screenshot({ path: process.env.SCREENSHOT }).catch(() => {});
  }
}

const guard = setTimeout(() => {
  console.error(`FAIL: step "${currentStep}": the whole test took more than ${OVERALL_TIMEOUT / 1000} s`);
  process.exit(1);
}, OVERALL_TIMEOUT);
guard.unref();

let code = 0;
try {
  await main();
} catch (err) {
  code = 1;
  await report(err);
} finally {
  if (browser) await browser.close().catch(() => {});
}
clearTimeout(guard);
process.exit(code);
