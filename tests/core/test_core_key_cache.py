"""Dict keys are written from a small cache of encoded keys, found by the identity of the str object
(``rust/py/src/encode/key_cache.rs``): the output must be exactly the uncached one for every kind of
key, through hits, misses and evictions, and the cache must hold one reference per cached key, no more."""

from __future__ import annotations

import json
import random
import sys

from ciotrack import _core


def compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Key(str):
    pass


def fresh(text: str) -> str:
    """A str object made at run time (not a shared constant), so only this test holds it."""
    return "".join(list(text))


def test_every_kind_of_key_is_written_the_same_on_a_hit() -> None:
    keys = ["plan", "a", "", 'quo"te', "back\\slash", "tab\there", "ключ", "é" * 14, "x" * 29, "y" * 30,
            "z" * 200, "\u2028", Key("subclass")]
    data = {key: i for i, key in enumerate(keys)}
    expected = compact(data)
    for _ in range(3):  # a miss, then hits
        assert _core.encode(data) == expected
    nested = {"outer": data, "list": [data, {"plan": "pro"}]}
    for _ in range(3):
        assert _core.encode(nested) == compact(nested)


def test_many_distinct_keys_evict_each_other_and_stay_exact() -> None:
    rng = random.Random(7)
    keys = [fresh(f"key-{i}") for i in range(1000)]
    for _ in range(20):
        chosen = rng.sample(keys, 50)
        data = {key: n for n, key in enumerate(chosen)}
        assert _core.encode(data) == compact(data)


def test_a_cached_key_is_held_once_and_released_when_evicted() -> None:
    key = fresh("a-key-only-this-test-holds")
    before = sys.getrefcount(key)
    for _ in range(5):
        assert _core.encode({key: 1}) == b'{"a-key-only-this-test-holds":1}'
    assert sys.getrefcount(key) == before + 1  # one reference, however many hits
    others = [fresh(f"evict-{i}") for i in range(5000)]  # kept alive: 5,000 distinct addresses
    for other in others:  # a key in every slot: the first one is evicted
        _core.encode({other: 0})
    assert sys.getrefcount(key) == before
    assert _core.encode({key: 2}) == b'{"a-key-only-this-test-holds":2}'


def test_a_subclass_or_a_long_key_is_never_held() -> None:
    sub = Key(fresh("sub"))
    long = fresh("l" * 40)
    before = (sys.getrefcount(sub), sys.getrefcount(long))
    assert _core.encode({sub: 1, long: 2}) == compact({"sub": 1, "l" * 40: 2})
    assert (sys.getrefcount(sub), sys.getrefcount(long)) == before
