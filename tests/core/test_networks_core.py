"""Networks in the core: descriptions, ids of other clouds, backends without networks."""

from __future__ import annotations

import pytest

import aiores
from aiores import ComputeDescription, NetworkDescription


@pytest.mark.asyncio
async def test_a_backend_without_networks_refuses_them_before_any_call(
    session: aiores.Session,
) -> None:
    mgr = session.manager("fake://")
    with pytest.raises(aiores.NotSupported, match="fake:// has no networks"):
        await mgr.acquire(NetworkDescription())
    with pytest.raises(aiores.NotSupported, match="fake:// has no networks"):
        await mgr.acquire(ComputeDescription(network="net-1"))
    with pytest.raises(aiores.BadParameter, match=r"belongs to sim://, not to fake://"):
        await mgr.acquire(ComputeDescription(network="[sim://]-[net-1]"))
    assert await mgr.list(rtype="network") == []


def test_descriptions_hold_a_network_by_id() -> None:
    class Net:
        id = "[sim://]-[net-7]"
        rtype = "network"

    assert ComputeDescription(network=Net()).network == "[sim://]-[net-7]"
    with pytest.raises(aiores.BadParameter, match=r"ComputeDescription\.network"):
        ComputeDescription(network="")
    desc = NetworkDescription(cidr="10.1.0.0/16", ingress=["10.9.9.9/8", "10.0.0.0/8"])
    assert desc.ingress == ("10.0.0.0/8",)
    assert desc.replace(cidr=None).cidr is None
    with pytest.raises(aiores.BadParameter, match=r"NetworkDescription\.cidr"):
        desc.replace(cidr="192.168.0.0/12")
