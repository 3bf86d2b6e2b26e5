"""What the plain (unencrypted) matrix-nio test scripts share: the client configuration and
the helpers that turn an unexpected response into a failure with its HTTP status."""
from nio import AsyncClientConfig

CONFIG = AsyncClientConfig(max_timeouts=2, max_limit_exceeded=0, request_timeout=20,
                           backoff_factor=0.1, max_timeout_retry_wait_time=2,
                           encryption_enabled=False, store_sync_tokens=False)


class Failure(Exception):
    pass


def expect(resp, cls, what):
    if not isinstance(resp, cls):
        status = getattr(getattr(resp, "transport_response", None), "status", "?")
        raise Failure(f"{what}: expected {cls.__name__}, got {type(resp).__name__} (HTTP {status}): {resp}")
    return resp


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def step(msg):
    print(f"ok   {msg}", flush=True)
