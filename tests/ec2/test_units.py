"""ec2:// pieces without a server: state table, options, user data, key pair names, errors."""

from __future__ import annotations

import email

import asyncssh
import botocore.exceptions
import pytest
import yaml  # type: ignore[import-untyped]

import aiores
from aiores import ResourceState
from aiores._limits import Transience
from aiores.adaptor import URL
from aiores_ec2 import classify, key_pair_name, native_state, parse_options, translate, user_data
from aiores_ec2._setup import new_host_key


def test_state_table() -> None:
    assert native_state("pending", "", {}) is ResourceState.PENDING
    assert native_state("running", "", {}) is ResourceState.ACTIVE
    assert native_state("stopped", "", {}) is ResourceState.ACTIVE
    user = "Client.UserInitiatedShutdown"
    assert native_state("terminated", user, {}) is ResourceState.CANCELED
    spot = "Server.SpotInstanceTermination"
    assert native_state("terminated", spot, {}) is ResourceState.EXPIRED
    inside = "Client.InstanceInitiatedShutdown"
    assert native_state("shutting-down", inside, {}) is ResourceState.DONE
    assert native_state("terminated", inside, {"aiores:expires": "x"}) is ResourceState.EXPIRED
    capacity = "Server.InsufficientInstanceCapacity"
    assert native_state("terminated", capacity, {}) is ResourceState.FAILED


def test_options() -> None:
    opts = parse_options(URL.parse("ec2://eu-west-1?ssh_cidr=10.0.0.0/8,2001:db8::/32&poll=5"))
    assert opts.region == "eu-west-1"
    assert opts.ssh_cidr == ("10.0.0.0/8", "2001:db8::/32")
    assert opts.poll == 5.0
    assert opts.limits
    for bad in ("ec2://a?market=cheap", "ec2://a?poll=-1", "ec2://user@a", "ec2://A_B"):
        with pytest.raises(aiores.IncorrectURL):
            parse_options(URL.parse(bad))
    # A name or region ending in a newline is no name (a regex's "$" would let it by).
    for bad, field in (
        ("ec2://eu-west-1%0A", "region"),
        ("ec2://a?key_name=k%0A", "key_name"),
        ("ec2://a?subnet=s%0A", "subnet"),
        ("ec2://a?security_group=g%0A", "security_group"),
    ):
        with pytest.raises(aiores.IncorrectURL, match=field):
            parse_options(URL.parse(bad))


def test_user_data_parts_and_limits() -> None:
    key = new_host_key()
    text = user_data(key, "#cloud-config\npackages: [htop]\n", None)
    parts = [p for p in email.message_from_string(text).walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/cloud-config"]
    assert "power_state" not in text
    # aiores's part is YAML (as cloud-init reads it) and carries a working key pair.
    ours = yaml.safe_load(parts[1].get_payload(decode=True))
    private = asyncssh.import_private_key(ours["ssh_keys"]["ed25519_private"])
    assert private.export_public_key().decode().strip() == key.public
    assert ours["ssh_keys"]["ed25519_public"] == key.public
    for bad in ("Content-Type: multipart/mixed\n\n", "echo hi"):
        with pytest.raises(aiores.BadParameter):
            user_data(key, bad, None)
    with pytest.raises(aiores.BadParameter, match="EC2 takes"):
        user_data(key, "#!/bin/sh\n" + "x" * 20000, None)
    assert key_pair_name(key.public).startswith("aiores-")
    assert len(key_pair_name(key.public)) == len("aiores-") + 16


def client_error(code: str, status: int = 400) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "RunInstances",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("InvalidAMIID.NotFound", 400, aiores.DoesNotExist),
        ("InvalidAMIID.Malformed", 400, aiores.BadParameter),
        ("InvalidParameterValue", 400, aiores.BadParameter),
        ("UnauthorizedOperation", 403, aiores.PermissionDenied),
        ("AuthFailure", 401, aiores.AuthenticationFailed),
        ("InsufficientInstanceCapacity", 500, aiores.NoSuccess),
        ("IncorrectInstanceState", 400, aiores.IncorrectState),
        ("Weird", 403, aiores.PermissionDenied),
        ("RequestLimitExceeded", 503, aiores.NoSuccess),
    ],
)
def test_errors_map_to_aiores_naming_the_code(
    code: str, status: int, kind: type[aiores.AioresError]
) -> None:
    error = translate("ec2", "RunInstances", client_error(code, status))
    assert type(error) is kind
    assert code in str(error)


def test_transient_errors() -> None:
    assert classify(client_error("RequestLimitExceeded", 503)) is Transience.THROTTLED
    assert classify(client_error("Whatever", 502)) is Transience.TRANSIENT
    assert classify(ConnectionResetError()) is Transience.TRANSIENT
    assert classify(client_error("InvalidParameterValue")) is None
    assert classify(ValueError()) is None
    no_creds = translate("ec2", "X", botocore.exceptions.NoCredentialsError())
    assert isinstance(no_creds, aiores.AuthenticationFailed)
    assert isinstance(translate("ec2", "X", ConnectionRefusedError()), aiores.ConnectionLost)
