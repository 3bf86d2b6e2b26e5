"""What the matrix-nio test scripts share: the client configurations, the helpers that turn
an unexpected response into a failure with its HTTP status, and registration over plain
HTTP for the scripts whose clients log in afterwards."""
import json
import urllib.error
import urllib.request

from nio import AsyncClientConfig

# nio retries timeouts/connection errors forever by default (max_timeouts=None) and
# sleeps on 429 forever too: bound both so a dead or rate-limiting server fails fast.
CONFIG = AsyncClientConfig(max_timeouts=2, max_limit_exceeded=0, request_timeout=20,
                           backoff_factor=0.1, max_timeout_retry_wait_time=2,
                           encryption_enabled=False, store_sync_tokens=False)

# The same bounds for clients with a crypto store (nio's e2e extra, vodozemac).
ENCRYPTED_CONFIG = AsyncClientConfig(max_timeouts=2, max_limit_exceeded=0, request_timeout=20,
                                     backoff_factor=0.1, max_timeout_retry_wait_time=2,
                                     encryption_enabled=True, store_sync_tokens=True)


class Failure(Exception):
    pass


def expect(resp, cls, what):
    """Assert nio parsed `resp` as `cls`; otherwise show what nio made of the body."""
    if not isinstance(resp, cls):
        status = getattr(getattr(resp, "transport_response", None), "status", "?")
        raise Failure(f"{what}: expected {cls.__name__}, got {type(resp).__name__} (HTTP {status}): {resp}")
    return resp


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def step(msg):
    print(f"ok   {msg}", flush=True)


def register(base, name, password):
    """Register through the UIA dummy flow with plain HTTP (nio logs in afterwards)."""
    url = f"{base}/_matrix/client/v3/register"
    body = {"username": name, "password": password}
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req).read()
        return
    except urllib.error.HTTPError as e:
        answer = json.loads(e.read())
        if "session" not in answer:
            raise Failure(f"register {name}: HTTP {e.code}: {answer}") from e
    body["auth"] = {"type": "m.login.dummy", "session": answer["session"]}
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
