// Element Web signing in with single sign-on, as a person would, in headless Chromium:
// `node element_sso.mjs BASE_URL ELEMENT_DIR ARTIFACT_DIR CHROMIUM BUTTON USER PASSWORD USER_ID`.
// Element's login page must offer the identity provider's button (BUTTON, e.g. "Continue
// with Company SSO"); a click goes to the server's SSO redirect, on to the provider's login
// form (filled with USER and PASSWORD), back through the server's callback to Element with a
// login token, which Element exchanges for a session of USER_ID. Fails on any uncaught page
// error and any homeserver answer of 4xx/5xx not in the commented allow-list. Prints one line
// per step and "OK"; screenshots go to ARTIFACT_DIR.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

import { serve } from "./site.mjs";

const print = (line) => process.stdout.write(line + "\n");
const [base, elementDir, artifacts, chromiumPath, button, user, password, userId] = process.argv.slice(2);
if (!userId) {
  print("usage: node element_sso.mjs BASE_URL ELEMENT_DIR ARTIFACT_DIR CHROMIUM BUTTON USER PASSWORD USER_ID");
  process.exit(2);
}
const step = (message) => print(`ok   ${message}`);
function ensure(condition, message) {
  if (!condition) throw new Error(message);
}

/** Homeserver answers of 4xx/5xx Element expects and handles (Synapse gives the same ones). */
const EXPECTED_ERRORS = [
  // Element asks whether the server delegates auth to an OAuth 2.0 server (MSC2965); a server
  // without one answers 404 M_UNRECOGNIZED and Element offers the server's own login flows.
  { method: "GET", path: /\/org\.matrix\.msc2965\/auth_(issuer|metadata)$/, status: 404 },
  { method: "GET", path: /^\/_matrix\/client\/v1\/auth_metadata$/, status: 404 },
  // A new account has no key backup yet: 404 M_NOT_FOUND, and Element offers to create one.
  { method: "GET", path: /^\/_matrix\/client\/v3\/room_keys\/version$/, status: 404 },
  // Element asks Synapse's admin API whether the user is a server admin: 403 for one who is not.
  { method: "GET", path: /^\/_synapse\/admin\/v1\/users\/[^/]+\/admin$/, status: 403 },
];

function prepareElement() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "conduit-element-sso-"));
  fs.cpSync(elementDir, root, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(root, "config.json"), "utf8"));
  config.default_server_config = { "m.homeserver": { base_url: base, server_name: "localhost" } };
  fs.writeFileSync(path.join(root, "config.json"), JSON.stringify(config, null, 1));
  return root;
}

async function run() {
  fs.mkdirSync(artifacts, { recursive: true });
  const root = prepareElement();
  const site = await serve(root);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "conduit-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1280, height: 1000 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const shot = (name) => page.screenshot({ path: path.join(artifacts, `sso-${name}.png`) });
  const problems = [];
  let appLoaded = false;
  // Each load of Element (the first, and the return from the provider with the login token)
  // starts the app anew.
  page.on("domcontentloaded", () => {
    if (page.url().startsWith(site.url)) appLoaded = false;
  });
  page.on("pageerror", (error) => {
    // The prebuilt bundle's module initialisation quirk before the app is up (see element.mjs).
    if (!appLoaded && /Cannot access '\w+' before initialization/.test(error.message)) return;
    problems.push(`uncaught page error: ${error.stack ?? error.message}`);
  });
  const pending = [];
  page.on("response", (response) => {
    if (!response.url().startsWith(base) || response.status() < 400) return;
    const url = new URL(response.url());
    const method = response.request().method();
    const expected = EXPECTED_ERRORS.some((e) => e.method === method && e.path.test(url.pathname) && e.status === response.status());
    if (!expected) {
      pending.push(
        response
          .text()
          .catch(() => "")
          .then((body) => problems.push(`homeserver answered ${response.status()} to ${method} ${url.pathname}: ${body.slice(0, 300)}`)),
      );
    }
  });
  try {
    await page.goto(`${site.url}/#/login`);
    const sso = page.getByRole("button", { name: button });
    await sso.waitFor({ timeout: 30000 });
    appLoaded = true;
    await shot("00-login-page");
    step(`Element's login page offers "${button}"`);

    await sso.click();
    await page.locator("#login").waitFor({ timeout: 30000 });
    ensure(!page.url().startsWith(base) && !page.url().startsWith(site.url), `not at the provider: ${page.url()}`);
    await shot("01-provider");
    step(`the button led through the server to the identity provider's login page`);

    await page.locator("#login").fill(user);
    await page.locator("#password").fill(password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("button", { name: "User menu" }).waitFor({ timeout: 60000 });
    appLoaded = true;
    await shot("02-signed-in");
    const signedIn = await page.evaluate(() => localStorage.getItem("mx_user_id"));
    ensure(signedIn === userId, `Element is signed in as ${signedIn}, not ${userId}`);
    ensure(!new URL(page.url()).searchParams.has("loginToken"), `the login token stayed in the address: ${page.url()}`);
    step(`signed in at the provider; Element exchanged the login token and is signed in as ${signedIn}`);

    await page.waitForTimeout(1500);
    await Promise.all(pending);
    ensure(problems.length === 0, problems.join("\n"));
    step("no uncaught page error, no unexpected homeserver error");
  } catch (error) {
    await shot("failure").catch(() => {});
    await Promise.all(pending);
    if (problems.length) print(`problems seen:\n${problems.join("\n")}`);
    throw error;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
    site.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}

try {
  await run();
  print("OK");
  process.exit(0);
} catch (error) {
  print(`FAIL ${error?.stack ?? error}`);
  process.exit(1);
}
