"""shared.webhooks.delivery_target: a delivery connects to the address its check passed, never to what a second
lookup of the name answers (DNS rebinding), and keeps the name for the Host header and TLS."""

from __future__ import annotations

import pytest

from shared.webhooks import DeliveryTarget, Resolver, WebhookUrlRefused, delivery_target


def resolver(answers: dict[str, list[str]]) -> Resolver:
    def resolve(host: str, _port: int) -> list[str]:
        return answers.get(host, [])

    return resolve


PUBLIC = resolver({"hooks.example": ["93.184.216.34"], "v6.example": ["2606:2800:220:1::248"]})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://hooks.example/in?x=1",
            DeliveryTarget("https://93.184.216.34/in?x=1", "hooks.example", "hooks.example"),
        ),
        ("http://hooks.example:8080/in", DeliveryTarget("http://93.184.216.34:8080/in", "hooks.example:8080", None)),
        (
            "https://v6.example:8443/",
            DeliveryTarget("https://[2606:2800:220:1::248]:8443/", "v6.example:8443", "v6.example"),
        ),
        ("https://93.184.216.34/in", DeliveryTarget("https://93.184.216.34/in")),  # an address already
    ],
)
def test_a_name_is_replaced_by_the_address_checked(url: str, expected: DeliveryTarget) -> None:
    assert delivery_target(url, allow_private=False, resolve=PUBLIC) == expected


def test_a_name_that_turned_private_is_refused_and_never_pinned() -> None:
    rebound = resolver({"hooks.example": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(WebhookUrlRefused) as refused:
        delivery_target("https://hooks.example/in", allow_private=False, resolve=rebound)
    assert refused.value.code == "private_address"


def test_private_addresses_allowed_are_pinned_too() -> None:
    local = resolver({"hooks.internal": ["10.0.0.7"]})
    target = delivery_target("http://hooks.internal/in", allow_private=True, resolve=local)
    assert target == DeliveryTarget("http://10.0.0.7/in", "hooks.internal", None)
    with pytest.raises(WebhookUrlRefused) as refused:
        delivery_target("http://gone.internal/in", allow_private=True, resolve=local)
    assert refused.value.code == "unresolvable_host"
