// matrix-bot-sdk loads the crypto binding when it loads at all, but only calls it for
// end-to-end encryption, which the appservice check does not turn on. Any use is a bug in the
// check, so say so instead of failing somewhere deep inside the SDK.
module.exports = new Proxy({}, {
  get(_target, name) {
    if (typeof name === "symbol" || name === "__esModule" || name === "then") return undefined;
    throw new Error(`end-to-end encryption is not available in the appservice check (used ${String(name)})`);
  },
});
