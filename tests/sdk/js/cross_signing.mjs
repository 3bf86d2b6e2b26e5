// Cross-signing, secret storage, key backup and interactive (SAS emoji) verification, driven
// by matrix-js-sdk 37.5 with its Rust crypto (wasm), the way Element Web drives them:
// `node cross_signing.mjs BASE_URL`. Prints one line per step and "OK"; exits non-zero at the
// first step that does not hold.
//
// 1. The server advertises cross-signing where Element looks for it (`/versions`
//    `unstable_features["org.matrix.e2e_cross_signing"]`); without it Element says "Your
//    homeserver does not support cross-signing" and offers none of what follows.
// 2. Alice and Bob each bootstrap cross-signing with Element's own auth callback: it probes
//    with an upload of no keys and no auth, which must succeed (Synapse: 200) or answer 401
//    offering a one-stage password flow (any other answer sends Element users to an extra
//    dialog), then sends the password without a session. Bob then resets his identity, which the server must
//    guard with user-interactive auth (401 with a session, then the password).
// 3. Each sets up secret storage and a new key backup (Element's "Set up Secure Backup").
// 4. In a shared encrypted room, Alice verifies Bob by emoji: both see the same seven emoji
//    and confirm. Afterwards each reports the other's identity and devices as verified, the
//    server serves Alice's signature on Bob's master key, and a message from Bob decrypts for
//    Alice with no shield (no warning).

import {
  CrossSigningKey,
  CryptoEvent,
  EventShieldColour,
  VerificationPhase,
  VerifierEvent,
} from "matrix-js-sdk/lib/crypto-api/index.js";

import {
  ensure,
  http,
  main,
  register,
  sdk,
  sharedEncryptedRoom,
  startClient,
  step,
  waitFor,
  waitForDecrypted,
} from "./common.mjs";

/** Crypto callbacks that remember the secret storage key they create, as Element does. */
function secretStorageCache() {
  const keys = new Map();
  return {
    cacheSecretStorageKey: (keyId, _info, key) => keys.set(keyId, key),
    getSecretStorageKey: async ({ keys: wanted }) => {
      for (const keyId of Object.keys(wanted)) {
        if (keys.has(keyId)) return [keyId, keys.get(keyId)];
      }
      return null;
    },
  };
}

/**
 * Element Web's `createCrossSigning` with a known password: it first tries an upload of no
 * keys without auth and reads the 401's flows; only a one-stage `m.login.password` flow lets
 * it send the password itself (without a session). Anything else sends the user to an
 * interactive dialog, which is a failure here.
 */
function elementAuthCallback(client, password) {
  return async (makeRequest) => {
    let passwordFlow;
    try {
      await client.uploadDeviceSigningKeys(undefined, {});
      passwordFlow = true;
    } catch (error) {
      const flows = error?.data?.flows;
      ensure(
        error instanceof sdk.MatrixError && Array.isArray(flows),
        `the probe upload of no keys got no UIA flows (Element falls back to a dialog): ${error?.httpStatus} ${JSON.stringify(error?.data)}`,
      );
      passwordFlow = flows.some((flow) => flow.stages.length === 1 && flow.stages[0] === "m.login.password");
    }
    ensure(passwordFlow, "the server offers no one-stage m.login.password flow for the key upload");
    await makeRequest({
      type: "m.login.password",
      identifier: { type: "m.id.user", user: client.getUserId() },
      password,
    });
  };
}

/**
 * The full user-interactive auth dance: without auth the server must refuse with 401, a
 * session and a password flow; the password completes it.
 */
function uiaDanceCallback(client, password, seen) {
  return async (makeRequest) => {
    try {
      await makeRequest(null);
    } catch (error) {
      ensure(
        error?.httpStatus === 401,
        `replacing keys without auth: ${error?.httpStatus} ${JSON.stringify(error?.data)}`,
      );
      const { session, flows } = error.data;
      ensure(typeof session === "string" && session, `the 401 carries no session: ${JSON.stringify(error.data)}`);
      ensure(
        flows?.some((flow) => flow.stages.includes("m.login.password")),
        `the 401 offers no password flow: ${JSON.stringify(error.data)}`,
      );
      seen.challenged = true;
      await makeRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: client.getUserId() },
        password,
        session,
      });
      return;
    }
    throw new Error("the server replaced existing cross-signing keys without user-interactive auth");
  };
}

async function bootstrapCrossSigning(client, password) {
  const crypto = client.getCrypto();
  await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: elementAuthCallback(client, password) });
  ensure(await crypto.isCrossSigningReady(), `${client.getUserId()}: cross-signing not ready after bootstrap`);
  const status = await crypto.getCrossSigningStatus();
  ensure(
    status.publicKeysOnDevice,
    `${client.getUserId()}: public cross-signing keys missing: ${JSON.stringify(status)}`,
  );
  await waitFor(`${client.getUserId()}'s device signed by its own identity`, async () => {
    const own = await crypto.getDeviceVerificationStatus(client.getUserId(), client.getDeviceId());
    return own?.signedByOwner && own.crossSigningVerified;
  });
}

/** Secret storage with a fresh recovery key and a new key backup, as Element's setup does. */
async function bootstrapSecretStorage(client) {
  const crypto = client.getCrypto();
  await crypto.bootstrapSecretStorage({
    createSecretStorageKey: () => crypto.createRecoveryKeyFromPassphrase(),
    setupNewKeyBackup: true,
  });
  ensure(await crypto.isSecretStorageReady(), `${client.getUserId()}: secret storage not ready`);
  const version = await waitFor(`${client.getUserId()}'s key backup to be active`, () =>
    crypto.getActiveSessionBackupVersion(),
  );
  const onServer = await http("GET", "/_matrix/client/v3/room_keys/version", client.getAccessToken());
  ensure(
    onServer.status === 200 && onServer.body.version === version,
    `backup version ${version} active, server says ${onServer.status} ${JSON.stringify(onServer.body)}`,
  );
  const trust = await crypto.isKeyBackupTrusted(onServer.body);
  ensure(trust.trusted && trust.matchesDecryptionKey, `backup not trusted: ${JSON.stringify(trust)}`);
  const defaultKey = await http(
    "GET",
    `/_matrix/client/v3/user/${encodeURIComponent(client.getUserId())}/account_data/m.secret_storage.default_key`,
    client.getAccessToken(),
  );
  ensure(defaultKey.status === 200 && defaultKey.body.key, `default key: ${JSON.stringify(defaultKey.body)}`);
  for (const secret of [
    "m.cross_signing.master",
    "m.cross_signing.self_signing",
    "m.cross_signing.user_signing",
    "m.megolm_backup.v1",
  ]) {
    const stored = await http(
      "GET",
      `/_matrix/client/v3/user/${encodeURIComponent(client.getUserId())}/account_data/${secret}`,
      client.getAccessToken(),
    );
    ensure(
      stored.status === 200 && stored.body.encrypted?.[defaultKey.body.key],
      `${secret} not in secret storage: ${JSON.stringify(stored.body)}`,
    );
  }
  return version;
}

/** The emoji a verifier shows, once it shows them. */
function shownSas(verifier) {
  return new Promise((resolve) => {
    const now = verifier.getShowSasCallbacks();
    if (now) return resolve(now);
    verifier.once(VerifierEvent.ShowSas, resolve);
  });
}

/** Alice verifies Bob by emoji in `roomId`, both sides comparing and confirming. */
async function verifyByEmoji(alice, bob, roomId) {
  const incoming = new Promise((resolve) => bob.once(CryptoEvent.VerificationRequestReceived, resolve));
  const aliceRequest = await alice.getCrypto().requestVerificationDM(bob.getUserId(), roomId);
  const bobRequest = await Promise.race([
    incoming,
    new Promise((_, reject) =>
      setTimeout(() => reject(new Error("bob never received the verification request")), 20000),
    ),
  ]);
  ensure(bobRequest.otherUserId === alice.getUserId(), `request from ${bobRequest.otherUserId}`);
  await bobRequest.accept();
  await waitFor("alice's request to be ready", () => aliceRequest.phase === VerificationPhase.Ready);
  step("bob received alice's verification request and accepted it");

  const aliceVerifier = await aliceRequest.startVerification("m.sas.v1");
  const aliceSas = shownSas(aliceVerifier);
  const aliceDone = aliceVerifier.verify();
  const bobVerifier = await waitFor("bob's side of the SAS to start", () => bobRequest.verifier);
  const bobSas = shownSas(bobVerifier);
  const bobDone = bobVerifier.verify();
  const [aliceShows, bobShows] = await Promise.all([aliceSas, bobSas]);
  const aliceEmoji = aliceShows.sas.emoji?.map(([, name]) => name) ?? [];
  const bobEmoji = bobShows.sas.emoji?.map(([, name]) => name) ?? [];
  ensure(aliceEmoji.length === 7, `alice sees ${aliceEmoji.length} emoji`);
  ensure(aliceEmoji.join() === bobEmoji.join(), `emoji differ: alice ${aliceEmoji} / bob ${bobEmoji}`);
  step(`both see the same emoji (${aliceEmoji.join(", ")})`);

  await Promise.all([aliceShows.confirm(), bobShows.confirm()]);
  await Promise.all([aliceDone, bobDone]);
  await waitFor(
    "both requests to be done",
    () => aliceRequest.phase === VerificationPhase.Done && bobRequest.phase === VerificationPhase.Done,
  );
  step("both confirmed; the verification is done on both sides");
}

/** `viewer` reports `other`'s identity and device as verified. */
async function seesVerified(viewer, other) {
  await waitFor(`${viewer.getUserId()} to see ${other.getUserId()} verified`, async () => {
    const user = await viewer.getCrypto().getUserVerificationStatus(other.getUserId());
    const device = await viewer.getCrypto().getDeviceVerificationStatus(other.getUserId(), other.getDeviceId());
    return user.isCrossSigningVerified() && device?.crossSigningVerified && device.isVerified();
  });
}

await main(async () => {
  const versions = await http("GET", "/_matrix/client/versions");
  ensure(versions.status === 200, `/versions: ${versions.status}`);
  ensure(
    versions.body.unstable_features?.["org.matrix.e2e_cross_signing"] === true,
    `/versions does not advertise unstable_features["org.matrix.e2e_cross_signing"] (Element Web reads it to offer cross-signing): ${JSON.stringify(versions.body.unstable_features)}`,
  );
  step("/versions advertises org.matrix.e2e_cross_signing");

  const tag = Math.random().toString(16).slice(2, 10);
  const password = `pw-${tag}`;
  await register(`js_alice_${tag}`, password);
  await register(`js_bob_${tag}`, password);
  const alice = await startClient(`js_alice_${tag}`, password, { cryptoCallbacks: secretStorageCache() });
  const bob = await startClient(`js_bob_${tag}`, password, { cryptoCallbacks: secretStorageCache() });
  step("both clients logged in, started Rust crypto and synced");
  try {
    await bootstrapCrossSigning(alice, password);
    await bootstrapCrossSigning(bob, password);
    step("both bootstrapped cross-signing with Element's password auth; their devices are self-signed");

    const seen = { challenged: false };
    const oldMaster = await bob.getCrypto().getCrossSigningKeyId();
    await bob.getCrypto().bootstrapCrossSigning({
      setupNewCrossSigning: true,
      authUploadDeviceSigningKeys: uiaDanceCallback(bob, password, seen),
    });
    const newMaster = await bob.getCrypto().getCrossSigningKeyId();
    ensure(
      seen.challenged && newMaster && newMaster !== oldMaster,
      `bob's reset: challenged ${seen.challenged}, ${oldMaster} -> ${newMaster}`,
    );
    ensure(await bob.getCrypto().isCrossSigningReady(), "bob's cross-signing not ready after the reset");
    step("bob reset his identity: the server demanded his password (401, session) and took the new keys");

    const aliceBackup = await bootstrapSecretStorage(alice);
    const bobBackup = await bootstrapSecretStorage(bob);
    step(
      `both set up secret storage (cross-signing keys stored) and key backup (versions ${aliceBackup}, ${bobBackup})`,
    );

    const roomId = await sharedEncryptedRoom(alice, bob);
    step("encrypted room created and joined");

    await waitFor("alice to know bob's identity", async () => {
      const device = await alice.getCrypto().getDeviceVerificationStatus(bob.getUserId(), bob.getDeviceId());
      return device?.signedByOwner;
    });
    const before = await alice.getCrypto().getUserVerificationStatus(bob.getUserId());
    ensure(!before.isCrossSigningVerified(), "alice trusts bob before verifying him");
    step("alice sees bob's identity, not yet verified");

    await verifyByEmoji(alice, bob, roomId);
    await seesVerified(alice, bob);
    await seesVerified(bob, alice);
    step("alice reports bob's identity and device verified, and bob alice's");

    const query = await http("POST", "/_matrix/client/v3/keys/query", alice.getAccessToken(), {
      device_keys: { [bob.getUserId()]: [] },
    });
    const aliceUserSigning = await alice.getCrypto().getCrossSigningKeyId(CrossSigningKey.UserSigning);
    const signatures = query.body.master_keys?.[bob.getUserId()]?.signatures?.[alice.getUserId()] ?? {};
    ensure(
      signatures[`ed25519:${aliceUserSigning}`],
      `the server does not serve alice's signature on bob's master key: ${JSON.stringify(query.body.master_keys)}`,
    );
    step("the server serves alice's signature on bob's master key");

    const { event_id: eventId } = await bob.sendTextMessage(roomId, "verified hello");
    const event = await waitForDecrypted(alice, roomId, eventId, "verified hello");
    const info = await alice.getCrypto().getEncryptionInfoForEvent(event);
    ensure(info, "no encryption info for bob's message");
    ensure(
      info.shieldColour === EventShieldColour.NONE,
      `bob's message shows a shield: colour ${info.shieldColour}, reason ${info.shieldReason}`,
    );
    step("bob's encrypted message decrypts for alice with no warning shield");
  } finally {
    alice.stopClient();
    bob.stopClient();
  }
});
