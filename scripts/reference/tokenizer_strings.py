#!/usr/bin/env python3
"""The tokenizer test strings for tests/fixtures/gguf_tokenizer_reference.json.

    python3 scripts/reference/tokenizer_strings.py          # print them as a JSON list

`strings()` returns the same list of str on every run (no randomness, no dependencies): each
group below is written out or built from fixed parts, in a fixed order, with duplicates
dropped (first one kept). The groups cover what trips GGUF tokenizers up: plain prose,
accented Latin, CJK, Arabic and Hindi, emoji including ZWJ sequences and skin tones, runs of
spaces, tabs and newlines at the start, the end and in between, source code, digit runs,
punctuation runs, English contractions in every case, text that looks like special tokens of
several model families, byte-token spellings, and the empty string.
"""

import json
import sys

PROSE = [
    "Hello world",
    "Hello, world!",
    "hello world",
    "HELLO WORLD",
    "The quick brown fox jumps over the lazy dog.",
    "A small river runs past the old mill, and the children fish there every summer.",
    "Is this the right way to the station? I think so.",
    "She said: \"Bring the red book, not the blue one.\"",
    "Weather today: cloudy in the morning, sunny by noon, rain at night.",
    "Tokenizers split text into pieces; models read the pieces.",
    "one two three four five six seven eight nine ten",
    "Mr. Smith arrived at 10 a.m. on Tuesday (not Monday).",
    "e.g. i.e. etc. vs. cf.",
    "This sentence ends without a period",
    "a",
    "I",
    "x y z",
    "The end.",
    "Once upon a time there lived a curious engineer who measured everything twice.",
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism and pneumonoultramicroscopic words",
    "CamelCaseIdentifier and snake_case_identifier and kebab-case-identifier",
    "URLs like https://example.com/path?query=1&other=two#frag stay in one line.",
    "email: someone.name+tag@example.org",
    "Hash #tag and @mention and $dollar and %percent",
]

ACCENTS = [
    "café", "naïve", "résumé", "jalapeño", "Zürich", "Straße", "Ångström", "façade",
    "crème brûlée", "El niño comió piña en la montaña.",
    "Müller, Größe, Übung, Ärger, Öl",
    "Ça va? Très bien, merci.",
    "São Paulo e Lisboa são cidades.",
    "Dvořák, Łódź, Kraków, Škoda",
    "İstanbul ve Ankara; ığdır şehir",
    "Ελληνικά: Καλημέρα κόσμε",
    "Русский текст: Привет, мир!",
    "Українська: Добрий день",
    "ß ẞ ü Ü é É ñ Ñ",
    "e\u0301 (e + combining acute) vs é",
    "Å (A + ring) A\u030a",
]

CJK = [
    "你好，世界",
    "我爱自然语言处理。",
    "こんにちは世界",
    "東京は日本の首都です。",
    "カタカナとひらがな",
    "안녕하세요 세계",
    "한국어 문장입니다.",
    "中文English混合text",
    "全角：ＡＢＣ１２３",
    "漢字",
    "、。「」『』",
]

RTL_INDIC = [
    "مرحبا بالعالم",
    "اللغة العربية جميلة.",
    "שלום עולם",
    "नमस्ते दुनिया",
    "हिंदी भाषा में वाक्य।",
    "বাংলা ভাষা",
    "தமிழ் மொழி",
    "ไทย ภาษา",
    "English then عربي then English",
]

EMOJI = [
    "😀",
    "😀😀😀",
    "I love pizza 🍕!",
    "👍🏽",
    "👩‍💻",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "❤️",
    "🇫🇷🇯🇵",
    "Done ✅ or not ❌",
    "emoji🙂inside🙂words",
    "🤖 robots 🤖",
    "☃ ★ ♠ ♥ ☺",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "   ",
    "    ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n ",
    "\t\t\t",
    " a",
    "  a",
    "   a",
    "a ",
    "a  ",
    "a   ",
    " a ",
    "a b",
    "a  b",
    "a   b",
    "a\tb",
    "a\nb",
    "a\n\nb",
    "a\n\n\nb",
    "a \n b",
    "a\t \tb",
    "\ta",
    "\na",
    "a\n",
    "a\n\n",
    " Hello",
    "  Hello",
    "Hello ",
    "Hello  ",
    "   Hello   world   ",
    "\n\nHello\n\n",
    "\t Hello \t",
    "line one\nline two\nline three",
    "para one\n\npara two",
    "ends with spaces then newline   \n",
    "mixed \t \n \r\n whitespace",
    "\u00a0non-breaking\u00a0space",
    "ideographic\u3000space",
    "zero\u200bwidth",
]

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i)",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "if x == 1 and y != 2 or not z: pass",
    "lambda x: x ** 2",
    "import numpy as np\nnp.zeros((3, 4), dtype=np.float32)",
    "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
    "let v: Vec<u32> = (0..10).map(|x| x * 2).collect();",
    "impl<T: Clone> Foo<T> for Bar<'a> where T: Send {}",
    "match x { Some(v) => v, None => 0 }",
    "#[derive(Debug, Clone)]\npub struct S { a: i32 }",
    "{\"key\": \"value\", \"n\": 42, \"list\": [1, 2, 3], \"ok\": true, \"none\": null}",
    "[{\"a\":1},{\"b\":[2,3]}]",
    "<div class=\"x\"><p>Hi</p></div>",
    "SELECT name, age FROM users WHERE age >= 18 ORDER BY name;",
    "x += 1; y -= 2; z *= 3; w /= 4;",
    "a->b, c::d, e=>f, g<=h, i>=j, k!=l, m==n",
    "// comment\n/* block */\n# hash comment",
    "$ ls -la /usr/bin | grep py && echo done",
    "printf(\"%d %s\\n\", n, str);",
    "    indented four\n        indented eight",
    "\tdef tabbed():\n\t\treturn None",
    "arr[0][1] = {'k': (1, 2)}",
    "0x1F 0b1010 0o777 1e-5 3.14159 -2.5E+10",
]

NUMBERS = [
    "0", "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789",
    "1234567890", "3.14", "3,141,592", "-42", "+7", "1/2", "50%", "$1,000,000.00", "2024-01-15",
    "12:30:45", "v1.2.3", "10x", "x10", "4th", "1st 2nd 3rd", "007", "0000000",
    "98765432109876543210", "phone 555-123-4567", "1 2 3 4 5", "1.0e10", "٣٤٥", "१२३",
]

PUNCT = [
    "!!!", "???", "...", "…", "?!", "!?", "---", "--", "—", "–", "***", "###", "@@@",
    "(((", ")))", "[]", "{}", "<>", "\"\"", "''", "``", "~~~", "^^", "|||", "\\\\", "//",
    ";;", "::", ",,", "..", "!@#$%^&*()_+-=[]{}|;':\",./<>?", "«quoted»", "“smart quotes”",
    "‘single’", "¿Qué? ¡Sí!", "。。。", "a.b.c", "a,b,c", "a-b-c", "a_b_c", "wait... what?!",
]

CONTRACTION_WORDS = [
    ("it", "s"), ("don", "t"), ("you", "re"), ("we", "ve"), ("I", "m"), ("they", "ll"), ("she", "d"),
]

SPECIAL_LOOKING = [
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<|im_start|>",
    "<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|endoftext|>",
    "<bos>",
    "<eos>",
    "<bos>text<eos>",
    "<s>",
    "</s>",
    "<s>[INST] hi [/INST]",
    "<unk>",
    "<pad>",
    "<mask>",
    "<0x41>",
    "<0x0A>",
    "<0x00>",
    "text<0x41>text",
    "< start_of_turn >",
    "<start_of_turn",
    "start_of_turn>",
    "<<start_of_turn>>",
    " <start_of_turn> ",
    "<start_of_turn><start_of_turn>",
    "<|im_start|><|im_end|>",
    "a<|im_end|>b",
    "<|user|>\nHi<|end|>\n<|assistant|>\n",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "<think>\nreasoning\n</think>\n",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "[INST]",
    "<|unused|>",
    "<unused0>",
]


def contraction_strings():
    out = []
    for word, suffix in CONTRACTION_WORDS:
        for w, s in ((word, suffix), (word.upper(), suffix.upper()),
                     (word.capitalize(), suffix), (word.lower(), suffix.upper())):
            out.append(f"{w}'{s}")
        out.append(f"{word}’{suffix}")  # typographic apostrophe
        out.append(f" {word}'{suffix} ok")
    out += [
        "It's a dog's life, isn't it? They'll say we'd've known.",
        "I'M HERE AND YOU'RE THERE, WE'VE GOT IT, THEY'LL COME, SHE'D GO, DON'T STOP",
        "'s 't 're 've 'm 'll 'd",
        "'S 'T 'RE 'VE 'M 'LL 'D",
        "rock 'n' roll",
        "'quoted' and 'another'",
        "the '90s",
        "o'clock o'Neil",
        "isn't", "doesn't", "It isn't.", "She doesn't know.", "wasn't", "can't won't shan't",
    ]
    return out


def combined():
    """Mixtures of the groups above, made by fixed pairings."""
    out = []
    words = ["Hello", "café", "你好", "مرحبا", "😀", "123", "def", "<start_of_turn>", "don't", "   "]
    seps = [" ", "", "\n", "\t", "  "]
    for i, a in enumerate(words):
        for j, b in enumerate(words):
            if (i * 7 + j * 3) % 5 == 0 and a != b:
                out.append(a + seps[(i + j) % len(seps)] + b)
    for n in (1, 2, 3, 5, 8, 16, 33):
        out.append(" " * n + "x")
        out.append("x" + " " * n)
        out.append("\n" * n)
        out.append("ab" * n)
        out.append("9" * n)
    out.append("The year 1999 had 365 days and 8760 hours.")
    out.append("Prices: 3 apples for $2.50, 12 eggs for €3,20, 1kg rice ¥400.")
    out.append("Mixed: café 東京 🙂 don't 42 <bos> \t end")
    out.append(("Long repeated sentence with many words to make a longer input. " * 6).strip())
    return out


def strings():
    groups = [PROSE, ACCENTS, CJK, RTL_INDIC, EMOJI, WHITESPACE, CODE, NUMBERS, PUNCT,
              contraction_strings(), SPECIAL_LOOKING, combined()]
    seen = set()
    out = []
    for g in groups:
        for s in g:
            if s not in seen:
                seen.add(s)
                out.append(s)
    return out


if __name__ == "__main__":
    s = strings()
    json.dump(s, sys.stdout, ensure_ascii=False, indent=0)
    sys.stdout.write("\n")
    print(f"{len(s)} strings", file=sys.stderr)
