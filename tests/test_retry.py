"""Backoff and RetryPolicy: exponential delays, jitter, retry_after, validation."""

from __future__ import annotations

import math

import msgspec
import pytest

from actor_orch.errors import ModelThrottled, NetworkError
from actor_orch.retry import Backoff, RetryPolicy, exponential_delay

POLICIES = [Backoff, RetryPolicy]


@pytest.mark.parametrize("cls", POLICIES)
def test_delays_without_jitter_grow_exponentially_until_max_delay(cls: type) -> None:
    settings = cls(base_delay=0.5, max_delay=5.0, multiplier=2.0, jitter=False)
    assert [settings.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize("cls", POLICIES)
def test_multiplier_one_gives_a_constant_delay(cls: type) -> None:
    settings = cls(base_delay=0.25, max_delay=1.0, multiplier=1.0, jitter=False)
    assert [settings.delay(n) for n in (1, 2, 10)] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("cls", POLICIES)
def test_zero_base_delay_means_no_wait(cls: type) -> None:
    settings = cls(base_delay=0.0, max_delay=0.0, jitter=False)
    assert [settings.delay(n) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("cls", POLICIES)
def test_jittered_delay_lies_in_the_upper_half(cls: type) -> None:
    settings = cls(base_delay=0.1, max_delay=100.0, multiplier=3.0, jitter=True)
    for attempt in (1, 2, 3, 4):
        nominal = 0.1 * 3.0 ** (attempt - 1)
        samples = [settings.delay(attempt) for _ in range(200)]
        assert all(nominal / 2 <= s <= nominal for s in samples), (attempt, samples)
        # It really is random, not a constant.
        assert len(set(samples)) > 1


@pytest.mark.parametrize("cls", POLICIES)
def test_jittered_delay_never_exceeds_max_delay(cls: type) -> None:
    settings = cls(base_delay=1.0, max_delay=3.0, jitter=True)
    samples = [settings.delay(6) for _ in range(200)]
    assert all(s <= 3.0 for s in samples)


@pytest.mark.parametrize("cls", POLICIES)
def test_retry_after_raises_the_delay(cls: type) -> None:
    settings = cls(base_delay=0.1, max_delay=10.0, jitter=False)
    assert settings.delay(1, ModelThrottled(retry_after=2.5)) == 2.5


@pytest.mark.parametrize("cls", POLICIES)
def test_retry_after_raises_a_jittered_delay_too(cls: type) -> None:
    settings = cls(base_delay=0.1, max_delay=10.0, jitter=True)
    assert all(settings.delay(1, ModelThrottled(retry_after=2.0)) == 2.0 for _ in range(50))


@pytest.mark.parametrize("cls", POLICIES)
def test_retry_after_is_capped_by_max_delay(cls: type) -> None:
    settings = cls(base_delay=0.1, max_delay=1.0, jitter=False)
    assert settings.delay(1, ModelThrottled(retry_after=30.0)) == 1.0


@pytest.mark.parametrize("cls", POLICIES)
def test_smaller_retry_after_does_not_shorten_the_backoff(cls: type) -> None:
    settings = cls(base_delay=1.0, max_delay=10.0, jitter=False)
    assert settings.delay(3, ModelThrottled(retry_after=0.5)) == 4.0


@pytest.mark.parametrize("cls", POLICIES)
def test_throttle_without_retry_after_and_other_errors_use_plain_backoff(cls: type) -> None:
    settings = cls(base_delay=0.5, max_delay=10.0, jitter=False)
    assert settings.delay(2, ModelThrottled()) == 1.0
    assert settings.delay(2, NetworkError("reset")) == 1.0


def test_exponential_delay_is_shared_by_both_settings_types() -> None:
    backoff = Backoff(base_delay=0.2, max_delay=2.0, jitter=False)
    policy = RetryPolicy(base_delay=0.2, max_delay=2.0, jitter=False)
    for attempt in (1, 2, 3, 4, 5):
        assert exponential_delay(backoff, attempt) == exponential_delay(policy, attempt)


def test_contract_defaults() -> None:
    assert RetryPolicy() == RetryPolicy(
        max_attempts=3, base_delay=1.0, max_delay=60.0, multiplier=2.0, jitter=True
    )
    assert Backoff() == Backoff(base_delay=0.1, max_delay=10.0, multiplier=2.0, jitter=True)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        RetryPolicy().max_attempts = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Backoff().base_delay = 5.0  # type: ignore[misc]


def test_settings_round_trip_through_json() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=8.0, multiplier=3.0)
    assert msgspec.json.decode(msgspec.json.encode(policy), type=RetryPolicy) == policy
    backoff = Backoff(base_delay=0.2, max_delay=4.0, jitter=False)
    assert msgspec.json.decode(msgspec.json.encode(backoff), type=Backoff) == backoff


@pytest.mark.parametrize("cls", POLICIES)
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_delay": -0.1}, "base_delay"),
        ({"max_delay": -1.0, "base_delay": 0.0}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"base_delay": 5.0, "max_delay": 1.0}, "max_delay"),
    ],
)
def test_invalid_settings_raise_value_error_naming_the_field(
    cls: type, kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


@pytest.mark.parametrize("attempts", [0, -1])
def test_max_attempts_below_one_raises_value_error_naming_the_field(attempts: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=attempts)


def test_max_attempts_of_one_is_allowed() -> None:
    assert RetryPolicy(max_attempts=1).max_attempts == 1


def test_decoding_invalid_settings_raises_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="max_attempts"):
        msgspec.json.decode(b'{"max_attempts": 0}', type=RetryPolicy)
    with pytest.raises(msgspec.ValidationError, match="base_delay"):
        msgspec.json.decode(b'{"base_delay": -1}', type=Backoff)


@pytest.mark.parametrize("cls", POLICIES)
@pytest.mark.parametrize("field", ["base_delay", "max_delay", "multiplier"])
def test_nan_settings_raise_value_error_naming_the_field(cls: type, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**{field: math.nan})


def test_non_integer_max_attempts_is_rejected() -> None:
    with pytest.raises((TypeError, ValueError), match="max_attempts"):
        RetryPolicy(max_attempts=1.5)  # type: ignore[arg-type]
