// Push notifications as a mobile Element sets them up, driven by matrix-js-sdk 37.5:
// `node pusher.mjs BASE_URL` (the server must allow loopback push gateways). Prints one line
// per step and "OK"; exits non-zero on the first failure.
//
// This script runs a push gateway on loopback that records what it receives. Bob sets an HTTP
// pusher through the SDK's `setPusher` with the fields Element's apps send (`event_id_only`,
// as Element X asks, so the gateway never sees message content), reads it back with
// `getPushers`; Alice, in an encrypted room with him, sends a message: the gateway must get
// the notification for that event, for Bob's push key, with a badge. Bob then deletes the
// pusher (`kind: null`) and a second message reaches the gateway no more.

import http_server from "node:http";
import { main, register, sharedEncryptedRoom, startClient, step, waitFor } from "./common.mjs";

function startGateway() {
  const received = [];
  const server = http_server.createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      if (request.url === "/_matrix/push/v1/notify") {
        try {
          received.push(JSON.parse(body).notification);
        } catch {
          received.push({ unparsed: body });
        }
      }
      response.writeHead(200, { "Content-Type": "application/json" });
      response.end(JSON.stringify({ rejected: [] }));
    });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const url = `http://127.0.0.1:${server.address().port}/_matrix/push/v1/notify`;
      resolve({ server, url, received });
    });
  });
}

await main(async () => {
  const gateway = await startGateway();
  const tag = Math.random().toString(16).slice(2, 10);
  const password = `pw-${tag}`;
  await register(`js_alice_${tag}`, password);
  await register(`js_bob_${tag}`, password);
  const alice = await startClient(`js_alice_${tag}`, password);
  const bob = await startClient(`js_bob_${tag}`, password);
  try {
    const roomId = await sharedEncryptedRoom(alice, bob);
    step("alice and bob share an encrypted room");

    const pushkey = `fcm-token-${tag}`;
    await bob.setPusher({
      kind: "http",
      app_id: "im.vector.app.android",
      app_display_name: "Element",
      device_display_name: "Bob's phone",
      pushkey,
      lang: "en",
      append: false,
      data: { url: gateway.url, format: "event_id_only" },
    });
    const { pushers } = await bob.getPushers();
    if (pushers.length !== 1 || pushers[0].pushkey !== pushkey || pushers[0].data.url !== gateway.url) {
      throw new Error(`getPushers: ${JSON.stringify(pushers)}`);
    }
    step("bob set an HTTP pusher (event_id_only) and reads it back");

    const { event_id: eventId } = await alice.sendTextMessage(roomId, "are you there?");
    const notification = await waitFor("the notification at the gateway", () =>
      gateway.received.find((n) => n.event_id === eventId),
    );
    const device = notification.devices?.[0];
    if (notification.room_id !== roomId) throw new Error(`room_id ${notification.room_id}`);
    if (device?.pushkey !== pushkey || device?.app_id !== "im.vector.app.android") {
      throw new Error(`devices ${JSON.stringify(notification.devices)}`);
    }
    if (device.data?.url !== undefined) throw new Error("the gateway was sent its own URL");
    if (notification.content !== undefined || notification.sender !== undefined) {
      throw new Error(`event_id_only carried the event: ${JSON.stringify(notification)}`);
    }
    if (notification.counts?.unread !== 1) throw new Error(`badge ${JSON.stringify(notification.counts)}`);
    if (notification.prio !== "high") throw new Error(`an encrypted message is sent high: ${notification.prio}`);
    step("the gateway got the notification for alice's encrypted message, for bob's push key, badge 1");

    await bob.setPusher({ kind: null, app_id: "im.vector.app.android", pushkey });
    const after = await bob.getPushers();
    if (after.pushers.length !== 0) throw new Error(`pusher not deleted: ${JSON.stringify(after.pushers)}`);
    const count = gateway.received.length;
    const { event_id: second } = await alice.sendTextMessage(roomId, "hello again");
    // The absence of a push can only be shown by waiting: the first one took well under this.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (gateway.received.some((n) => n.event_id === second) || gateway.received.length !== count) {
      throw new Error("a deleted pusher was still sent to");
    }
    step("after bob deleted the pusher, the gateway hears nothing of the next message");
  } finally {
    alice.stopClient();
    bob.stopClient();
    gateway.server.close();
  }
});
