// A real OpenID provider for the single sign-on tests: node-oidc-provider (an OpenID-certified
// OP implementation) on a loopback port, with the clients and accounts the test names.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {
//   "port": 0,                                   (0: any free port; a test that restarts the
//                                                 provider passes the port it had)
//   "clients": [{ "client_id", "client_secret", "redirect_uris": [...],
//                 "id_token_signed_response_alg"?, "backchannel_logout_uri"?,
//                 "token_endpoint_auth_method"? }],
//   "accounts": { "<sub>": { "password": "...", "claims": { "preferred_username", "name",
//                 "email", "groups": [...] } } }
// }
//
// Prints one JSON line `{"issuer": "http://127.0.0.1:<port>"}` once it listens, then one line
// per back-channel logout it sends (`{"event": "backchannel.success" | "backchannel.error"}`).
// The login page is a plain HTML form (`login`, `password`) at `/interaction/<uid>`, posted to
// `/interaction/<uid>/login`; consent is granted without asking (the relying party is the
// company's own chat server). Signing keys are made fresh at each start: RSA (RS256), P-256
// (ES256) and Ed25519 (EdDSA), so each client may pick its ID token algorithm.

import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";

import Provider from "oidc-provider";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");

function signingKey(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: "jwk" }), kid: `${alg}-${crypto.randomUUID()}`, alg, use: "sig" };
}

const keys = [
  signingKey("rsa", { modulusLength: 2048 }, "RS256"),
  signingKey("ec", { namedCurve: "P-256" }, "ES256"),
  signingKey("ed25519", {}, "EdDSA"),
];

const server = http.createServer();
await new Promise((resolve) => server.listen(config.port ?? 0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const CLAIMS = ["sub", "name", "preferred_username", "email", "email_verified", "groups"];

const provider = new Provider(issuer, {
  clients: config.clients.map((client) => ({
    grant_types: ["authorization_code"],
    response_types: ["code"],
    ...client,
    ...(client.backchannel_logout_uri ? { backchannel_logout_session_required: true } : {}),
  })),
  jwks: { keys },
  cookies: { keys: [crypto.randomBytes(16).toString("hex")] },
  scopes: ["openid", "profile", "email", "groups"],
  claims: {
    openid: ["sub"],
    profile: ["name", "preferred_username"],
    email: ["email", "email_verified"],
    groups: ["groups"],
  },
  // Scope claims go into the ID token too (as Keycloak and Authentik put them there); the
  // userinfo endpoint answers them as well.
  conformIdTokenClaims: false,
  pkce: { required: () => false },
  enabledJWA: { idTokenSigningAlgValues: ["RS256", "ES256", "EdDSA"] },
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><body>${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button></body></html>`;
      },
    },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // The provider refuses to call special-use addresses (its SSRF guard); here the relying
  // party's back-channel logout URL is on loopback by design, so the guard is left out.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  async findAccount(ctx, sub) {
    const account = config.accounts[sub];
    if (!account) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...account.claims }) };
  },
  // The chat server is the company's own: its access is granted without a consent page.
  async loadExistingGrant(ctx) {
    const accountId = ctx.oidc.session?.accountId;
    if (!accountId) return undefined;
    const existing = ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (existing) {
      const grant = await ctx.oidc.provider.Grant.find(existing);
      if (grant) return grant;
    }
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId });
    grant.addOIDCScope("openid profile email groups");
    grant.addOIDCClaims(CLAIMS);
    await grant.save();
    return grant;
  },
});
provider.on("backchannel.success", (ctx, client, accountId, sid) =>
  print({ event: "backchannel.success", client: client.clientId, sub: accountId, sid }),
);
provider.on("backchannel.error", (ctx, error, client, accountId, sid) =>
  print({ event: "backchannel.error", client: client.clientId, sub: accountId, sid, error: String(error) }),
);

provider.on("grant.error", (ctx, error) =>
  print({ event: "grant.error", error: String(error), detail: error.error_detail ?? null }),
);

function loginPage(uid, message = "") {
  return `<!DOCTYPE html>
<html><head><title>Company sign-in</title></head><body>
<h1>Company sign-in</h1>
<p id="message">${message}</p>
<form method="post" action="/interaction/${uid}/login">
<label>User <input id="login" name="login" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form></body></html>`;
}

async function readForm(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    res.writeHead(400);
    return res.end("interaction mismatch");
  }
  if (details.prompt.name === "consent") {
    const grant = new provider.Grant({ clientId: details.params.client_id, accountId: details.session.accountId });
    grant.addOIDCScope(details.params.scope);
    grant.addOIDCClaims(CLAIMS);
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (action === "login" && req.method === "POST") {
    const form = await readForm(req);
    const sub = form.get("login") ?? "";
    const account = config.accounts[sub];
    if (!account || account.password !== form.get("password")) {
      res.writeHead(200, { "Content-Type": "text/html" });
      return res.end(loginPage(uid, "Wrong user or password."));
    }
    return provider.interactionFinished(req, res, { login: { accountId: sub } }, { mergeWithLastSubmission: false });
  }
  res.writeHead(200, { "Content-Type": "text/html" });
  res.end(loginPage(uid));
}

const callback = provider.callback();
server.on("request", (req, res) => {
  const match = /^\/interaction\/([^/?]+)(?:\/(login))?(?:\?.*)?$/.exec(req.url);
  if (!match) return callback(req, res);
  interaction(req, res, match[1], match[2]).catch((error) => {
    res.writeHead(500, { "Content-Type": "text/plain" });
    res.end(String(error));
  });
});

print({ issuer });
