// An encrypted message round trip driven by matrix-js-sdk 37.5 with its Rust crypto (wasm),
// as Element Web uses it: `node e2ee.mjs BASE_URL`. Prints one line per step and "OK";
// exits non-zero on the first failure.
//
// Alice and Bob log in and start their crypto; Alice creates an encrypted room and invites
// Bob, who joins; Alice sends a message (the SDK queries Bob's device keys, claims a one-time
// key and sends the room key to his device); Bob's client must decrypt it. The event the
// server stored must be ciphertext only.

// The SDK logs every request; keep the output to our steps.
for (const level of ["debug", "info", "log", "warn"]) console[level] = () => {};
const print = (line) => process.stdout.write(line + "\n");

const sdk = await import("matrix-js-sdk");

const base = process.argv[2];
if (!base) {
  print("usage: node e2ee.mjs BASE_URL");
  process.exit(2);
}

function step(message) {
  print(`ok   ${message}`);
}

async function http(method, path, token, body) {
  const response = await fetch(base + path, {
    method,
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

async function register(name, password) {
  const first = await http("POST", "/_matrix/client/v3/register", null, { username: name, password });
  const done = await http("POST", "/_matrix/client/v3/register", null, {
    username: name,
    password,
    auth: { type: "m.login.dummy", session: first.body.session },
  });
  if (done.status !== 200) throw new Error(`register ${name}: ${JSON.stringify(done.body)}`);
}

async function startClient(name, password) {
  const login = await http("POST", "/_matrix/client/v3/login", null, {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: name },
    password,
  });
  if (login.status !== 200) throw new Error(`login ${name}: ${JSON.stringify(login.body)}`);
  const client = sdk.createClient({
    baseUrl: base,
    accessToken: login.body.access_token,
    userId: login.body.user_id,
    deviceId: login.body.device_id,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  await client.startClient({ initialSyncLimit: 10 });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} never synced`)), 20000);
    client.on(sdk.ClientEvent.Sync, (state) => {
      if (state === "PREPARED" || state === "SYNCING") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return client;
}

function waitFor(what, check, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = async () => {
      try {
        const value = await check();
        if (value) return resolve(value);
      } catch (error) {
        return reject(error);
      }
      if (Date.now() - started > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 100);
    };
    poll();
  });
}

async function run() {
  const tag = Math.random().toString(16).slice(2, 10);
  const password = `pw-${tag}`;
  await register(`js_alice_${tag}`, password);
  await register(`js_bob_${tag}`, password);
  const alice = await startClient(`js_alice_${tag}`, password);
  const bob = await startClient(`js_bob_${tag}`, password);
  step("both clients logged in, started Rust crypto and synced");
  try {
    const { room_id: roomId } = await alice.createRoom({
      name: "secret",
      invite: [bob.getUserId()],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await waitFor("bob's invite", () => bob.getRoom(roomId));
    await bob.joinRoom(roomId);
    await waitFor("alice seeing bob join", () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join");
    await waitFor("the room being encrypted for alice", () => alice.getCrypto().isEncryptionEnabledInRoom(roomId));
    step("encrypted room created and joined");

    const { event_id: eventId } = await alice.sendTextMessage(roomId, "the secret plan");
    step("alice sent an encrypted message (bob's keys queried and claimed, room key shared)");

    const stored = await http("GET", `/_matrix/client/v3/rooms/${roomId}/event/${eventId}`, bob.getAccessToken());
    if (stored.body.type !== "m.room.encrypted") throw new Error(`stored type ${stored.body.type}`);
    if (JSON.stringify(stored.body).includes("the secret plan")) throw new Error("plaintext reached the server");
    step("the server holds only ciphertext");

    const decrypted = await waitFor("bob decrypting the message", async () => {
      const event = bob.getRoom(roomId)?.findEventById(eventId);
      if (!event) return null;
      if (event.isDecryptionFailure()) {
        // The room key may still be on its way: ask again.
        await bob.decryptEventIfNeeded(event, { isRetry: true });
      }
      return event.getClearContent()?.body === "the secret plan" ? event : null;
    });
    if (decrypted.getType() !== "m.room.message") throw new Error(`decrypted type ${decrypted.getType()}`);
    step("bob decrypted the message");
    print("OK");
  } finally {
    alice.stopClient();
    bob.stopClient();
  }
}

try {
  await run();
  process.exit(0);
} catch (error) {
  print(`FAIL ${error?.stack ?? error}`);
  process.exit(1);
}
