// An encrypted message round trip driven by matrix-js-sdk 37.5 with its Rust crypto (wasm),
// as Element Web uses it: `node e2ee.mjs BASE_URL`. Prints one line per step and "OK";
// exits non-zero on the first failure.
//
// Alice and Bob log in and start their crypto; Alice creates an encrypted room and invites
// Bob, who joins; Alice sends a message (the SDK queries Bob's device keys, claims a one-time
// key and sends the room key to his device); Bob's client must decrypt it. The event the
// server stored must be ciphertext only.

import { http, main, register, sharedEncryptedRoom, startClient, step, waitForDecrypted } from "./common.mjs";

await main(async () => {
  const tag = Math.random().toString(16).slice(2, 10);
  const password = `pw-${tag}`;
  await register(`js_alice_${tag}`, password);
  await register(`js_bob_${tag}`, password);
  const alice = await startClient(`js_alice_${tag}`, password);
  const bob = await startClient(`js_bob_${tag}`, password);
  step("both clients logged in, started Rust crypto and synced");
  try {
    const roomId = await sharedEncryptedRoom(alice, bob);
    step("encrypted room created and joined");

    const { event_id: eventId } = await alice.sendTextMessage(roomId, "the secret plan");
    step("alice sent an encrypted message (bob's keys queried and claimed, room key shared)");

    const stored = await http("GET", `/_matrix/client/v3/rooms/${roomId}/event/${eventId}`, bob.getAccessToken());
    if (stored.body.type !== "m.room.encrypted") throw new Error(`stored type ${stored.body.type}`);
    if (JSON.stringify(stored.body).includes("the secret plan")) throw new Error("plaintext reached the server");
    step("the server holds only ciphertext");

    const decrypted = await waitForDecrypted(bob, roomId, eventId, "the secret plan");
    if (decrypted.getType() !== "m.room.message") throw new Error(`decrypted type ${decrypted.getType()}`);
    step("bob decrypted the message");
  } finally {
    alice.stopClient();
    bob.stopClient();
  }
});
