"""Text primitives: normalization, language detection, character statistics."""

from __future__ import annotations

import unicodedata

import pytest

from tunesmith.data.quality.text import (
    control_char_count,
    detect_language,
    longest_repeat_run,
    most_common_char_share,
    normalize_text,
    special_char_ratio,
)

# --- normalize_text ------------------------------------------------------------------------------


def test_nfkc_folds_full_width_letters_and_digits():
    assert normalize_text("ＡＢＣ１２３") == "ABC123"
    assert normalize_text("ＡＢＣ１２３", nfkc=False) == "ＡＢＣ１２３"


def test_control_characters_removed_but_newline_and_tab_kept():
    assert normalize_text("a\x00b\x07c\u200bd\ufeffe\x9f") == "abcde"
    assert normalize_text("a\tb\nc") == "a\tb\nc"


def test_line_breaks_unified():
    assert normalize_text("a\r\nb\rc\u2028d") == "a\nb\nc\nd"


def test_blank_runs_collapse_but_indentation_stays():
    text = "  def f():   \n      return   1  \n\n"
    assert normalize_text(text) == "def f():\n      return 1"


def test_zh_punct_converts_ascii_punctuation_next_to_chinese():
    assert normalize_text("你好,世界!今天怎么样?") == "你好，世界！今天怎么样？"
    assert normalize_text("注意:这是(示例);结束.") == "注意：这是（示例）；结束。"


def test_zh_punct_survives_nfkc_round_trip():
    # NFKC turns ，！ into ,! first; the Chinese rule has to turn them back.
    assert normalize_text("你好，世界！") == "你好，世界！"


def test_zh_punct_leaves_numbers_times_and_english_alone():
    assert normalize_text("价格3.14元,时间10:30") == "价格3.14元，时间10:30"
    assert normalize_text("Hello, world! (yes)") == "Hello, world! (yes)"
    assert normalize_text("你好...") == "你好..."


def test_zh_punct_drops_blanks_after_converted_mark_and_pairs_brackets():
    assert normalize_text("他说: hello") == "他说：hello"
    assert normalize_text("中文(English)") == "中文（English）"


def test_zh_punct_leaves_code_alone():
    text = "示例:\n```python\nprint(变量, 1)\n```\n用`f(中)`调用,好的."
    assert normalize_text(text) == "示例：\n```python\nprint(变量, 1)\n```\n用`f(中)`调用，好的。"


def test_zh_punct_off_keeps_ascii():
    assert normalize_text("你好,世界!", zh_punct=False) == "你好,世界!"


def test_korean_keeps_ascii_punctuation():
    assert normalize_text("안녕하세요, 반갑습니다.") == "안녕하세요, 반갑습니다."


@pytest.mark.parametrize(
    "text",
    ["你好 ,  世界!!", "  a\r\n\tb  ", "中文(English) 和 (更多)", "ＡＢＣ，ｄｅｆ。", "x\x00y"],
)
def test_normalize_is_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once


# --- detect_language -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("今天天气很好，我们去公园散步吧。", "zh"),
        ("请解释Python中的list comprehension的用法", "zh"),
        ("これは日本語の文章です。漢字も使います。", "ja"),
        ("안녕하세요, 만나서 반갑습니다.", "ko"),
        ("The weather is nice today and we are going to the park.", "en"),
        ("Le chat est sur la table et il dort dans la cuisine.", "fr"),
        ("Der Hund ist nicht hier und das ist auch gut so.", "de"),
        ("El perro está en la casa y es muy bonito.", "es"),
        ("Il gatto è sul tavolo e non è felice per questo.", "it"),
        ("O gato está na mesa e não é muito feliz.", "pt"),
        ("Lorem ipsum dolor sit amet", "latin"),
        ("Привет, как у тебя дела сегодня?", "ru"),
        ("مرحبا، كيف حالك اليوم؟", "ar"),
        ("שלום, מה שלומך היום?", "he"),
        ("Καλημέρα, τι κάνεις;", "el"),
        ("สวัสดีครับ ยินดีที่ได้รู้จัก", "th"),
        ("नमस्ते, आप कैसे हैं?", "hi"),
        ("123 + 456 = 579 !!!", "unknown"),
        ("", "unknown"),
    ],
)
def test_detect_language(text, expected):
    assert detect_language(text) == expected


# --- character statistics ------------------------------------------------------------------------


def test_special_char_ratio():
    assert special_char_ratio("") == 0.0
    assert special_char_ratio("a!b_ c") == pytest.approx(2 / 6)
    assert special_char_ratio("!!!") == 1.0
    assert special_char_ratio("你好，世界") == pytest.approx(1 / 5)


def test_special_char_ratio_does_not_count_combining_marks():
    # Devanagari vowel signs and virama are marks of their letter, not symbols.
    assert special_char_ratio("नमस्ते") == 0.0


def test_longest_repeat_run():
    assert longest_repeat_run("") == 0
    assert longest_repeat_run("abc") == 1
    assert longest_repeat_run("aaabbbbc") == 4
    assert longest_repeat_run("哈哈哈哈哈!") == 5
    assert longest_repeat_run("a\n\n\nb") == 3


def test_most_common_char_share():
    assert most_common_char_share("") == 0.0
    assert most_common_char_share("aab") == pytest.approx(2 / 3)
    assert most_common_char_share("abcd") == 0.25


def test_control_char_count():
    assert control_char_count("a\x00b\u200b\ufeff\x7f") == 4
    assert control_char_count("line\nnext\ttab\r\n") == 0


def test_control_char_count_matches_unicode_categories():
    # Every code point of the planes where Cc/Cf live, checked against unicodedata directly.
    chars = [chr(c) for c in range(0x20000) if not 0xD800 <= c <= 0xDFFF] + [
        chr(c) for c in range(0xE0000, 0xE0100)
    ]
    expected = sum(
        1 for c in chars if unicodedata.category(c) in ("Cc", "Cf") and c not in "\n\t\r"
    )
    assert control_char_count("".join(chars)) == expected
