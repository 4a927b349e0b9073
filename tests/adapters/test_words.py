"""Word splitting for NER adapters: what the tagger reads, and offsets back into the input."""

from __future__ import annotations

from loraswap.adapters.words import SplitText


def test_raw_text_is_rendered_like_a_tagging_corpus() -> None:
    text = "Ataxia-telangiectasia (A-T) is a multi-system\tdisorder at 11q22-q23."
    split = SplitText.of(text)
    assert split.joined == ("Ataxia - telangiectasia ( A - T ) is a multi - system "
                            "disorder at 11q22 - q23 .")
    assert SplitText.of("A-T").joined == "A - T" and SplitText.of("BRCA1").joined == "BRCA1"
    assert SplitText.of("Müller’s naïve").joined == "Müller ’ s naïve"


def test_spans_map_back_to_the_text_as_sent() -> None:
    text = "  Ataxia-telangiectasia (A-T) is rare."
    split = SplitText.of(text)
    joined = split.joined
    # A span of the joined text covering "Ataxia - telangiectasia" (with the added spaces).
    start = joined.index("Ataxia")
    end = joined.index("telangiectasia") + len("telangiectasia")
    assert split.original_span(start, end) == (2, 23)
    assert text[2:23] == "Ataxia-telangiectasia"
    # A BPE token carries its leading (added) space: it maps to the word alone.
    at = joined.index(" A -")
    assert split.original_span(at, at + 2) == (text.index("A-T"), text.index("A-T") + 1)
    # Only added spaces, or nothing at all (special tokens): an empty span.
    space = joined.index(" ")
    first, last = split.original_span(space, space + 1)
    assert first == last
    assert split.original_span(0, 0)[0] == split.original_span(0, 0)[1]


def test_every_character_of_a_piece_keeps_its_place() -> None:
    text = "x-ray,  CT(scan)"
    split = SplitText.of(text)
    for joined_index, original_index in enumerate(split.origin):
        if original_index >= 0:
            assert split.joined[joined_index] == text[original_index]
    assert split.joined.replace(" ", "") == text.replace(" ", "")
