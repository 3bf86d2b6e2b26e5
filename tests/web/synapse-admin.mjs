// synapse-admin (the admin panel for Synapse's admin API) in headless Chromium against a
// running homeserver, as an operator would use it:
// `node synapse-admin.mjs BASE_URL APP_DIR ARTIFACT_DIR ADMIN PASSWORD ROOM_ID [CHROMIUM]`.
// The homeserver already has the admin account ADMIN, the users alice and bob, and the room
// ROOM_ID (created by the test). Prints one line per step and "OK"; exits non-zero at the
// first step that does not hold. Every step is screenshotted into ARTIFACT_DIR.
//
// Steps: sign in on synapse-admin's login page; the users list shows alice and bob; open
// alice's page; erase (deactivate) bob from his page, then check through the admin API that
// he is deactivated and can no longer log in; the rooms list shows the room; delete it from
// its page, then check through the admin API that the deletion completed and the room is
// gone.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

import { apiAt, serve } from "./site.mjs";

const print = (line) => process.stdout.write(line + "\n");
const [base, appDir, artifacts, adminName, adminPassword, roomId, chromiumPath = "/usr/bin/chromium"] =
  process.argv.slice(2);
if (!base || !appDir || !artifacts || !adminName || !adminPassword || !roomId) {
  print("usage: node synapse-admin.mjs BASE_URL APP_DIR ARTIFACT_DIR ADMIN PASSWORD ROOM_ID [CHROMIUM]");
  process.exit(2);
}
const api = apiAt(base);
const step = (message) => print(`ok   ${message}`);
function ensure(condition, message) {
  if (!condition) throw new Error(message);
}

/** synapse-admin's static files, copied with a config that pins the homeserver URL. */
function prepareApp() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "conduit-synapse-admin-"));
  fs.cpSync(appDir, root, { recursive: true });
  fs.writeFileSync(path.join(root, "config.json"), JSON.stringify({ restrictBaseUrl: base }));
  return root;
}

async function login(name, password) {
  return api("POST", "/_matrix/client/v3/login", null, {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: name },
    password,
  });
}

/** Polls `check` every 200 ms until it returns something truthy; fails after the deadline. */
async function waitFor(what, check, timeoutMs = 20000) {
  const started = Date.now();
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Homeserver answers of 4xx/5xx seen while the panel runs, for the failure message. */
function watch(page) {
  const failures = [];
  page.on("pageerror", (error) => failures.push(`uncaught page error: ${error.message}`));
  page.on("response", (response) => {
    if (response.url().startsWith(base) && response.status() >= 400) {
      failures.push(`${response.request().method()} ${new URL(response.url()).pathname} -> ${response.status()}`);
    }
  });
  page.on("requestfailed", (request) => {
    if (request.url().startsWith(base)) failures.push(`${request.method()} ${request.url()} failed: ${request.failure()?.errorText}`);
  });
  return failures;
}

let shot = 0;
async function screenshot(page, name) {
  shot += 1;
  await page.screenshot({ path: path.join(artifacts, `${String(shot).padStart(2, "0")}-${name}.png`), fullPage: true });
}

const server = "localhost";
const alice = `@alice:${server}`;
const bob = `@bob:${server}`;

const root = prepareApp();
const site = await serve(root);
const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
let failures = [];
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  page = await context.newPage();
  failures = watch(page);
  const adminToken = (await login(adminName, adminPassword)).body.access_token;
  ensure(adminToken, "the admin can log in through the API");

  // Sign in.
  await page.goto(`${site.url}/`);
  await page.locator('input[name="username"]').waitFor({ timeout: 20000 });
  await page.locator('input[name="username"]').fill(adminName);
  await page.locator('input[name="password"]').fill(adminPassword);
  const baseUrl = await page.locator('input[name="base_url"]').inputValue();
  ensure(baseUrl === base, `the homeserver URL field shows ${base}, not ${baseUrl}`);
  await screenshot(page, "login");
  await page.locator('button[type="submit"]').click();
  await page.waitForURL(/#\/users/, { timeout: 20000 });
  step("signed in; synapse-admin opened the users list");

  // The users list.
  await page.getByText(alice).first().waitFor({ timeout: 20000 });
  await page.getByText(bob).first().waitFor({ timeout: 20000 });
  await screenshot(page, "users");
  step("the users list shows alice and bob");

  // One user's page.
  await page.getByText(alice).first().click();
  await page.waitForURL(/#\/users\/.+/, { timeout: 20000 });
  await page.locator('input[name="displayname"]').waitFor({ timeout: 20000 });
  const displayname = await page.locator('input[name="displayname"]').inputValue();
  ensure(displayname === "alice", `alice's page shows her display name, not ${JSON.stringify(displayname)}`);
  await screenshot(page, "user-alice");
  step("alice's page shows her account");

  // Deactivate (erase) bob from his page.
  await page.goto(`${site.url}/#/users/${encodeURIComponent(bob)}`);
  await page.locator('input[name="displayname"]').waitFor({ timeout: 20000 });
  await page.getByRole("button", { name: /erase user data/i }).click();
  await screenshot(page, "deactivate-confirm");
  await page.getByRole("button", { name: /^confirm$/i }).click();
  await waitFor("bob to be deactivated", async () => {
    const answer = await api("GET", `/_synapse/admin/v2/users/${encodeURIComponent(bob)}`, adminToken);
    return answer.status === 200 && answer.body.deactivated === true;
  });
  const bobLogin = await login("bob", "pw-bob-12345");
  ensure(bobLogin.status === 403, `bob can no longer log in (got ${bobLogin.status} ${JSON.stringify(bobLogin.body)})`);
  await screenshot(page, "deactivated");
  step("bob is deactivated on the server and cannot log in");

  // The rooms list, and the room's page.
  await page.goto(`${site.url}/#/rooms`);
  await page.getByText("Doomed room").first().waitFor({ timeout: 20000 });
  await screenshot(page, "rooms");
  step("the rooms list shows the room");
  await page.getByText("Doomed room").first().click();
  await page.waitForURL(/#\/rooms\/.+\/show/, { timeout: 20000 });
  await page.getByText(roomId).first().waitFor({ timeout: 20000 });
  await screenshot(page, "room");
  step("the room's page shows it");

  // Delete it.
  await page.getByRole("button", { name: /^delete$/i }).first().click();
  await page.getByText(/are you sure you want to delete the room/i).waitFor({ timeout: 20000 });
  await screenshot(page, "delete-confirm");
  await page.getByRole("button", { name: /^confirm$/i }).click();
  await waitFor("the room deletion to complete", async () => {
    const answer = await api("GET", `/_synapse/admin/v2/rooms/${encodeURIComponent(roomId)}/delete_status`, adminToken);
    return answer.status === 200 && answer.body.results?.[0]?.status === "complete";
  });
  const gone = await api("GET", `/_synapse/admin/v1/rooms/${encodeURIComponent(roomId)}`, adminToken);
  ensure(gone.status === 404, `the room is gone (got ${gone.status})`);
  await page.waitForURL(/#\/rooms$/, { timeout: 20000 });
  await screenshot(page, "deleted");
  step("the room is deleted and purged on the server");
  print("OK");
} catch (error) {
  if (page) await screenshot(page, "failure").catch(() => {});
  print(`FAIL ${error.message}`);
  if (failures.length) print(`homeserver errors and page errors seen:\n  ${failures.join("\n  ")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  site.close();
  fs.rmSync(root, { recursive: true, force: true });
}
