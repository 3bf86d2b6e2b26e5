// What the matrix-js-sdk scripts share: quiet output, step lines, plain HTTP, registration,
// a logged-in client with Rust crypto, and polling with a deadline. The base URL is the
// script's first argument.

// The SDK logs every request; keep the output to our steps.
for (const level of ["debug", "info", "log", "warn"]) console[level] = () => {};
const print = (line) => process.stdout.write(line + "\n");

export const sdk = await import("matrix-js-sdk");

export const base = process.argv[2];
if (!base) {
  print(`usage: node ${process.argv[1]} BASE_URL`);
  process.exit(2);
}

export function step(message) {
  print(`ok   ${message}`);
}

/** Runs the script's body: "OK" last on success, "FAIL" and exit 1 on the first failure. */
export async function main(run) {
  try {
    await run();
    print("OK");
    process.exit(0);
  } catch (error) {
    print(`FAIL ${error?.stack ?? error}`);
    process.exit(1);
  }
}

export function ensure(condition, message) {
  if (!condition) throw new Error(message);
}

export async function http(method, path, token, body) {
  const response = await fetch(base + path, {
    method,
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = { unparsed: text };
  }
  return { status: response.status, body: json };
}

export async function register(name, password) {
  const first = await http("POST", "/_matrix/client/v3/register", null, { username: name, password });
  const done = await http("POST", "/_matrix/client/v3/register", null, {
    username: name,
    password,
    auth: { type: "m.login.dummy", session: first.body.session },
  });
  if (done.status !== 200) throw new Error(`register ${name}: ${JSON.stringify(done.body)}`);
}

/** Logs in with a password, starts Rust crypto (in memory) and the sync loop. */
export async function startClient(name, password, options = {}) {
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
    ...options,
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

/** Polls `check` every 100 ms until it returns something truthy; fails after the deadline. */
export function waitFor(what, check, timeoutMs = 20000) {
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

/** Alice creates an encrypted room and invites Bob, who joins; resolves to the room ID. */
export async function sharedEncryptedRoom(alice, bob) {
  const { room_id: roomId } = await alice.createRoom({
    name: "secret",
    invite: [bob.getUserId()],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  await waitFor("bob's invite", () => bob.getRoom(roomId));
  await bob.joinRoom(roomId);
  await waitFor(
    "alice seeing bob join",
    () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join",
  );
  await waitFor("the room being encrypted for alice", () => alice.getCrypto().isEncryptionEnabledInRoom(roomId));
  await waitFor("the room being encrypted for bob", () => bob.getCrypto().isEncryptionEnabledInRoom(roomId));
  return roomId;
}

/** Waits until `client` has decrypted `eventId` in `roomId` to `body`; resolves to the event. */
export function waitForDecrypted(client, roomId, eventId, body) {
  return waitFor(`${client.getUserId()} decrypting ${eventId}`, async () => {
    const event = client.getRoom(roomId)?.findEventById(eventId);
    if (!event) return null;
    if (event.isDecryptionFailure()) {
      // The room key may still be on its way: ask again.
      await client.decryptEventIfNeeded(event, { isRetry: true });
    }
    return event.getClearContent()?.body === body ? event : null;
  });
}
