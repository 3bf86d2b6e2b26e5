// Drives matrix-appservice-bridge (its Bridge, AppServiceRegistration and Intents, on top of
// matrix-appservice's HTTP listener and matrix-bot-sdk's clients) as a real application
// service against a running homeserver, for conduit's appservice integration test (validated
// against Synapse with tests/appservice/synapse_driver.py).
//
//     node bridge_check.mjs <homeserver base URL> <registration YAML path>
//
// Reads the tokens, the listener's port, the sender localpart and the namespaces from the
// registration file. Prints `ok   <step>` for each passed step and `OK` as its last line; on a
// failure prints `FAIL: ...` (what it expected and what it saw) and exits 1. Every wait is
// bounded. When it needs the homeserver restarted (same port and database) it prints
// `REQUEST restart-server` and waits for a line `done` on stdin. Library logs go to stderr
// (warnings only; BRIDGE_CHECK_DEBUG=1 for all of them).
//
// Covers every step of the mautrix check, (a) to (h), and (i) the library's third-party
// lookup handlers (Bridge's controller.thirdPartyLookup) answering the homeserver's protocol,
// location and user lookups, and the appservice room directory (Intent's
// setRoomDirectoryVisibilityAppService) listed by /publicRooms for the bridge's network. The
// registration must list one protocol (`protocols: [name]`). Library gaps filled in:
// - (a) neither matrix-appservice 2.x nor matrix-bot-sdk knows the ping API, so the check
//   sends POST /_matrix/client/v1/appservice/{id}/ping through the bot client's generic
//   doRequest, and answers the homeserver's POST /_matrix/app/v1/ping with a route added
//   through Bridge.addAppServicePath (the library's hook for extra appservice endpoints).
// - (c) the bridge Intent's join-with-invite fallback joins the bot rather than the ghost
//   after inviting it, so the bot invites alice explicitly and alice then joins.
// - (g) matrix-appservice only reads `de.sorunome.msc2409.ephemeral` from a transaction, not
//   the stable `ephemeral`, so the homeserver must send the unstable key for this SDK.
// Everything the homeserver sends is recorded by a subclass of the library's AppService
// handed to Bridge.listen (its documented appServiceInstance argument), to check paths, auth
// and the order transactions delivered events in.
// The "normal user" is driven with plain fetch calls, never the appservice's token.
//
// The library ships matrix-bot-sdk, which loads the Rust crypto binding at start-up; that
// binding's install downloads a prebuilt library from outside the package registry, so
// package.json overrides it with crypto-stub/, which nothing here calls (no encryption).

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { Writable } from "node:stream";
import yaml from "js-yaml";
import { AppService, AppServiceRegistration, Bridge, Logger } from "matrix-appservice-bridge";

const WAIT_MS = 30_000; // an ordinary wait
const CATCH_UP_MS = 90_000; // missed events, which the homeserver retries with backoff
const SETTLE_MS = 2_000; // between the last send and asking for a restart
const OVERALL_MS = 300_000; // the whole check, restart included

let lastStep = "(none yet)";

class CheckFailed extends Error {}

const out = (line) => process.stdout.write(`${line}\n`);
const ok = (step) => {
  lastStep = step;
  out(`ok   ${step}`);
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const hex = (n) => randomBytes(n).toString("hex");

function expect(cond, what, saw) {
  if (!cond) throw new CheckFailed(`expected ${what}; saw ${JSON.stringify(saw)}`);
}

// Polls `probe` (sync or async; done when it returns something truthy) until `timeoutMs`
// passes; on a timeout says what it waited for and what `show()` reports.
async function waitFor(what, probe, { timeoutMs = WAIT_MS, show } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await probe();
    if (result) return result;
    if (Date.now() > deadline) {
      const seen = show ? show() : null;
      throw new CheckFailed(`timed out after ${timeoutMs / 1000}s waiting for ${what}; saw ${JSON.stringify(seen)}`);
    }
    await sleep(100);
  }
}

// Library logs: to stderr, never stdout (stdout carries the driver protocol).
function configureLogging() {
  const debug = !!process.env.BRIDGE_CHECK_DEBUG;
  const sink = new Writable({
    write(chunk, _encoding, done) {
      const text = chunk.toString();
      if (debug || /^(WARN|ERROR)/.test(text)) process.stderr.write(text.endsWith("\n") ? text : `${text}\n`);
      done();
    },
  });
  Logger.root.configureLogging({}, sink);
}

// Everything the homeserver sent, in arrival order; transactions once per ID.
class Recorder {
  constructor() {
    this.requests = [];
    this.transactions = [];
    this.seenTxns = new Set();
  }

  record(req, kind) {
    const entry = {
      kind,
      method: req.method,
      rawPath: req.originalUrl.split("?")[0],
      query: { ...req.query },
      authorization: req.headers.authorization ?? null,
      body: req.body ?? null,
    };
    this.requests.push(entry);
    return entry;
  }

  events() {
    return this.transactions.flatMap(([, body]) => body.events ?? []);
  }

  summary() {
    return this.requests.slice(-15).map((r) => `${r.method} ${r.rawPath}`);
  }
}

function recordingAppService(recorder, homeserverToken) {
  class RecordingAppService extends AppService {
    onTransaction(req, res) {
      const entry = recorder.record(req, "transaction");
      const txnId = req.params.txnId;
      const authed = (req.headers.authorization ?? "") === `Bearer ${homeserverToken}` ||
        req.query.access_token === homeserverToken;
      if (authed && !recorder.seenTxns.has(txnId) && req.body && typeof req.body === "object") {
        recorder.seenTxns.add(txnId);
        recorder.transactions.push([txnId, req.body]);
      }
      entry.txnId = txnId;
      return super.onTransaction(req, res);
    }

    onGetUsers(req, res) {
      recorder.record(req, "user query");
      return super.onGetUsers(req, res);
    }

    onGetRoomAlias(req, res) {
      recorder.record(req, "alias query");
      return super.onGetRoomAlias(req, res);
    }
  }
  return new RecordingAppService({ homeserverToken });
}

// A normal user, registered with a password, driven with plain client-server calls.
class Human {
  constructor(base) {
    this.base = base.replace(/\/$/, "");
    this.token = null;
    this.userId = null;
  }

  async call(method, path, body, auth = true) {
    const headers = { "Content-Type": "application/json" };
    if (auth && this.token) headers.Authorization = `Bearer ${this.token}`;
    const resp = await fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS),
    });
    const text = await resp.text();
    let data;
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      data = { raw: text };
    }
    return [resp.status, data];
  }

  async okCall(method, path, body) {
    const [status, data] = await this.call(method, path, body);
    expect(status === 200, `200 from ${method} ${path}`, [status, data]);
    return data;
  }

  // Registers through user-interactive auth (m.login.dummy); returns the last answer and the first.
  async register(username, password) {
    const body = { username, password };
    const first = await this.call("POST", "/_matrix/client/v3/register", body, false);
    let last = first;
    if (first[0] === 401 && first[1].session) {
      body.auth = { type: "m.login.dummy", session: first[1].session };
      last = await this.call("POST", "/_matrix/client/v3/register", body, false);
    }
    return { status: last[0], data: last[1], first };
  }

  roomPath(roomId, ...rest) {
    return "/_matrix/client/v3/rooms/" + [roomId, ...rest].map(encodeURIComponent).join("/");
  }

  async sendText(roomId, body) {
    const data = await this.okCall("PUT", this.roomPath(roomId, "send", "m.room.message", hex(8)), { msgtype: "m.text", body });
    return data.event_id;
  }

  async membership(roomId, userId) {
    const [status, data] = await this.call("GET", this.roomPath(roomId, "state", "m.room.member", userId));
    return status === 200 ? data.membership : null;
  }

  async recent(roomId) {
    const data = await this.okCall("GET", this.roomPath(roomId, "messages") + "?dir=b&limit=50");
    return data.chunk ?? [];
  }
}

// From `@bridge_.*:localhost` and `#bridge_.*:localhost`: the user and alias localpart
// prefixes and the server name.
function namespaceParts(raw) {
  const split = (regex, sigil) => {
    const clean = regex.replaceAll("\\", "").replace(/^\^/, "").replace(/\$$/, "");
    expect(clean.startsWith(sigil) && clean.includes(".*") && clean.includes(":"),
      `a namespace regex like ${sigil}prefix_.*:server`, regex);
    const [prefix, rest] = clean.slice(1).split(".*");
    return [prefix, rest.replace(/^:/, "")];
  };
  const [userPrefix, server] = split(raw.namespaces.users[0].regex, "@");
  const [aliasPrefix] = split(raw.namespaces.aliases[0].regex, "#");
  return { userPrefix, aliasPrefix, server };
}

function stdinLines() {
  const rl = createInterface({ input: process.stdin });
  const waiting = [];
  const buffered = [];
  rl.on("line", (line) => (waiting.length ? waiting.shift()(line) : buffered.push(line)));
  return {
    next(timeoutMs) {
      if (buffered.length) return Promise.resolve(buffered.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new CheckFailed(
          `timed out after ${timeoutMs / 1000}s waiting for \`done\` on stdin after REQUEST restart-server`)), timeoutMs);
        waiting.push((line) => {
          clearTimeout(timer);
          resolve(line);
        });
      });
    },
    close: () => rl.close(),
  };
}

async function run(hsUrl, regPath) {
  configureLogging();
  const raw = yaml.load(readFileSync(regPath, "utf8"));
  const registration = AppServiceRegistration.fromObject(raw);
  const listenUrl = new URL(registration.getAppServiceUrl());
  const host = listenUrl.hostname;
  const port = Number(listenUrl.port);
  const hsToken = registration.getHomeserverToken();
  const { userPrefix, aliasPrefix, server } = namespaceParts(raw);
  const protocol = raw.protocols?.[0];
  expect(typeof protocol === "string", "a protocol in the registration's `protocols`", raw.protocols);
  const network = `${protocol}-main`;
  const botId = `@${registration.getSenderLocalpart()}:${server}`;
  const aliceId = `@${userPrefix}alice:${server}`;
  const bobId = `@${userPrefix}bob:${server}`;
  const lobbyAlias = `#${aliasPrefix}lobby:${server}`;

  const recorder = new Recorder();
  const pings = [];
  const sdkEvents = [];
  const sdkEphemeral = [];
  const handlerErrors = [];
  const state = { lookups: [] };

  const bridge = new Bridge({
    homeserverUrl: hsUrl,
    domain: server,
    registration,
    disableStores: true, // no database files; the check needs none of the stores
    controller: {
      onEvent: async (request) => {
        const ev = request.getData();
        sdkEvents.push(ev);
        try {
          if (ev.type === "m.room.member" && ev.content?.membership === "invite") {
            // The bridge's usual reaction to an invite: the bot, or the invited ghost, joins.
            if (ev.state_key === botId) await bridge.getIntent().join(ev.room_id);
            else if (ev.state_key?.startsWith(`@${userPrefix}`)) await bridge.getIntent(ev.state_key).join(ev.room_id);
          } else if (ev.type === "m.room.message" && ev.sender === state.human && ev.content?.body === "hello bridge") {
            const sent = await bridge.getIntent(aliceId).sendMessage(ev.room_id, {
              msgtype: "m.text",
              body: "hello from alice",
              "m.relates_to": { "m.in_reply_to": { event_id: ev.event_id } },
            });
            state.replyId = sent.event_id;
          }
          request.resolve();
        } catch (e) {
          handlerErrors.push(`${ev.type} ${ev.event_id}: ${e?.message ?? e} ${JSON.stringify(e?.body ?? "")}`);
          request.reject(e);
        }
      },
      onEphemeralEvent: async (request) => {
        sdkEphemeral.push(request.getData());
        request.resolve();
      },
      // Provisioning the queried user: the bridge registers it (and sets the name) before
      // answering the homeserver 200 {}.
      onUserQuery: async (matrixUser) => {
        if (matrixUser.getId() !== bobId) return null;
        state.bobQueried = true;
        return { name: "Bob" };
      },
      // Provisioning the queried alias: the bridge's bot creates the room with the alias
      // before answering the homeserver 200 {}.
      onAliasQuery: async (alias, localpart) => {
        if (alias !== lobbyAlias) return null;
        return { creationOpts: { room_alias_name: localpart, preset: "public_chat", name: "Bridged lobby" } };
      },
      onAliasQueried: async (_alias, roomId) => {
        state.lobbyRoom = roomId;
      },
      onLog: (text, isError) => {
        if (isError || process.env.BRIDGE_CHECK_DEBUG) process.stderr.write(`${text}\n`);
      },
      // The bridge's third-party network: one instance, portal rooms by channel, users by
      // nick. Each call is recorded, to check the homeserver asked.
      thirdPartyLookup: {
        protocols: [protocol],
        getProtocol: async () => {
          state.lookups.push("protocol");
          return {
            user_fields: ["nick"],
            location_fields: ["channel"],
            icon: "mxc://localhost/check",
            field_types: {
              nick: { regexp: "[a-z]+", placeholder: "nick" },
              channel: { regexp: "#[a-z]+", placeholder: "#channel" },
            },
            instances: [{ network_id: network, desc: "The check's network", fields: {} }],
          };
        },
        getLocation: async (proto, fields) => {
          state.lookups.push(`location ${JSON.stringify(fields)}`);
          return fields.channel === "#lobby" ? [{ alias: lobbyAlias, protocol: proto, fields: { channel: "#lobby" } }] : [];
        },
        getUser: async (proto, fields) => {
          state.lookups.push(`user ${JSON.stringify(fields)}`);
          return fields.nick ? [{ userid: `@${userPrefix}${fields.nick}:${server}`, protocol: proto, fields: { nick: fields.nick } }] : [];
        },
      },
    },
  });

  const listen = async () => {
    await bridge.listen(port, host, 10, recordingAppService(recorder, hsToken));
    bridge.addAppServicePath({
      method: "POST",
      path: "/_matrix/app/v1/ping",
      authenticate: false, // checked below, so a wrong token shows up as a failed step
      handler: (req, res) => {
        const entry = recorder.record(req, "ping");
        pings.push(entry);
        if ((req.headers.authorization ?? "") !== `Bearer ${hsToken}` && req.query.access_token !== hsToken) {
          res.status(403).json({ errcode: "M_FORBIDDEN", error: "Bad token supplied" });
          return;
        }
        res.json({});
      },
    });
  };

  await bridge.initialise();
  await listen();
  const stdin = stdinLines();
  try {
    await steps({ hsUrl, bridge, registration, recorder, pings, sdkEvents, sdkEphemeral, handlerErrors, state,
      hsToken, botId, aliceId, bobId, lobbyAlias, userPrefix, server, listen, stdin, protocol, network });
  } finally {
    stdin.close();
    await bridge.close().catch(() => {});
  }
}

async function steps(ctx) {
  const { hsUrl, bridge, registration, recorder, pings, sdkEvents, sdkEphemeral, handlerErrors, state, hsToken,
    botId, aliceId, bobId, lobbyAlias, userPrefix, server, listen, stdin, protocol, network } = ctx;
  const authed = (r) => r.authorization === `Bearer ${hsToken}` || r.query.access_token === hsToken;
  const showRecent = () => ({ requests: recorder.summary(), handlerErrors });

  // (a) Ping both ways, and whoami as the sender.
  const bot = bridge.getIntent();
  const txn = `ping-${hex(4)}`;
  const pong = await bot.matrixClient.doRequest("POST",
    `/_matrix/client/v1/appservice/${encodeURIComponent(registration.getId())}/ping`, null, { transaction_id: txn });
  expect(Number.isInteger(pong?.duration_ms) && pong.duration_ms >= 0, "a duration_ms from the ping", pong);
  expect(pings.length === 1, "one POST /_matrix/app/v1/ping from the homeserver", recorder.summary());
  expect(pings[0].body?.transaction_id === txn, `ping body {"transaction_id":"${txn}"}`, pings[0].body);
  expect(authed(pings[0]), "the hs_token on the ping", pings[0].authorization);
  ok(`ping: appservice -> homeserver -> appservice (${pong.duration_ms} ms)`);
  const me = await bot.matrixClient.getWhoAmI();
  expect(me.user_id === botId, `whoami ${botId}`, me);
  ok(`whoami as the sender is ${me.user_id}`);

  // (b) A normal user invites the bot; the invite comes in a transaction and the bot joins.
  const human = new Human(hsUrl);
  const reg = await human.register(`human${hex(4)}`, hex(12));
  expect(reg.status === 200 && reg.data.access_token, "the normal user's registration", reg);
  human.token = reg.data.access_token;
  human.userId = reg.data.user_id;
  state.human = human.userId;
  const room = (await human.okCall("POST", "/_matrix/client/v3/createRoom", { preset: "private_chat", name: "bridged" })).room_id;
  await human.okCall("POST", human.roomPath(room, "invite"), { user_id: botId });
  await waitFor("the bot's invite in a transaction", () => recorder.events().some((e) =>
    e.type === "m.room.member" && e.state_key === botId && e.content?.membership === "invite" && e.room_id === room),
  { show: showRecent });
  await waitFor("the bot to join", async () => (await human.membership(room, botId)) === "join", { show: showRecent });
  ok("bot joined on invite");

  // (c) A virtual user is registered, joins and replies to the normal user.
  const alice = bridge.getIntent(aliceId);
  await alice.ensureRegistered();
  const aliceMe = await alice.matrixClient.doRequest("GET", "/_matrix/client/v3/account/whoami");
  expect(aliceMe.user_id === aliceId, `whoami ${aliceId} after registration`, aliceMe);
  ok(`${aliceId} registered with m.login.application_service`);
  await bot.invite(room, aliceId); // private room: the bot invites, then alice joins
  await alice.join(room);
  await waitFor(`${aliceId} to be joined`, async () => (await human.membership(room, aliceId)) === "join", { show: showRecent });
  ok(`${aliceId} joined`);
  const helloId = await human.sendText(room, "hello bridge");
  const reply = await waitFor(`a reply from ${aliceId} in /messages`, async () => (await human.recent(room)).find((e) =>
    e.sender === aliceId && e.content?.["m.relates_to"]?.["m.in_reply_to"]?.event_id === helloId), { show: showRecent });
  ok(`normal user sees the reply from ${aliceId} (${reply.event_id})`);

  // (d) The exclusive user namespace refuses others' registration.
  const mallory = await human.register(`${userPrefix}mallory`, hex(12));
  expect(mallory.status === 400 && mallory.data.errcode === "M_EXCLUSIVE",
    `400 M_EXCLUSIVE registering ${userPrefix}mallory`, mallory);
  ok(`registering ${userPrefix}mallory answers 400 M_EXCLUSIVE (${mallory.first[0] === 400 ? "before" : "after"} user-interactive auth)`);

  // (e) Masquerading outside the namespace is refused.
  const outsider = `@someone_else:${server}`;
  let refused;
  try {
    const got = await bridge.getIntent(outsider).matrixClient.doRequest("GET", "/_matrix/client/v3/account/whoami");
    refused = { unexpected: got };
  } catch (e) {
    refused = { status: e.statusCode, errcode: e.errcode ?? e.body?.errcode };
  }
  expect(refused.status === 403 && refused.errcode === "M_FORBIDDEN", `403 M_FORBIDDEN for ?user_id=${outsider}`, refused);
  ok(`masquerading as ${outsider} answers 403 M_FORBIDDEN`);

  // (f) The alias query creates the room on demand.
  const aliasPath = "/_matrix/client/v3/directory/room/" + encodeURIComponent(lobbyAlias);
  const found = await human.okCall("GET", aliasPath);
  expect(found.room_id && found.room_id === state.lobbyRoom, "the room the query created", [found, state.lobbyRoom]);
  const aliasQueries = recorder.requests.filter((r) => r.kind === "alias query" &&
    decodeURIComponent(r.rawPath) === `/_matrix/app/v1/rooms/${lobbyAlias}`);
  expect(aliasQueries.length === 1 && authed(aliasQueries[0]), "one authenticated alias query", aliasQueries);
  const joined = await human.okCall("POST", "/_matrix/client/v3/join/" + encodeURIComponent(lobbyAlias), {});
  expect(joined.room_id === found.room_id, "joining the alias's room", joined);
  ok(`alias query: ${aliasQueries[0].rawPath} created ${lobbyAlias}, normal user joined it`);

  // The user query: Synapse asks the appservice about an unknown user in its namespace only
  // when it is about to push an event naming that user (sender or membership state_key), so
  // the trigger is the normal user inviting the unknown @bridge_bob (see mautrix_check.py).
  await human.okCall("POST", human.roomPath(room, "invite"), { user_id: bobId });
  await waitFor(`${bobId} to join`, async () => (await human.membership(room, bobId)) === "join", { show: showRecent });
  const userQueries = recorder.requests.filter((r) => r.kind === "user query" &&
    decodeURIComponent(r.rawPath) === `/_matrix/app/v1/users/${bobId}`);
  expect(userQueries.length >= 1 && authed(userQueries[0]), "an authenticated user query", userQueries);
  expect(state.bobQueried, "the bridge's onUserQuery for bob", state);
  ok(`user query: ${userQueries[0].rawPath} registered ${bobId}, who joined on invite`);

  // (g) Typing and read receipts reach the appservice as ephemeral events.
  await human.okCall("PUT", human.roomPath(room, "typing", human.userId), { typing: true, timeout: 30000 });
  await human.okCall("POST", human.roomPath(room, "receipt", "m.read", reply.event_id), {});
  const lastBodies = () => recorder.transactions.slice(-3).map(([, body]) => body);
  await waitFor("the normal user's typing as an ephemeral event", () => sdkEphemeral.some((e) =>
    e.type === "m.typing" && e.room_id === room && e.content?.user_ids?.includes(human.userId)), { show: lastBodies });
  const keys = [...new Set(recorder.transactions.flatMap(([, body]) =>
    Object.keys(body).filter((k) => k.includes("ephemeral") && body[k]?.length)))].sort();
  ok(`typing reached the appservice (transaction keys ${JSON.stringify(keys)})`);
  await waitFor("the normal user's m.read receipt as an ephemeral event", () => sdkEphemeral.some((e) =>
    e.type === "m.receipt" && e.room_id === room && e.content?.[reply.event_id]?.["m.read"]?.[human.userId]),
  { show: lastBodies });
  ok("read receipt reached the appservice");
  await human.okCall("PUT", human.roomPath(room, "typing", human.userId), { typing: false });

  // (i) Third-party lookups reach the bridge's handlers, and the room it publishes in its
  // directory for its network is listed there (and only there).
  const protocols = await human.okCall("GET", "/_matrix/client/v3/thirdparty/protocols");
  const instance = protocols[protocol]?.instances?.find((i) => i.network_id === network);
  expect(instance && typeof instance.instance_id === "string" && protocols[protocol].location_fields?.[0] === "channel",
    `${protocol} with the instance ${network} and its instance_id in /thirdparty/protocols`, protocols);
  expect(state.lookups.includes("protocol"), "the bridge's getProtocol called", state.lookups);
  ok(`/thirdparty/protocols lists ${protocol}, instance ${instance.instance_id}`);
  const locations = await human.okCall("GET",
    `/_matrix/client/v3/thirdparty/location/${encodeURIComponent(protocol)}?channel=${encodeURIComponent("#lobby")}`);
  expect(Array.isArray(locations) && locations.some((l) => l.alias === lobbyAlias && l.protocol === protocol),
    `the portal ${lobbyAlias} for #lobby`, locations);
  const users = await human.okCall("GET", `/_matrix/client/v3/thirdparty/user/${encodeURIComponent(protocol)}?nick=carol`);
  expect(Array.isArray(users) && users.some((u) => u.userid === `@${userPrefix}carol:${server}`),
    `@${userPrefix}carol:${server} for the nick carol`, users);
  expect(state.lookups.some((l) => l.startsWith("location") && l.includes("#lobby")) &&
    state.lookups.some((l) => l.startsWith("user") && l.includes("carol")), "the bridge's getLocation and getUser called with the fields", state.lookups);
  ok(`location and user lookups answered by the bridge (${lobbyAlias}, @${userPrefix}carol:${server})`);
  // The lobby: a public room (Synapse lists only rooms anyone may join or read), not in the
  // server's own list.
  const portal = state.lobbyRoom;
  await bot.setRoomDirectoryVisibilityAppService(portal, network, "public");
  const listedIn = async (body) => ((await human.okCall("POST", "/_matrix/client/v3/publicRooms", body)).chunk ?? [])
    .some((r) => r.room_id === portal);
  expect(await listedIn({ third_party_instance_id: instance.instance_id }), `${portal} in /publicRooms for ${instance.instance_id}`, portal);
  expect(await listedIn({ include_all_networks: true }), `${portal} in /publicRooms with include_all_networks`, portal);
  expect(!(await listedIn({})), `${portal} not in the server's own list`, portal);
  await bot.setRoomDirectoryVisibilityAppService(portal, network, "private");
  expect(!(await listedIn({ third_party_instance_id: instance.instance_id })), `${portal} gone from the network's list`, portal);
  ok(`the bridge's room directory for ${network}: published, listed for its instance only, withdrawn`);

  // (h) Events missed while the appservice is down, across a homeserver restart, arrive
  // later, each once and in order.
  await bridge.close();
  ok("appservice listener stopped");
  const bodies = Array.from({ length: 10 }, (_, i) => `m${i + 1}`);
  for (const body of bodies.slice(0, 5)) await human.sendText(room, body);
  // Synapse queues an event for an appservice in memory before it stores the transaction,
  // and a restart within milliseconds of the send can lose it: give the homeserver a moment,
  // so this step is about catching up, not about that window.
  await sleep(SETTLE_MS);
  out("REQUEST restart-server");
  const answer = await stdin.next(180_000);
  expect(answer.trim() === "done", "`done` on stdin", answer);
  await waitFor("the homeserver to answer after the restart", async () => {
    try {
      return (await fetch(`${hsUrl.replace(/\/$/, "")}/_matrix/client/versions`, { signal: AbortSignal.timeout(3000) })).ok;
    } catch {
      return false;
    }
  });
  ok("homeserver restarted");
  for (const body of bodies.slice(5)) await human.sendText(room, body);
  await listen();
  ok("appservice listener started again");
  const delivered = () => recorder.events().filter((e) => e.room_id === room && e.type === "m.room.message" &&
    e.sender === human.userId && bodies.includes(e.content?.body)).map((e) => e.content.body);
  await waitFor("m1..m10 to arrive after the restart", () => new Set(delivered()).size === bodies.length,
    { timeoutMs: CATCH_UP_MS, show: delivered });
  await sleep(2000); // let any duplicate delivery show up
  const got = delivered();
  expect(JSON.stringify(got) === JSON.stringify(bodies), "m1..m10 each once, in order", got);
  ok("m1..m10 arrived each once and in order after the restart");
  expect(handlerErrors.length === 0, "no errors in the bridge's event handling", handlerErrors);
}

async function main() {
  const [hsUrl, regPath] = process.argv.slice(2);
  if (!hsUrl || !regPath) {
    process.stderr.write("usage: node bridge_check.mjs <homeserver base URL> <registration YAML path>\n");
    process.exit(2);
  }
  setTimeout(() => {
    out(`FAIL: the check did not finish within ${OVERALL_MS / 1000}s; the last passed step was ${JSON.stringify(lastStep)}`);
    process.exit(1);
  }, OVERALL_MS).unref();
  try {
    await run(hsUrl, regPath);
  } catch (e) {
    if (!(e instanceof CheckFailed)) process.stderr.write(`${e?.stack ?? e}\n`);
    const why = e instanceof CheckFailed ? e.message : `${e?.message ?? e} ${JSON.stringify(e?.body ?? "")}`;
    out(`FAIL: ${why} (after step ${JSON.stringify(lastStep)})`);
    process.exit(1);
  }
  out("OK");
  process.exit(0);
}

await main();
