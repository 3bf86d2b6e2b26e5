"""An SMTP server on loopback for the email notification tests (tests/it/push_email.rs),
built on aiosmtpd.

Usage: sink.py [REFUSE]. Listens on a free port of 127.0.0.1 and prints `PORT <n>`; then
one JSON line per message handed over: the envelope, the subject and headers, and each
MIME part decoded. The first REFUSE messages (default 0) are answered `451` (try again
later) and reported as `{"event": "refused"}`. Exits when its standard input closes.
"""

import asyncio
import email
import email.policy
import json
import sys
import threading
import os

from aiosmtpd.smtp import SMTP


def emit(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


class Handler:
    def __init__(self, refuse):
        self.refuse = refuse

    async def handle_DATA(self, server, session, envelope):
        if self.refuse > 0:
            self.refuse -= 1
            emit({"event": "refused"})
            return "451 4.3.0 Try again later"
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        parts = []
        for part in message.walk():
            if part.get_content_maintype() == "multipart":
                continue
            parts.append({"type": part.get_content_type(), "body": part.get_content()})
        emit(
            {
                "event": "message",
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "from": str(message["From"]),
                "to": str(message["To"]),
                "subject": str(message["Subject"]),
                "list_unsubscribe": str(message.get("List-Unsubscribe", "")),
                "parts": parts,
            }
        )
        return "250 OK"


async def main():
    refuse = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    handler = Handler(refuse)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    emit({"event": "listening", "port": server.sockets[0].getsockname()[1]})
    await asyncio.Event().wait()


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
asyncio.run(main())
