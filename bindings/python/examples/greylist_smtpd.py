"""A small SMTP server on aiosmtpd that greylists at RCPT time.

    python3 examples/greylist_smtpd.py --port 2525

Each RCPT is checked against the engine: a pass adds the recipient, a
defer or block answers the engine's suggested reply (``450 4.2.0 ...``).
Accepted messages go to ``handle_message`` (here: printed).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Callable, List

import greylist


class GreylistHandler:
    """An aiosmtpd handler. ``clock`` returns Unix seconds (injectable for
    tests); ``delivered`` keeps the accepted envelopes."""

    def __init__(self, engine: greylist.Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self.delivered: List[Any] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: List[str]) -> str:
        client_ip = session.peer[0]
        try:
            # acheck: the check runs off the event loop (a Redis-backed
            # engine may wait on the network).
            verdict = await self.engine.acheck(client_ip, envelope.mail_from or "", address, now=self.clock())
        except greylist.InvalidInputError as e:
            return f"501 5.1.3 {e}"
        if verdict.action is greylist.Action.PASS:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        assert verdict.reply is not None
        return verdict.reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.delivered.append(envelope)
        self.handle_message(envelope)
        return "250 2.0.0 Message accepted for delivery"

    def handle_message(self, envelope: Any) -> None:
        print(f"delivered from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}", flush=True)


def main() -> None:
    from aiosmtpd.controller import Controller

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--delay", type=int, default=300)
    args = parser.parse_args()
    with greylist.Engine(delay=args.delay) as engine:
        controller = Controller(GreylistHandler(engine), hostname=args.host, port=args.port)
        controller.start()
        print(f"greylisting SMTP server on {args.host}:{args.port} (delay {args.delay} s)", flush=True)
        try:
            asyncio.run(asyncio.Event().wait())
        except KeyboardInterrupt:
            pass
        finally:
            controller.stop()


if __name__ == "__main__":
    main()
