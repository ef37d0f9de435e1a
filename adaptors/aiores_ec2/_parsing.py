"""Large EC2 answers parsed in a worker thread, not on the event loop.

aiobotocore parses every answer on the loop thread. EC2 answers in XML, and the
answer to a RunInstances or DescribeInstances of 1000 instances is megabytes:
botocore takes 0.2-0.7 s of CPU to turn it into dicts, one callback during which
no other task of the loop runs (timers, SSH keepalives, other sessions' work).
Answers from :data:`OFF_LOOP_BYTES` up are parsed by botocore's own (synchronous)
parser through :func:`asyncio.to_thread`; the loop keeps running meanwhile (the
thread gives the interpreter up every few milliseconds, and it feeds the XML parser
:data:`FEED_BYTES` at a time: one call for the whole answer would hold the
interpreter, and so the loop thread, for tens of milliseconds; and the interpreter
passes between threads ten times as often meanwhile). Small answers, errors and
other protocols keep aiobotocore's parser: a thread hop costs more than they do.

The factory is registered on the botocore session the aioboto3 session is made
from (:func:`botocore_session`), so every client of that session uses it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiobotocore.parsers import AioEC2QueryParser, AioResponseParserFactory
from aiobotocore.session import AioSession
from botocore.compat import ETree
from botocore.parsers import ResponseParser, ResponseParserError, XMLParseError

from aiores.adaptor import heap

__all__ = ["FEED_BYTES", "OFF_LOOP_BYTES", "botocore_session"]

#: Answers at least this long are parsed off the loop (about 25 instances' worth).
OFF_LOOP_BYTES = 64 * 1024
#: Bytes fed to the XML parser at a time, off the loop (about a millisecond's parse).
FEED_BYTES = 64 * 1024


class _OffLoopEC2QueryParser(AioEC2QueryParser):  # type: ignore[misc]  # untyped base
    def _parse_now(self, response: dict[str, Any], shape: Any) -> Any:
        # The XML tree and the dicts made of it live for the parse only: collections
        # meanwhile would move them to the oldest generation and set off a full
        # collection per answer (aiores._heap.no_collections). And the loop's thread
        # gets the interpreter back quickly, not after 5 ms each time it gave it up
        # (aiores._heap.quick_switches).
        with heap.no_collections(), heap.quick_switches():
            return ResponseParser.parse(self, response, shape)

    def _parse_xml_string_to_dom(self, xml_string: bytes) -> Any:
        # botocore feeds the whole answer to the XML parser in one call, which holds
        # the interpreter throughout (C code: 30-60 ms for a thousand instances),
        # from the loop thread too; fed in pieces, the thread gives it up between them.
        if len(xml_string) < OFF_LOOP_BYTES:
            return super()._parse_xml_string_to_dom(xml_string)
        try:
            parser = ETree.XMLParser(target=ETree.TreeBuilder(), encoding=self.DEFAULT_ENCODING)
            for start in range(0, len(xml_string), FEED_BYTES):
                parser.feed(xml_string[start : start + FEED_BYTES])
            return parser.close()
        except XMLParseError as exc:
            raise ResponseParserError(
                f"Unable to parse response ({exc}), "
                f"invalid XML received. Further retries may succeed:\n{xml_string!r}"
            ) from exc

    async def parse(self, response: dict[str, Any], shape: Any) -> Any:
        body = response.get("body")
        if (
            response.get("status_code", 500) < 300
            and isinstance(body, bytes)
            and len(body) >= OFF_LOOP_BYTES
        ):
            # botocore's synchronous parse: EC2's parser has no awaitable step. Each
            # call has a parser of its own (the factory makes one per response).
            return await asyncio.to_thread(self._parse_now, response, shape)
        return await super().parse(response, shape)


class _Factory(AioResponseParserFactory):  # type: ignore[misc]  # untyped base
    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name == "ec2":
            return _OffLoopEC2QueryParser(**self._defaults)
        return super().create_parser(protocol_name)


def botocore_session() -> Any:
    """A new aiobotocore session whose clients parse large EC2 answers off the loop."""
    session = AioSession()
    session.register_component("response_parser_factory", _Factory())
    return session
