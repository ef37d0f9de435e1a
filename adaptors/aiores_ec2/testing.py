"""A moto server for tests of ``ec2://`` and ``s3://`` code: loopback only, own process.

moto (``pip install 'moto[server]'``) answers the EC2 and S3 APIs in memory; its
in-process mocking does not reach aiobotocore, so it runs as a server, here in a
child process (no GIL shared with the tests) bound to 127.0.0.1 on a free port. A
thin WSGI layer in front of it adds what moto lacks and tests need:

- **call counts** per action (``RunInstances``; EventBridge and SQS calls by their
  action, ``PutRule``, ``ReceiveMessage``; S3 calls as ``S3:PUT:object``...), as the
  server saw them: retries included;
- **loopback addresses**: instances' public addresses are in 127.0.0.0/8 (moto makes
  up internet ones), so that nothing can reach off this machine by mistake;
- **faults**: a pending phase for new instances (moto's are running at once),
  throttling (``RequestLimitExceeded``) or any error for the next n calls of an
  action or with a probability, and delays before or after an action is carried out
  (a request in flight; a request carried out whose answer has not arrived).

    server = MotoServer()
    server.start()                       # blocking: use it from a fixture
    ...ec2://us-east-1?endpoint={server.url}...
    await server.set_faults(pending=0.5, throttle={"RunInstances": 2})
    print(await server.calls())
    server.stop()

The child exits by itself when its parent dies (it watches its standard input).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["MotoServer", "main"]

#: Dummy credentials for a moto endpoint (moto accepts any).
ACCESS_KEY = "testing"
SECRET_KEY = "testing"

#: Environment that turns on moto's validation of images, instance types and key pairs.
VALIDATION_ENV = {
    "MOTO_ENABLE_AMI_VALIDATION": "true",
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
    "MOTO_ENABLE_KEYPAIR_VALIDATION": "true",
}

StartResponse = Callable[..., Any]

_SHARED: dict[bool, MotoServer] = {}


class MotoServer:
    """A moto server process on 127.0.0.1 (see the module docstring).

    Args:
        validation: Turn on moto's validation of AMIs, instance types and key pairs.
        env: More environment for the server process.
    """

    def __init__(self, *, validation: bool = False, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ)
        self._env.update(env or {})
        if validation:
            self._env.update(VALIDATION_ENV)
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @classmethod
    def shared(cls, *, validation: bool = False) -> MotoServer:
        """One launched server per process and kind, stopped when the process exits.

        Lets several test directories share a server (call :meth:`wait_ready`).
        """
        server = _SHARED.get(validation)
        if server is None:
            server = _SHARED[validation] = cls(validation=validation)
            server.launch()
            atexit.register(server.stop)
        return server

    @property
    def url(self) -> str:
        """The endpoint URL (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0) -> None:
        """Blocking: start the server and wait until it listens.

        Raises:
            RuntimeError: it did not start within ``timeout`` seconds.
        """
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server process without waiting (see :meth:`wait_ready`)."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "aiores_ec2.testing", "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._env,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Blocking: wait until the launched server listens.

        Raises:
            RuntimeError: it did not start within ``timeout`` seconds.
        """
        if self.port:
            return
        proc = self._proc
        assert proc is not None, "launch() first"
        assert proc.stdout is not None
        ready: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            ready.append(proc.stdout.readline().decode())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        line = ready[0] if ready else ""
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"the moto server did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        """Blocking: end the server process."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    # -- control (blocking forms, then awaitable ones that run in a thread) -----------
    def _request(self, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = answer.read()
        return json.loads(body) if body.strip().startswith((b"{", b"[")) else None

    def reset_sync(self) -> None:
        """Blocking: forget every AWS resource, fault and count."""
        self._request("/moto-api/reset", {})
        self._request("/_aiores/reset", {})

    def calls_sync(self) -> dict[str, int]:
        """Blocking: calls per action since the last reset."""
        return dict(self._request("/_aiores/calls"))

    def set_faults_sync(self, **faults: Any) -> None:
        """Blocking: add faults (see :meth:`set_faults`)."""
        self._request("/_aiores/faults", faults)

    def forget_terminated_sync(self) -> int:
        """Blocking: make moto forget terminated instances (it keeps them forever, and
        some of its calls slow down with their number); returns how many it forgot."""
        return int(self._request("/_aiores/forget_terminated", {})["forgotten"])

    async def reset(self) -> None:
        """Forget every AWS resource, fault and count."""
        await asyncio.to_thread(self.reset_sync)

    async def calls(self) -> dict[str, int]:
        """Calls per action since the last reset (or :meth:`reset_calls`)."""
        return await asyncio.to_thread(self.calls_sync)

    def reset_calls_sync(self) -> None:
        """Blocking: start counting calls from zero (faults and resources stay)."""
        self._request("/_aiores/reset_calls", {})

    async def reset_calls(self) -> None:
        """Start counting calls from zero (faults stay)."""
        await asyncio.to_thread(self._request, "/_aiores/reset_calls", {})

    async def set_faults(self, **faults: Any) -> None:
        """Add faults (see :class:`FaultApp`); ``clear=True`` first forgets the old ones."""
        await asyncio.to_thread(self._request, "/_aiores/faults", faults)


# -- the server process ---------------------------------------------------------------------
class FaultApp:
    """WSGI layer over moto: counts calls, injects faults.

    Faults (a JSON object posted to ``/_aiores/faults``; each action is named as AWS
    names it, or ``"*"`` for every EC2 action):

    - ``pending``: seconds a new instance stays ``pending`` before ``running``;
    - ``throttle``: ``{action: n}``, the next n calls answer ``RequestLimitExceeded``;
    - ``throttle_rate``: ``{action: p}``, each call is throttled with probability p;
    - ``error``: ``{action: [n, status, code]}``, the next n calls answer that error;
    - ``delay_before`` / ``delay_after``: ``{action: seconds}``, sleep before carrying
      the call out (in flight), or after (carried out, answer not yet sent);
    - ``seed``: the seed of the throttle_rate coin.
    """

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()
        self.faults: dict[str, Any] = {}
        self.rng = random.Random(0)
        self.pending: list[tuple[float, Any]] = []

    # moto's instances are running as soon as they exist: give them a pending phase.
    def instance_created(self, instance: Any) -> None:
        delay = float(self.faults.get("pending", 0) or 0)
        if delay > 0:
            instance._state.name = "pending"
            instance._state.code = 0
            with self.lock:
                self.pending.append((time.monotonic() + delay, instance))

    def _flip(self) -> None:
        now = time.monotonic()
        with self.lock:
            due = [inst for at, inst in self.pending if at <= now]
            self.pending = [(at, inst) for at, inst in self.pending if at > now]
        for inst in due:
            if inst._state.name == "pending":
                inst._state.name = "running"
                inst._state.code = 16

    @staticmethod
    def _s3_action(environ: dict[str, Any]) -> str:
        path = environ.get("PATH_INFO", "")
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        kind = "object" if path.strip("/").count("/") >= 1 else "bucket"
        if path.strip("/") == "":
            kind = "service"
        name = f"S3:{environ.get('REQUEST_METHOD', '')}:{kind}"
        for key in ("uploads", "uploadId", "partNumber", "tagging", "list-type", "delete"):
            if key in query:
                name += f":{key}"
                break
        return name

    def _action(self, environ: dict[str, Any]) -> tuple[str, str]:
        """(action, error style: ``ec2``, ``json`` or ``s3``); re-injects a form body it read.

        JSON-protocol services (EventBridge, SQS) name the action in ``X-Amz-Target``
        (``AWSEvents.PutRule``, ``AmazonSQS.ReceiveMessage``): counted as ``PutRule``...
        """
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            return target.rpartition(".")[2], "json"
        ctype = environ.get("CONTENT_TYPE", "")
        if environ.get("REQUEST_METHOD") == "POST" and ctype.startswith(
            "application/x-www-form-urlencoded"
        ):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            form = urllib.parse.parse_qs(body.decode(errors="replace"))
            if "Action" in form:
                return form["Action"][0], "ec2"
        return self._s3_action(environ), "s3"

    def _take(self, kind: str, action: str) -> Any:
        table = self.faults.get(kind) or {}
        for key in (action, "*"):
            if key in table:
                return key, table[key]
        return None, None

    def _fault(self, action: str) -> tuple[int, str] | None:
        with self.lock:
            key, left = self._take("throttle", action)
            if key is not None and left > 0:
                self.faults["throttle"][key] = left - 1
                return 503, "RequestLimitExceeded"
            key, rate = self._take("throttle_rate", action)
            if key is not None and self.rng.random() < float(rate):
                return 503, "RequestLimitExceeded"
            key, spec = self._take("error", action)
            if key is not None and spec[0] > 0:
                spec[0] -= 1
                return int(spec[1]), str(spec[2])
        return None

    @staticmethod
    def _error(status: int, code: str, style: str, start_response: StartResponse) -> list[bytes]:
        if style == "json":
            data = json.dumps({"__type": code, "message": "injected by the test server"}).encode()
            start_response(
                f"{status} Injected",
                [
                    ("Content-Type", "application/x-amz-json-1.1"),
                    ("Content-Length", str(len(data))),
                ],
            )
            return [data]
        if style == "ec2":
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                f"<Code>{code}</Code><Message>injected by the test server</Message>"
                "</Error></Errors><RequestID>aiores-fault</RequestID></Response>"
            )
        else:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
                f"<Code>{code}</Code><Message>injected by the test server</Message>"
                "<RequestId>aiores-fault</RequestId></Error>"
            )
        data = body.encode()
        start_response(
            f"{status} Injected",
            [("Content-Type", "text/xml"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def _json(self, start_response: StartResponse, value: Any) -> list[bytes]:
        data = json.dumps(value).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]

    def _control(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ["PATH_INFO"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        payload = json.loads(body) if body else {}
        with self.lock:
            if path == "/_aiores/calls":
                return self._json(start_response, dict(self.calls))
            if path == "/_aiores/reset":
                self.calls.clear()
                self.faults = {}
                self.pending = []
                self.rng = random.Random(0)
                return self._json(start_response, {})
            if path == "/_aiores/reset_calls":
                self.calls.clear()
                return self._json(start_response, {})
            if path == "/_aiores/forget_terminated":
                return self._json(start_response, {"forgotten": _forget_terminated()})
            if path == "/_aiores/faults":
                if payload.pop("clear", False):
                    self.faults = {}
                if "seed" in payload:
                    self.rng = random.Random(payload.pop("seed"))
                for key, value in payload.items():
                    if isinstance(value, dict):
                        self.faults.setdefault(key, {}).update(value)
                    else:
                        self.faults[key] = value
                return self._json(start_response, self.faults)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such control path"]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/_aiores/"):
            return self._control(environ, start_response)
        action, style = self._action(environ)
        self._flip()
        with self.lock:
            self.calls[action] += 1
            _, before = self._take("delay_before", action)
            _, after = self._take("delay_after", action)
        if before:
            # Take the whole request first (a client cut off mid-send would leave its
            # socket waiting for us), then stall before carrying it out.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length and not isinstance(environ["wsgi.input"], io.BytesIO):
                environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(length))
            time.sleep(float(before))
        fault = self._fault(action)
        if fault is not None:
            return self._error(fault[0], fault[1], style, start_response)

        def respond(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            # moto sets a Server header of its own and werkzeug adds one: aiohttp
            # refuses a response with two.
            kept = [(k, v) for k, v in headers if k.lower() != "server"]
            return start_response(status, kept, *args)

        result = self.app(environ, respond)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if after:
            time.sleep(float(after))
        return [body]


def _forget_terminated() -> int:
    """Drop reservations whose instances are all terminated (moto keeps them forever,
    and some of its calls walk all of them)."""
    from moto.ec2.models import ec2_backends

    dropped = 0
    for regions in ec2_backends.values():
        for backend in regions.values():
            for rid, reservation in list(backend.reservations.items()):
                if all(i._state.name == "terminated" for i in reservation.instances):
                    del backend.reservations[rid]
                    dropped += len(reservation.instances)
    return dropped


def _patch_instances(app: FaultApp) -> None:
    from moto.ec2.models import elastic_network_interfaces, instances

    # moto makes up public addresses anywhere on the internet. A test that waits for
    # SSH by mistake must reach nothing but this machine: give out loopback ones.
    counter = iter(range(1, 1 << 24))

    def loopback_ip() -> str:
        n = next(counter)
        return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{max(1, n & 255)}"

    elastic_network_interfaces.random_public_ip = loopback_ip  # type: ignore[attr-defined]

    original = instances.Instance.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        app.instance_created(self)

    instances.Instance.__init__ = init  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> None:
    """The server process: ``python -m aiores_ec2.testing --port 0``.

    Prints ``port N`` once it listens; exits when its standard input closes.
    """
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(prog="python -m aiores_ec2.testing")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = FaultApp(DomainDispatcherApplication(create_backend_app))
    _patch_instances(app)
    server = make_server(
        "127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler
    )

    def watch_parent() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    print(f"port {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
