"""The embedded corpus split, on synthetic items: deterministic and leak-free."""

import pytest

from react.embedded.categories import stamp_label
from react.embedded.corpus import Item, _stamp_caption, check_disjoint, dedupe, split
from react.errors import ReactError


def _items():
    items = []
    for cat, label, n in [("animals/birds", "bird", 9), ("food/fruit", "fruit", 6), ("symbols", None, 4)]:
        for i in range(n):
            items.append(Item(key=f"stamp-{cat}-{i}", caption=f"a {cat} {i}", source="tuxpaint-stamps",
                              license="GPL", category=cat, label=label, raw=f"{cat}{i}".encode()))
    for i in range(10):
        items.append(Item(key=f"emoji-{i}", caption=f"e{i} emoji", source="emoji-google", license="A",
                          category="Smileys/face", label=None, raw=f"emoji{i}".encode()))
    return dedupe(items)


def test_split_is_disjoint_deterministic_and_complete():
    parts = split(_items(), seed=0)
    again = split(_items(), seed=0)
    assert [i.key for i in parts["downstream"]] == [i.key for i in again["downstream"]]
    test_keys = {i.key for i in parts["downstream"]}
    assert not test_keys & {i.key for i in parts["retrieval"]}
    assert not test_keys & {i.key for i in parts["pretraining"]}
    assert {i.key for i in parts["pretraining"]} <= {i.key for i in parts["retrieval"]}
    assert len(test_keys) + len(parts["retrieval"]) == len(_items())
    assert all(i.label is not None for i in parts["downstream"])
    # half of each labelled class is held out
    assert sum(i.label == "bird" for i in parts["downstream"]) == round(9 * 0.5)
    # every emoji is in pretraining; one web stamp in four per folder is
    assert sum(i.source == "emoji-google" for i in parts["pretraining"]) == 10


def test_other_seed_gives_other_split():
    a = {i.key for i in split(_items(), seed=0)["downstream"]}
    b = {i.key for i in split(_items(), seed=1)["downstream"]}
    assert a != b


def test_byte_identical_images_cannot_straddle_the_split():
    items = _items()
    twin = Item(key="stamp-zzz-copy", caption="copy", source="tuxpaint-stamps", license="GPL",
                category="animals/birds", label="bird", raw=b"animals/birds0")
    deduped = dedupe(items + [twin])
    assert len(deduped) == len(items)
    parts = split(deduped)
    check_disjoint(parts)
    leak = {"downstream": parts["downstream"], "retrieval": parts["retrieval"] + parts["downstream"][:1],
            "pretraining": parts["pretraining"]}
    with pytest.raises(ReactError, match="leaks into retrieval"):
        check_disjoint(leak)


def test_stamp_labels_and_captions():
    assert stamp_label("animals/birds/cartoon") == "bird"
    assert stamp_label("animals/mammals/cats") == "mammal"
    assert stamp_label("symbols/arrows") is None
    assert _stamp_caption(b"A blue jay.\nfr.utf8=Un geai bleu.\n", "x") == "A blue jay."
    assert _stamp_caption(b"fr.utf8=Un geai.\n", "blue_jay") == "A blue jay."
    assert _stamp_caption(None, "road-sign") == "A road sign."
