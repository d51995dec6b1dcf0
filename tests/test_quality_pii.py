"""PII detection and redaction, with Chinese formats, and the sensitive-word matcher."""

from __future__ import annotations

import itertools
import random

import pytest

from tunesmith.data.quality.pii import (
    DEFAULT_PII_KINDS,
    PII_KINDS,
    PiiHit,
    find_pii,
    find_sensitive_words,
    redact_pii,
)


def china_id(first17: str) -> str:
    """Append the ISO 7064 MOD 11-2 check character (weights 2^(17-i) mod 11)."""
    total = sum(int(d) * (2 ** (17 - i) % 11) for i, d in enumerate(first17))
    check = (12 - total % 11) % 11
    return first17 + ("X" if check == 10 else str(check))


def luhn_complete(prefix: str) -> str:
    """Append the Luhn check digit to `prefix`."""
    for d in "0123456789":
        digits = [int(c) for c in prefix + d]
        total = sum(digits[-1::-2]) + sum(sum(divmod(2 * x, 10)) for x in digits[-2::-2])
        if total % 10 == 0:
            return prefix + d
    raise AssertionError("unreachable")


def kinds_of(text: str, kinds=DEFAULT_PII_KINDS) -> list[tuple[str, str]]:
    return [(h.kind, h.text) for h in find_pii(text, kinds)]


VALID_ID = china_id("11010519491231002")  # ends in X
ID_WITH_DIGIT = china_id("44030419900307451")


def test_defaults_exclude_url():
    assert set(DEFAULT_PII_KINDS) == set(PII_KINDS) - {"url"}


# --- China resident ID ---------------------------------------------------------------------------


def test_valid_china_id_found_in_chinese_text():
    text = f"我的身份证号是{VALID_ID}，请保密"
    assert VALID_ID.endswith("X")
    assert find_pii(text) == [PiiHit("cn_id", 7, 25, VALID_ID)]
    assert kinds_of(f"号码{ID_WITH_DIGIT}。") == [("cn_id", ID_WITH_DIGIT)]


def test_lowercase_x_check_character_accepted():
    assert kinds_of(f"ID {VALID_ID.lower()}") == [("cn_id", VALID_ID.lower())]


def test_wrong_checksum_is_not_an_id():
    wrong = ID_WITH_DIGIT[:17] + str((int(ID_WITH_DIGIT[17]) + 1) % 10)
    assert all(kind != "cn_id" for kind, _ in kinds_of(f"身份证{wrong}"))


@pytest.mark.parametrize("birth", ["19901301", "19900230", "21000101"])
def test_impossible_birth_date_is_not_an_id(birth):
    number = china_id("440304" + birth + "451")
    assert all(kind != "cn_id" for kind, _ in kinds_of(f"身份证{number}"))


def test_id_inside_longer_digit_run_is_not_an_id():
    assert kinds_of(f"编号9{ID_WITH_DIGIT}") == []


def test_id_that_also_passes_luhn_is_reported_once_as_id():
    luhn_ids = (china_id(f"44030419900307{seq:03d}") for seq in range(1000))
    number = next(n for n in luhn_ids if luhn_complete(n[:-1]) == n)
    assert kinds_of(f"证件 {number}") == [("cn_id", number)]


# --- bank cards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "card",
    ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "6222021234567890128"],
)
def test_luhn_valid_cards_found(card):
    assert luhn_complete("622202123456789012") == "6222021234567890128"
    assert kinds_of(f"卡号{card}，谢谢") == [("bank_card", card)]


def test_generated_card_numbers_of_each_length_found():
    rng = random.Random(3)
    for length in range(13, 20):
        card = luhn_complete("6" + "".join(rng.choice("0123456789") for _ in range(length - 2)))
        assert kinds_of(f"card {card}.") == [("bank_card", card)]


def test_luhn_invalid_card_not_found():
    assert kinds_of("card 4111111111111112 and 4111 1111 1111 1112") == []


def test_millisecond_timestamp_is_not_a_card():
    stamp = luhn_complete("170000000000")  # 13 digits, Luhn-valid, leading 1
    assert kinds_of(f"ts={stamp}") == []


# --- mobile and phone numbers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", ["13812345678", "+86 138 1234 5678", "0086-139-1234-5678", "+8615912345678"]
)
def test_cn_mobile_found_and_not_also_phone(number):
    assert kinds_of(f"电话：{number}，找张三") == [("cn_mobile", number)]


@pytest.mark.parametrize("text", ["订单213812345678", "12812345678", "1381234567", "+13812345678"])
def test_not_a_cn_mobile(text):
    assert all(kind != "cn_mobile" for kind, _ in kinds_of(text))


@pytest.mark.parametrize(
    "number",
    ["+1 (415) 555-2671", "+44 20 7946 0958", "(415) 555-2671", "415-555-2671", "010-62345678"],
)
def test_generic_phone_found(number):
    assert kinds_of(f"call {number} now") == [("phone", number)]


@pytest.mark.parametrize("text", ["+1 2 = 3", "version 2024-01-15", "x12-345-6789"])
def test_not_a_phone(text):
    assert kinds_of(text) == []


# --- network addresses, email, URL ---------------------------------------------------------------


def test_ipv4():
    text = "ip 192.168.1.1, 256.1.1.1, 1.2.3.4.5, 01.2.3.4 and 10.0.0.1."
    assert kinds_of(text) == [("ipv4", "192.168.1.1"), ("ipv4", "10.0.0.1")]


def test_ipv6_validated_and_code_not_mistaken():
    text = "v6 2001:db8::1, fe80::1: ::ffff:192.0.2.1 std::vector f :: Int 12:30:45 ::"
    assert kinds_of(text) == [
        ("ipv6", "2001:db8::1"),
        ("ipv6", "fe80::1"),
        ("ipv6", "::ffff:192.0.2.1"),
    ]


def test_email_in_chinese_text():
    text = "联系test.user+x@example.com.cn谢谢，不是a@b"
    assert kinds_of(text) == [("email", "test.user+x@example.com.cn")]


def test_email_wins_over_mobile_inside_it():
    assert kinds_of("邮箱13812345678@163.com") == [("email", "13812345678@163.com")]


def test_url_only_when_asked_and_it_swallows_what_it_contains():
    text = "见https://example.com/a_(b)?ip=10.0.0.1. 和 www.foo.cn，谢谢"
    assert kinds_of(text) == [("ipv4", "10.0.0.1")]
    assert kinds_of(text, PII_KINDS) == [
        ("url", "https://example.com/a_(b)?ip=10.0.0.1"),
        ("url", "www.foo.cn"),
    ]


def test_full_width_digits_found_with_original_text():
    text = "手机１３８１２３４５６７８号"
    assert find_pii(text) == [PiiHit("cn_mobile", 2, 13, "１３８１２３４５６７８")]


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown PII kind.*'passport'.*known kinds: email"):
        find_pii("x", ["passport"])


def test_kinds_filter():
    text = "a@b.com 13812345678"
    assert kinds_of(text, ["cn_mobile"]) == [("cn_mobile", "13812345678")]
    assert kinds_of(text, "email") == [("email", "a@b.com")]  # one kind as a plain string


def test_many_hits_in_one_text():
    text = "; ".join(f"10.0.{i // 256}.{i % 256} a{i}@x.org" for i in range(3000))
    hits = find_pii(text)
    assert [h.kind for h in hits] == ["ipv4", "email"] * 3000
    assert hits[-1].text == "a2999@x.org"


# --- redaction -----------------------------------------------------------------------------------


def test_redact_uses_typed_placeholders():
    text = (
        f"张三，身份证{VALID_ID}，手机13812345678，卡4111 1111 1111 1111，"
        "邮箱zs@example.com，IP 10.1.2.3 / 2001:db8::2，电话+1 (415) 555-2671，"
        "网站https://zs.example.com/me"
    )
    redacted, hits = redact_pii(text, PII_KINDS)
    assert redacted == (
        "张三，身份证[CN_ID]，手机[CN_MOBILE]，卡[BANK_CARD]，邮箱[EMAIL]，IP [IPV4] / [IPV6]，"
        "电话[PHONE]，网站[URL]"
    )
    assert hits == find_pii(text, PII_KINDS)
    assert find_pii(redacted, PII_KINDS) == []


def test_hits_sorted_and_disjoint():
    text = f"{VALID_ID} 13812345678 +86 139 1234 5678 a@b.com 4111111111111111 10.0.0.1"
    hits = find_pii(text)
    assert len(hits) == 6
    assert all(a.end <= b.start for a, b in itertools.pairwise(hits))
    assert all(text[h.start : h.end] == h.text for h in hits)


def test_redact_without_hits_returns_text_unchanged():
    assert redact_pii("没有任何个人信息。") == ("没有任何个人信息。", [])


# --- sensitive words -----------------------------------------------------------------------------


def test_sensitive_words_case_insensitive_and_original_spelling():
    assert find_sensitive_words("Buy CHEAP pills", ["cheap", "Pills", "free"]) == ["cheap", "Pills"]


def test_sensitive_words_chinese_substrings_and_overlaps():
    words = ["敏感", "敏感词", "词汇", "禁止"]
    assert find_sensitive_words("这是敏感词汇测试", words) == ["敏感", "敏感词", "词汇"]


def test_sensitive_words_order_of_first_occurrence_and_each_once():
    assert find_sensitive_words("b a b a", ["a", "b"]) == ["b", "a"]


def test_sensitive_words_escape_regex_characters():
    assert find_sensitive_words("I like c++ and axb", ["c++", "a.b", ""]) == ["c++"]


def test_sensitive_words_no_match_and_empty_list():
    assert find_sensitive_words("clean text", ["bad"]) == []
    assert find_sensitive_words("clean text", []) == []


def test_sensitive_words_large_list():
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz数据模型训练清洗"
    words = sorted({"".join(rng.choices(alphabet, k=rng.randint(3, 8))) for _ in range(1000)})
    planted = [words[10], words[500], words[990]]
    text = f"开头 {planted[1].upper()} 中间 {planted[0]} 结尾 {planted[2]}!"
    found = find_sensitive_words(text, words)
    expected = [w for w in words if w in text.lower()]
    assert set(planted) <= set(found)
    assert sorted(found) == sorted(expected)
