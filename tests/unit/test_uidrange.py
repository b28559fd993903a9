import pytest

from veneer.config.uidrange import in_range, last_id, shifted, to_image_id, to_machine_id

BASE = 0x70000000
OTHER = 0x70010000


@pytest.mark.parametrize(
    ("value", "uid_base", "image_id"),
    [
        (BASE, BASE, 0),
        (BASE + 1000, BASE, 1000),
        (BASE + 65535, BASE, 65535),
        (BASE + 65536, BASE, BASE + 65536),  # past the range: left alone
        (0, BASE, 0),  # host root put it there
        (1000, None, 1000),  # privileged
    ],
)
def test_to_image_id(value: int, uid_base: int | None, image_id: int) -> None:
    assert to_image_id(value, uid_base) == image_id


@pytest.mark.parametrize(
    ("value", "uid_base", "machine_id"),
    [(0, BASE, BASE), (65535, BASE, BASE + 65535), (65536, BASE, 65536), (5, None, 5)],
)
def test_to_machine_id(value: int, uid_base: int | None, machine_id: int) -> None:
    assert to_machine_id(value, uid_base) == machine_id
    if uid_base is None or value < 65536:
        assert to_image_id(machine_id, uid_base) == value


def test_range_ends_and_shifts() -> None:
    assert last_id(BASE) == BASE + 65535
    assert in_range(BASE, BASE) and in_range(last_id(BASE), BASE) and not in_range(last_id(BASE) + 1, BASE)
    assert shifted(BASE + 7, BASE, OTHER) == OTHER + 7
    assert shifted(OTHER + 7, BASE, OTHER) == OTHER + 7  # not of the source range
