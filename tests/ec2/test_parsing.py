"""ec2:// against moto: large answers are parsed off the event loop, small ones on it."""

from __future__ import annotations

import asyncio
import gc
import ssl
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from botocore.compat import ETree
from botocore.parsers import ResponseParserError

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.adaptor import heap
from aiores_ec2 import _adaptor, _aws, _parsing
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer

from ..loop_turns import iteration_counter
from .conftest import IMAGE, STEP, aws_context, ec2_url

pytestmark = pytest.mark.asyncio


async def test_large_answers_parsed_in_a_thread(
    moto: MotoServer, session: aiores.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[tuple[str, int, bool]] = []  # (answer's shape, length, on the loop thread)
    loop_thread = threading.get_ident()
    plain = _parsing._OffLoopEC2QueryParser._do_parse

    def recording(self: Any, response: dict[str, Any], shape: Any) -> Any:
        action = shape.name.removesuffix("Result") if shape is not None else "?"
        parsed.append((action, len(response["body"]), threading.get_ident() == loop_thread))
        return plain(self, response, shape)

    monkeypatch.setattr(_parsing._OffLoopEC2QueryParser, "_do_parse", recording)
    mgr = session.manager(ec2_url(moto))
    desc = ComputeDescription(image=IMAGE, template="t3.micro", ready=None)
    vms = await mgr.acquire_many(desc, 40)
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    # Parsed right, whichever thread parsed it.
    assert len({vm.id for vm in vms}) == 40
    assert all(vm.state_detail == "running" for vm in vms)
    big = [p for p in parsed if p[1] >= _parsing.OFF_LOOP_BYTES]
    small = [p for p in parsed if p[1] < _parsing.OFF_LOOP_BYTES]
    # 40 instances' launch (its answer's shape is a Reservation) and description are
    # each past the threshold.
    assert {p[0] for p in big} >= {"Reservation", "DescribeInstances"}, parsed
    assert not any(on_loop for _, _, on_loop in big), big
    # Small answers (the key pair and group look-ups, ...) stay on the loop.
    assert small, parsed
    assert all(on_loop for _, _, on_loop in small), small
    await mgr.destroy(vms)


async def test_large_answers_are_fed_to_the_xml_parser_in_pieces(
    moto: MotoServer, session: aiores.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large answer reaches the XML parser FEED_BYTES at a time (one call for all of it
    would hold the interpreter, and the loop thread, throughout) and parses the same."""
    monkeypatch.setattr(_parsing, "FEED_BYTES", 4096)
    feeds: list[int] = []
    builder = ETree.XMLParser

    class Counted:
        def __init__(self, **kwargs: Any) -> None:
            self._parser = builder(**kwargs)

        def feed(self, data: bytes) -> None:
            feeds.append(len(data))
            self._parser.feed(data)

        def close(self) -> Any:
            return self._parser.close()

    monkeypatch.setattr(ETree, "XMLParser", Counted)
    mgr = session.manager(ec2_url(moto))
    desc = ComputeDescription(image=IMAGE, template="t3.micro", ready=None)
    vms = await mgr.acquire_many(desc, 40)
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    assert len({vm.id for vm in vms}) == 40
    assert all(vm.state_detail == "running" for vm in vms)
    assert feeds
    assert max(feeds) <= 4096
    assert len(feeds) >= _parsing.OFF_LOOP_BYTES // 4096  # a large answer, in pieces
    await mgr.destroy(vms)


async def test_a_large_answer_that_is_not_xml_is_a_parse_error() -> None:
    parser = _parsing._Factory().create_parser("ec2")
    body = b"<DescribeInstancesResponse>" + b"x" * _parsing.OFF_LOOP_BYTES  # never closed
    with pytest.raises(ResponseParserError, match="invalid XML received"):
        parser._parse_xml_string_to_dom(body)


async def test_instances_become_resource_infos_a_few_per_loop_turn(
    moto: MotoServer, session: aiores.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instances of one answer (a launch's, a describe's) are turned into records
    ``_INFOS_PER_TURN`` per loop iteration, not all in one step of the loop."""
    monkeypatch.setattr(_adaptor, "_INFOS_PER_TURN", 8)
    now, stop = iteration_counter(asyncio.get_running_loop())
    made: list[int] = []
    plain = _adaptor.EC2ResourceAdaptor._info

    def counted(self: Any, inst: Any, known_tags: Any = None) -> Any:
        made.append(now())
        return plain(self, inst, known_tags)

    monkeypatch.setattr(_adaptor.EC2ResourceAdaptor, "_info", counted)
    try:
        mgr = session.manager(ec2_url(moto))
        desc = ComputeDescription(image=IMAGE, template="t3.micro", ready=None)
        vms = await mgr.acquire_many(desc, 40)
        async with asyncio.timeout(STEP):
            await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    finally:
        stop()
    assert len({vm.id for vm in vms}) == 40
    assert all(vm.state_detail == "running" for vm in vms)
    assert len(made) >= 80  # the launch's 40, then at least one describe of all 40
    assert max(Counter(made).values()) <= 8
    await mgr.destroy(vms)


async def test_large_answers_are_parsed_with_no_collection_and_quick_switches_meanwhile(
    moto: MotoServer, session: aiores.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large answer's tree lives for its parse only: no collection runs meanwhile,
    which would move it to the oldest generation (aiores._heap.no_collections); and
    the interpreter passes between threads quickly (aiores._heap.quick_switches)."""
    collecting: list[tuple[int, bool]] = []  # (answer's length, collections automatic)
    switching: list[tuple[int, float]] = []  # (answer's length, switch interval)
    plain = _parsing._OffLoopEC2QueryParser._do_parse
    interval = sys.getswitchinterval()

    def recording(self: Any, response: dict[str, Any], shape: Any) -> Any:
        collecting.append((len(response["body"]), gc.get_threshold()[0] > 0))
        switching.append((len(response["body"]), sys.getswitchinterval()))
        return plain(self, response, shape)

    monkeypatch.setattr(_parsing._OffLoopEC2QueryParser, "_do_parse", recording)
    mgr = session.manager(ec2_url(moto))
    desc = ComputeDescription(image=IMAGE, template="t3.micro", ready=None)
    vms = await mgr.acquire_many(desc, 40)
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    big = [enabled for length, enabled in collecting if length >= _parsing.OFF_LOOP_BYTES]
    assert big
    assert not any(big)
    assert gc.get_threshold()[0] > 0
    assert gc.isenabled()
    quick = [i for length, i in switching if length >= _parsing.OFF_LOOP_BYTES]
    assert quick == [pytest.approx(heap.QUICK_SWITCH)] * len(big)
    assert sys.getswitchinterval() == interval
    await mgr.destroy(vms)


async def test_a_clients_tls_context_is_made_off_the_loop(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the CA bundle into a TLS context is 18-25 ms of CPU: it happens in the
    worker thread that prepares the process's clients, never on the loop thread, and
    every later session's client uses the context made then."""
    monkeypatch.setattr(_aws, "_TLS", {})
    monkeypatch.setattr(_aws, "_BOTO_STATIC", {})  # prepared anew, as in a new process
    loads: list[int] = []  # the threads that loaded a CA bundle
    plain = ssl.SSLContext.load_verify_locations

    def recording(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(threading.get_ident())
        plain(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", recording)
    loop_thread = threading.get_ident()
    for _ in range(2):  # the first session prepares, the second uses what it made
        async with aiores.Session(contexts=[aws_context()]) as session:
            assert await session.manager(ec2_url(moto)).list() == []
    assert len(_aws._TLS) == 1
    assert len(loads) == 1
    assert loop_thread not in loads


async def test_a_ca_bundle_that_cannot_be_read_is_left_to_the_first_request(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Preparing the clients does not fail on a CA bundle it cannot read: no context is
    kept for it, and the request that needs it fails as it would have without it."""
    monkeypatch.setattr(_aws, "_TLS", {})
    missing = tmp_path / "no-such-bundle.pem"
    monkeypatch.setenv("AWS_CA_BUNDLE", str(missing))
    target = _aws.Target(
        service="ec2",
        region="us-east-1",
        endpoint_url=moto.url,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    boto = await asyncio.to_thread(_aws._prepare, target)
    assert boto is not None
    assert _aws._TLS == {}
