"""The Kubernetes adapter: paths only from checked names, 429 Retry-After bounded, typed errors."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patron.kube import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    RETRIES_429,
    ApiError,
    InvalidName,
    object_path,
    retry_after,
)
from tests.support.fake_kube import FakeKube, refusal


@given(st.text(max_size=300), st.sampled_from(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "ReplicaSet"]))
def test_any_name_gives_a_path_inside_the_namespace_or_is_refused(name: str, kind: str) -> None:
    try:
        path = object_path(kind, "shop", name)  # type: ignore[arg-type]
    except InvalidName:
        return
    prefix, _, rest = path.partition("/namespaces/shop/")
    assert prefix in ("/api/v1", "/apis/apps/v1", "/apis/autoscaling/v2")
    assert rest.count("/") == 1 and ".." not in rest.split("/") and rest.endswith("/" + name)


def test_retry_after_is_bounded() -> None:
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert retry_after({"retry-after": "3600"}) == MAX_RETRY_AFTER
    assert retry_after({}) == retry_after({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}) == DEFAULT_RETRY_AFTER


def test_a_429_is_retried_after_retry_after_then_reported() -> None:
    kube = FakeKube()
    kube.add("ConfigMap", "shop", {"metadata": {"name": "rl"}})
    answers = iter([refusal(429, "Too Many Requests", {"Retry-After": "2"})])
    kube.faults.append(lambda m, p: next(answers, None))
    assert asyncio.run(kube.get("ConfigMap", "shop", "rl")) is not None
    assert kube.slept == [2.0]
    kube.faults.append(lambda m, p: refusal(429, "Too Many Requests"))
    kube.slept.clear()
    with pytest.raises(ApiError) as err:
        asyncio.run(kube.get("ConfigMap", "shop", "rl"))
    assert (err.value.status, err.value.kind) == (429, "ConfigMap/rl: HTTP 429 Too Many Requests")
    assert kube.slept == [DEFAULT_RETRY_AFTER] * RETRIES_429
