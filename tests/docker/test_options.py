"""docker:// URL options: checked before anything reaches the daemon."""

from __future__ import annotations

import pytest

import aiores
from aiores.adaptor import URL
from aiores_docker._options import parse_options


def test_volumes_are_parsed_in_order() -> None:
    options = parse_options(URL.parse("docker://?volume=/srv/a:/a,/srv/b:/b:ro"))
    assert options.volumes == ("/srv/a:/a", "/srv/b:/b:ro")
    assert parse_options(URL.parse("docker://")).volumes == ()


@pytest.mark.parametrize(
    "volume", ["/a", "a:/b", "/a:b", "/a:/b:rx", "/a:/b:ro:x", "", "/a\x00:/b"]
)
def test_a_bad_volume_is_refused_naming_the_option(volume: str) -> None:
    with pytest.raises(aiores.BadParameter, match="volume"):
        parse_options(URL.parse("docker://").replace(query=(("volume", volume),)))
