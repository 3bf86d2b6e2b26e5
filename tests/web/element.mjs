// Element Web in headless Chromium against a running homeserver, as a person would use it:
// `node element.mjs BASE_URL ELEMENT_DIR ARTIFACT_DIR [CHROMIUM]`. Prints one line per step
// and "OK"; exits non-zero at the first step that does not hold.
//
// `node element.mjs BASE_URL ELEMENT_DIR ARTIFACT_DIR CHROMIUM ldap USER PASSWORD NAME EMAIL`
// runs the third scenario alone, against a server whose passwords the LDAP directory keeps.
//
// Scenarios, each in a fresh browser profile:
// 1. A fresh account (registered through the API) signs in on Element's login page; Element
//    then sets up its encryption by itself (cross-signing and key backup, with the password
//    just typed). The script opens User Settings and visits every tab; the Sessions and
//    Security & Privacy tabs must show that setup as done.
// 2. A new account registers on Element's own registration page; Element must then have
//    uploaded cross-signing keys and created a key backup (checked through the API).
// 3. (ldap) A person the directory knows, with no account yet, signs in on the login page
//    with the directory's password; the account is made then: Element shows the directory's
//    display name, lists the directory's email address on the Account tab, and offers no
//    password change (the server's `m.change_password` capability is off for them).
// Both fail on any visible error text, any uncaught page error after the app has loaded, any
// request to the homeserver that failed at the network level (CORS included), and any
// homeserver answer of 4xx/5xx that is not in the commented allow-list below. Every step is
// screenshotted into ARTIFACT_DIR.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

import { apiAt, serve } from "./site.mjs";

const print = (line) => process.stdout.write(line + "\n");
const [base, elementDir, artifacts, chromiumPath = "/usr/bin/chromium", mode, ...modeArgs] = process.argv.slice(2);
if (!base || !elementDir || !artifacts) {
  print("usage: node element.mjs BASE_URL ELEMENT_DIR ARTIFACT_DIR [CHROMIUM]");
  process.exit(2);
}
const api = apiAt(base);
const step = (message) => print(`ok   ${message}`);
function ensure(condition, message) {
  if (!condition) throw new Error(message);
}

/**
 * Homeserver answers of 4xx/5xx that Element expects and handles, matched on method, path,
 * status and errcode. Each entry says why it is normal; Synapse 1.163 gives the same answer
 * to the same request.
 */
const EXPECTED_ERRORS = [
  {
    // Element asks whether the server delegates auth to an OIDC provider (MSC2965); a server
    // without one answers 404 M_UNRECOGNIZED, and Element shows its password login.
    method: "GET",
    path: /^\/_matrix\/client\/unstable\/org\.matrix\.msc2965\/auth_issuer$/,
    status: 404,
    errcode: "M_UNRECOGNIZED",
  },
  {
    // Registration is user-interactive auth: the first request (and the one that picks the
    // flow) is answered 401 with the flows and a session, which Element then completes.
    method: "POST",
    path: /^\/_matrix\/client\/(v3|r0)\/register$/,
    status: 401,
    errcode: undefined,
  },
  {
    // Element's user panel asks Synapse's admin API whether the signed-in user is a server
    // admin; for a user who is not, Synapse answers 403 M_FORBIDDEN ("You are not a server
    // admin") and Element offers no server-admin tools.
    method: "GET",
    path: /^\/_synapse\/admin\/v1\/users\/[^/]+\/admin$/,
    status: 403,
    errcode: "M_FORBIDDEN",
  },
  {
    // This server sends no email or SMS: asking for a token to add an email address or a
    // phone number is refused with the spec's M_THREEPID_MEDIUM_NOT_SUPPORTED (Synapse says
    // the same without email or SMS configured); Element shows the refusal.
    method: "POST",
    path: /^\/_matrix\/client\/v3\/account\/3pid\/(email|msisdn)\/requestToken$/,
    status: 400,
    errcode: "M_THREEPID_MEDIUM_NOT_SUPPORTED",
  },
  {
    // Element checks for an existing key backup before creating one; a new account has
    // none, which the spec says is 404 M_NOT_FOUND.
    method: "GET",
    path: /^\/_matrix\/client\/v3\/room_keys\/version$/,
    status: 404,
    errcode: "M_NOT_FOUND",
  },
];

/** Text Element shows when something the server should do did not work. */
const ERROR_TEXT = [
  /error loading/i,
  /unable to (load|set up|query|create|find)/i,
  /failed to (load|set)/i,
  /could(n't| not) load/i,
  /(does not|doesn't|doesn’t) support/i,
  /<not supported>/i,
  /something went wrong/i,
  /an error occurred/i,
  /there was a problem/i,
  /HTTP status \d+/i,
];

/**
 * What a tab must show once loaded: Element's own verdict on what it set up with the server
 * after the sign-in (text as Element 1.11.88 words it; Synapse shows the same).
 */
const MUST_SHOW = {
  Sessions: [/Verified session/],
  "Security & Privacy": [/This session is backing up your keys\./, /Cross-signing is ready/],
};

/**
 * Switches a tab must offer enabled: Element greys them out when the server lacks what they
 * need. "Send read receipts" needs private read receipts (`m.read.private`, Matrix 1.4, or
 * the `org.matrix.msc2285.stable` flag); Synapse enables it.
 */
const MUST_BE_ENABLED = {
  Preferences: ["Send read receipts"],
};

/** Element's prebuilt static files, copied per run with a config naming the server. */
function prepareElement() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "conduit-element-"));
  fs.cpSync(elementDir, root, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(root, "config.json"), "utf8"));
  config.default_server_config = { "m.homeserver": { base_url: base, server_name: "localhost" } };
  fs.writeFileSync(path.join(root, "config.json"), JSON.stringify(config, null, 1));
  return root;
}

/** Registers through the API the way clients do: ask for the flows, then the dummy stage. */
async function register(name, password) {
  const first = await api("POST", "/_matrix/client/v3/register", null, { username: name, password });
  const done = await api("POST", "/_matrix/client/v3/register", null, {
    username: name,
    password,
    inhibit_login: true,
    auth: { type: "m.login.dummy", session: first.body.session },
  });
  ensure(done.status === 200, `register ${name}: ${done.status} ${JSON.stringify(done.body)}`);
  return done.body.user_id;
}

async function loginThroughApi(name, password) {
  const login = await api("POST", "/_matrix/client/v3/login", null, {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: name },
    password,
  });
  ensure(login.status === 200, `login ${name}: ${login.status} ${JSON.stringify(login.body)}`);
  return login.body;
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

/** Records what must not happen while Element runs; `problems()` lists what did. */
function watch(page) {
  const found = [];
  let appLoaded = false;
  page.on("pageerror", (error) => {
    // Before the login page is up, the prebuilt bundle throws "Cannot access 'X' before
    // initialization" from its widget stores' module initialisation: a quirk of the build,
    // seen identically against Synapse, before any request reaches the homeserver.
    if (!appLoaded && /Cannot access '\w+' before initialization/.test(error.message)) return;
    found.push(`uncaught page error: ${error.stack ?? error.message}`);
  });
  const pending = [];
  let capabilities = null;
  page.on("response", (response) => {
    if (response.url().startsWith(`${base}/_matrix/client/v3/capabilities`) && response.status() === 200) {
      pending.push(
        response
          .json()
          .then((body) => {
            capabilities = body.capabilities;
          })
          .catch(() => {}),
      );
    }
    if (!response.url().startsWith(base) || response.status() < 400) return;
    const url = new URL(response.url());
    const method = response.request().method();
    const status = response.status();
    pending.push(
      response
        .text()
        .catch(() => "")
        .then((body) => {
          let errcode;
          try {
            errcode = JSON.parse(body).errcode;
          } catch {}
          const expected = EXPECTED_ERRORS.some(
            (e) => e.method === method && e.path.test(url.pathname) && e.status === status && e.errcode === errcode,
          );
          if (!expected) {
            found.push(
              `homeserver answered ${status} to ${method} ${url.pathname}${url.search}: ${body.slice(0, 300)}`,
            );
          }
        }),
    );
  });
  // Requests to the homeserver still unanswered, but the long-polling sync.
  const inFlight = new Set();
  const isHomeserver = (request) => request.url().startsWith(base) && !request.url().includes("/sync?");
  page.on("request", (request) => {
    if (isHomeserver(request)) inFlight.add(request);
  });
  page.on("requestfinished", (request) => inFlight.delete(request));
  page.on("requestfailed", (request) => {
    inFlight.delete(request);
    if (!request.url().startsWith(base)) return;
    const reason = request.failure()?.errorText;
    found.push(`request to the homeserver failed: ${request.method()} ${request.url()}: ${reason}`);
  });
  return {
    loaded: () => {
      appLoaded = true;
    },
    /** The capabilities the server last gave Element. */
    capabilities: async () => {
      await Promise.all(pending);
      return capabilities;
    },
    /** Resolves once no request to the homeserver (but sync) has been pending for 300 ms. */
    quiet: async (timeoutMs = 10000) => {
      const started = Date.now();
      let quietSince = Date.now();
      while (Date.now() - started < timeoutMs) {
        if (inFlight.size) quietSince = Date.now();
        else if (Date.now() - quietSince >= 300) return;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    /** What went wrong so far; `take` also forgets it, so that it is reported once. */
    problems: async ({ take = false } = {}) => {
      await Promise.all(pending);
      return take ? found.splice(0) : [...found];
    },
  };
}

/** Visible text on the page that reads as an error. */
async function visibleErrors(page) {
  const text = await page.locator("body").innerText();
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => ERROR_TEXT.some((pattern) => pattern.test(line)));
}

/**
 * Waits for spinners to go and for every request to the homeserver but the long-polling
 * sync to have been answered, then for the page to render what came back.
 */
async function settle(page, watcher) {
  await page
    .waitForFunction(() => !document.querySelector(".mx_Spinner, .mx_InlineSpinner"), null, { timeout: 10000 })
    .catch(() => {});
  await watcher.quiet();
  await page.waitForTimeout(500);
}

function fileName(label) {
  return label
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-|-$/g, "");
}

/** A fresh Chromium profile on the served Element; screenshots named `prefix-…`. */
async function withBrowser(site, prefix, scenario) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "conduit-chromium-"));
  // A tall window: Element's settings dialog scrolls inside itself, so a tall viewport
  // keeps each tab's whole content in its screenshot.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1280, height: 1600 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const watcher = watch(page);
  const shot = (name) => page.screenshot({ path: path.join(artifacts, `${prefix}-${name}.png`) });
  try {
    await scenario(page, watcher, shot);
    const problems = await watcher.problems();
    ensure(problems.length === 0, problems.join("\n"));
  } catch (error) {
    await shot("failure").catch(() => {});
    throw error;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

/** Closes Element's own notices (desktop notifications, threads): they are not about the server. */
async function dismissNotices(page) {
  for (const name of ["Dismiss", "OK"]) {
    const button = page.getByRole("button", { name, exact: true });
    if (await button.count())
      await button
        .first()
        .click()
        .catch(() => {});
  }
}

/** An account made through the API signs in on the login page; every settings tab loads. */
async function signInAndVisitSettings(site) {
  const tag = Math.random().toString(16).slice(2, 10);
  const user = `web_${tag}`;
  const password = `pw-${tag}-Element`;
  const userId = await register(user, password);
  step(`registered ${userId} through the API`);

  await withBrowser(site, "login", async (page, watcher, shot) => {
    await page.goto(`${site.url}/#/login`);
    await page.locator("#mx_LoginForm_username").waitFor({ timeout: 30000 });
    watcher.loaded();
    await shot("00-page");
    step("Element's login page is up");

    await page.locator("#mx_LoginForm_username").fill(user);
    await page.locator("#mx_LoginForm_password").fill(password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("button", { name: "User menu" }).waitFor({ timeout: 30000 });
    await settle(page, watcher);
    await shot("01-home");
    // Problems are gathered through the visit rather than thrown at once, so that one run
    // lists every one.
    const failures = [];
    const check = async (what, extra = []) => {
      const wrong = (await visibleErrors(page)).map((line) => `shows error text: ${line}`);
      wrong.push(...extra, ...(await watcher.problems({ take: true })));
      if (wrong.length) {
        failures.push(`${what}:\n  ${wrong.join("\n  ")}`);
        print(`FAIL ${what}:\n  ${wrong.join("\n  ")}`);
      }
      return wrong.length === 0;
    };
    if (await check("after signing in")) step("signed in through the login page; no error so far");

    await dismissNotices(page);
    await page.getByRole("button", { name: "User menu" }).click();
    await page.getByRole("menuitem", { name: "All settings" }).click();
    const labels = page.locator(".mx_TabbedView_tabLabel");
    await labels.first().waitFor({ timeout: 10000 });
    const tabs = (await labels.allInnerTexts()).map((label) => label.trim());
    for (const wanted of [
      "Account",
      "Sessions",
      "Appearance",
      "Notifications",
      "Preferences",
      "Keyboard",
      "Sidebar",
      "Security & Privacy",
      "Help & About",
    ]) {
      ensure(tabs.includes(wanted), `User Settings has no "${wanted}" tab (tabs: ${tabs.join(", ")})`);
    }
    step(`User Settings opened with tabs: ${tabs.join(", ")}`);

    for (const [index, label] of tabs.entries()) {
      await labels.nth(index).click();
      await page.locator(".mx_TabbedView_tabLabel_active", { hasText: label }).waitFor({ timeout: 5000 });
      await settle(page, watcher);
      await shot(`${String(index + 2).padStart(2, "0")}-${fileName(label)}`);
      // Element finishes its encryption setup in the background after signing in: give
      // what it must show a few seconds to appear.
      const panel = page.locator(".mx_TabbedView_tabPanel");
      const absent = async () => {
        const text = await panel.innerText();
        return (MUST_SHOW[label] ?? []).filter((wanted) => !wanted.test(text));
      };
      await waitFor(`the ${label} tab's content`, async () => (await absent()).length === 0, 10000).catch(() => {});
      const missing = (await absent()).map((wanted) => `does not show ${wanted}`);
      for (const name of MUST_BE_ENABLED[label] ?? []) {
        const toggle = panel.getByRole("switch", { name, exact: true });
        if (!(await toggle.count())) missing.push(`has no "${name}" switch`);
        else if ((await toggle.getAttribute("aria-disabled")) === "true") missing.push(`"${name}" is greyed out`);
      }
      if (await check(`the ${label} tab`, missing)) step(`${label}: no error shown, no unexpected failed request`);
    }

    // Adding an email address or a phone number. A server that sends no email or SMS either
    // says so in its capabilities (`m.3pid_changes` disabled: Element greys the fields out)
    // or refuses the request for a token as the spec says, with M_THREEPID_MEDIUM_NOT_SUPPORTED
    // (Synapse without email or SMS configured), and Element shows the refusal instead of
    // waiting for a code that never comes.
    await labels.filter({ hasText: "Account" }).first().click();
    await settle(page, watcher);
    const refusals = [];
    const changes = (await watcher.capabilities())?.["m.3pid_changes"]?.enabled ?? true;
    for (const { field, value, medium } of [
      { field: "Email Address", value: "alice@example.org", medium: "email" },
      { field: "Phone Number", value: "7700900123", medium: "msisdn" },
    ]) {
      const input = page.getByRole("textbox", { name: field, exact: true });
      if (!(await input.count())) {
        refusals.push(`the Account tab has no "${field}" field`);
        continue;
      }
      if (!changes) {
        if (await input.isEnabled()) refusals.push(`"${field}" is editable though m.3pid_changes is disabled`);
        continue;
      }
      const answer = page
        .waitForResponse((r) => r.url().endsWith(`/account/3pid/${medium}/requestToken`), { timeout: 10000 })
        .catch(() => null);
      await input.fill(value);
      await input.locator("xpath=ancestor::form").getByRole("button", { name: "Add" }).click();
      const response = await answer;
      const body = response ? await response.json().catch(() => ({})) : {};
      if (response?.status() !== 400 || body.errcode !== "M_THREEPID_MEDIUM_NOT_SUPPORTED") {
        refusals.push(
          `adding a ${medium}: ${response?.status()} ${JSON.stringify(body)}, not 400 M_THREEPID_MEDIUM_NOT_SUPPORTED`,
        );
      }
      const dialog = page.locator(".mx_ErrorDialog, .mx_QuestionDialog").last();
      await dialog.waitFor({ timeout: 5000 }).catch(() => {});
      await shot(`14-add-${medium}`);
      if (!(await dialog.count())) {
        refusals.push(`adding a ${medium}: Element showed no dialog`);
        continue;
      }
      const shown = await dialog.innerText();
      if (body.error && !shown.includes(body.error)) {
        refusals.push(`adding a ${medium}: the dialog does not give the server's reason: ${shown}`);
      }
      await dialog.getByRole("button", { name: "OK" }).click();
    }
    await shot("14-contact-fields");
    if (await check("adding an email address and a phone number", refusals)) {
      step(
        changes
          ? "adding an email or phone number: refused with M_THREEPID_MEDIUM_NOT_SUPPORTED, and Element says so"
          : "email and phone fields greyed out, as the server's m.3pid_changes capability says",
      );
    }
    await page.keyboard.press("Escape");

    // The user's own profile panel: Element asks the server whether the user is a server
    // admin (Synapse's admin API) to decide which moderation tools to offer.
    await page.goto(`${site.url}/#/user/${userId}`);
    const panel = page.locator(".mx_UserInfo");
    await panel.waitFor({ timeout: 10000 });
    await settle(page, watcher);
    await shot("13-own-profile");
    const profile = await panel.innerText();
    const unverified = /verified session/.test(profile) ? [] : ["does not show the user's verified session"];
    if (await check("the user's own profile panel", unverified))
      step("own profile panel: a verified session, no error");

    ensure(failures.length === 0, `Element showed problems:\n${failures.join("\n")}`);
  });
}

/**
 * A new account made on Element's registration page: Element completes the server's
 * registration flow, then sets up cross-signing and a key backup by itself, as after a
 * password sign-in. Checked from outside through the API with a second login.
 */
async function registerThroughElement(site) {
  const tag = Math.random().toString(16).slice(2, 10);
  const user = `webreg_${tag}`;
  const password = `pw-${tag}-Element`;
  await withBrowser(site, "register", async (page, watcher, shot) => {
    await page.goto(`${site.url}/#/register`);
    await page.locator("#mx_RegistrationForm_username").waitFor({ timeout: 30000 });
    watcher.loaded();
    await shot("00-page");
    const before = await visibleErrors(page);
    ensure(before.length === 0, `error text on the registration page: ${before.join(" | ")}`);
    step("Element offers registration with this server");

    await page.locator("#mx_RegistrationForm_username").fill(user);
    await page.locator("#mx_RegistrationForm_password").fill(password);
    await page.locator("#mx_RegistrationForm_passwordConfirm").fill(password);
    await page.getByRole("button", { name: "Register" }).click();
    // Element shows its "You're in" onboarding, or goes straight on to its home page.
    await page
      .getByText("You're in")
      .or(page.getByRole("button", { name: "User menu" }))
      .first()
      .waitFor({ timeout: 30000 });
    await settle(page, watcher);
    await shot("01-welcome");
    const after = await visibleErrors(page);
    ensure(after.length === 0, `error text after registering: ${after.join(" | ")}`);
    step(`registered ${user} on Element's registration page; Element signed the new user in`);

    const { access_token: token, user_id: id } = await loginThroughApi(user, password);
    await waitFor("Element to upload cross-signing keys", async () => {
      const query = await api("POST", "/_matrix/client/v3/keys/query", token, {
        device_keys: { [id]: [] },
      });
      return query.body.master_keys?.[id] && query.body.self_signing_keys?.[id];
    });
    const backup = await waitFor("Element to create a key backup", async () => {
      const version = await api("GET", "/_matrix/client/v3/room_keys/version", token);
      return version.status === 200 ? version.body : null;
    });
    step(`Element set up cross-signing and key backup (version ${backup.version}) at registration`);
  });
}

/** A directory user signs in with the directory's password; the account is made then. */
async function signInWithDirectoryPassword(site) {
  const [user, password, name, email] = modeArgs;
  await withBrowser(site, "ldap", async (page, watcher, shot) => {
    await page.goto(`${site.url}/#/login`);
    await page.locator("#mx_LoginForm_username").waitFor({ timeout: 30000 });
    watcher.loaded();
    await page.locator("#mx_LoginForm_username").fill(user);
    await page.locator("#mx_LoginForm_password").fill(password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("button", { name: "User menu" }).waitFor({ timeout: 30000 });
    await settle(page, watcher);
    await shot("01-home");
    const errors = await visibleErrors(page);
    ensure(errors.length === 0, `error text after signing in: ${errors.join(" | ")}`);
    step(`signed in as ${user} with the directory's password`);

    await dismissNotices(page);
    await page.getByRole("button", { name: "User menu" }).click();
    const menu = page.locator(".mx_UserMenu_contextMenu");
    await menu.waitFor({ timeout: 10000 });
    const menuText = await menu.innerText();
    ensure(menuText.includes(name), `the user menu does not show the directory's name "${name}": ${menuText}`);
    step(`the user menu shows the directory's display name "${name}"`);

    await page.getByRole("menuitem", { name: "All settings" }).click();
    const labels = page.locator(".mx_TabbedView_tabLabel");
    await labels.first().waitFor({ timeout: 10000 });
    await labels.filter({ hasText: "Account" }).first().click();
    await settle(page, watcher);
    await shot("02-account");
    const panel = page.locator(".mx_TabbedView_tabPanel");
    const text = await panel.innerText();
    ensure(text.includes(email), `the Account tab does not list the directory's email ${email}:\n${text}`);
    step(`the Account tab lists the directory's email address ${email}`);
    const passwordFields = await panel.getByLabel("Current password").count();
    const capabilities = await watcher.capabilities();
    ensure(
      capabilities?.["m.change_password"]?.enabled === false,
      `m.change_password is not off: ${JSON.stringify(capabilities?.["m.change_password"])}`,
    );
    ensure(passwordFields === 0, "Element offers a password change to a directory account");
    step("no password change offered (m.change_password off for a directory account)");
    await page.keyboard.press("Escape");
  });
}

async function run() {
  fs.mkdirSync(artifacts, { recursive: true });
  const root = prepareElement();
  const site = await serve(root);
  // Every scenario runs even when one fails, so that one run reports them all.
  const failures = [];
  const scenarios = mode === "ldap" ? [signInWithDirectoryPassword] : [signInAndVisitSettings, registerThroughElement];
  for (const scenario of scenarios) {
    try {
      await scenario(site);
    } catch (error) {
      print(`FAIL ${scenario.name}: ${error?.message ?? error}`);
      failures.push(`${scenario.name}: ${error?.stack ?? error}`);
    }
  }
  site.close();
  fs.rmSync(root, { recursive: true, force: true });
  if (failures.length) print(`screenshots kept in ${artifacts}`);
  ensure(failures.length === 0, failures.join("\n"));
}

try {
  await run();
  print("OK");
  process.exit(0);
} catch (error) {
  print(`FAIL ${error?.stack ?? error}`);
  process.exit(1);
}
