"""RefusalMemo: a refused key is remembered exactly until its retry-after, and the memo stays bounded."""

from threatflow.platform.limits import RefusalMemo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_refused_until_its_retry_after_then_forgotten():
    clock = Clock()
    memo = RefusalMemo(max_keys=10, clock=clock)
    assert memo.remaining("ip:a") == 0.0
    memo.refuse("ip:a", 2.5)
    clock.now += 1.0
    assert memo.remaining("ip:a") == 1.5 and memo.remaining("ip:b") == 0.0
    clock.now += 1.5
    assert memo.remaining("ip:a") == 0.0  # at its retry-after the shared limiter decides again
    memo.refuse("ip:a", 0.0)  # an allowed-now answer is not remembered
    assert memo.remaining("ip:a") == 0.0


def test_a_new_refusal_replaces_the_old_one():
    clock = Clock()
    memo = RefusalMemo(max_keys=10, clock=clock)
    memo.refuse("user:x", 5.0)
    memo.refuse("user:x", 1.0)
    assert memo.remaining("user:x") == 1.0


def test_the_memo_holds_at_most_max_keys_dropping_the_oldest():
    clock = Clock()
    memo = RefusalMemo(max_keys=3, clock=clock)
    for index in range(5):
        memo.refuse(f"ip:{index}", 60.0)
    assert [memo.remaining(f"ip:{index}") > 0 for index in range(5)] == [False, False, True, True, True]
    assert len(memo._until) == 3
