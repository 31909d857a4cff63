//! Pre-tokenizers of byte-level BPE vocabularies: how llama.cpp cuts a text into words before
//! merging, chosen by `tokenizer.ggml.pre`.
//!
//! llama.cpp runs a list of split patterns one after another, each refining the pieces the
//! previous one made (a match becomes a piece, and so does the text between matches). Most
//! patterns have a hand-written scanner there; the rest run on a "collapsed" copy of the text
//! where each non-ASCII character stands for its Unicode class. Both are reproduced here: the
//! scanners as scanners, the collapsed patterns through `fancy-regex` on the same collapsed text.

use std::ops::Range;
use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// The pre-tokenizers we implement, by their llama.cpp behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pre {
    /// llama.cpp's fallback: punctuation runs, the GPT-2 pattern, digit runs, groups of 3 digits.
    Default,
    /// The GPT-2 pattern alone.
    Gpt2,
    /// Each digit alone, then the GPT-2 pattern (StarCoder, SmolLM).
    Smollm,
    /// Llama 3: case-insensitive contractions, letters with one leading non-letter, 1-3 digits.
    Llama3,
    /// Qwen 2: as Llama 3 but digits one by one.
    Qwen2,
    /// GPT-4o (o200k): letter runs split at case changes, 1-3 digits.
    Gpt4o,
}

/// `tokenizer.ggml.pre` names we accept, with the pre-tokenizer each stands for.
const NAMES: &[(&str, Pre)] = &[
    ("default", Pre::Default),
    ("gpt-2", Pre::Gpt2),
    ("smollm", Pre::Smollm),
    ("starcoder", Pre::Smollm),
    ("llama-bpe", Pre::Llama3),
    ("llama3", Pre::Llama3),
    ("llama-v3", Pre::Llama3),
    ("qwen2", Pre::Qwen2),
    ("deepseek-r1-qwen", Pre::Qwen2),
    ("gpt-4o", Pre::Gpt4o),
    ("llama4", Pre::Gpt4o),
];

impl Pre {
    /// The pre-tokenizer `name` stands for (an absent name is llama.cpp's `default`).
    pub fn from_name(name: &str) -> Option<Pre> {
        let name = if name.is_empty() { "default" } else { name };
        NAMES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    /// The names [`Pre::from_name`] accepts, for error messages.
    pub fn supported() -> String {
        let names: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }

    /// A word that is a whole token is taken as it is, without merging (llama.cpp's
    /// `ignore_merges`).
    pub fn ignore_merges(self) -> bool {
        self == Pre::Llama3
    }

    /// Whether a BOS is added when the metadata does not say (`add_bos_token` absent).
    pub fn adds_bos_by_default(self) -> bool {
        self == Pre::Llama3
    }

    /// The words of `text`, in order; together they are `text`.
    pub fn split(self, text: &str) -> Vec<Range<usize>> {
        let chars: Vec<char> = text.chars().collect();
        if chars.is_empty() {
            return Vec::new();
        }
        let mut pieces = Vec::with_capacity(chars.len() / 4 + 1);
        pieces.push(0..chars.len());
        match self {
            Pre::Default => {
                pieces = refine(&chars, pieces, |c, out| {
                    isolate_runs(c, out, is_default_punct)
                });
                pieces = refine(&chars, pieces, |c, out| scan(c, out, Scanner::Gpt2));
                pieces = refine(&chars, pieces, |c, out| isolate_runs(c, out, is_number));
                pieces = refine(&chars, pieces, three_digits);
            }
            Pre::Gpt2 => pieces = refine(&chars, pieces, |c, out| scan(c, out, Scanner::Gpt2)),
            Pre::Smollm => {
                pieces = refine(&chars, pieces, isolate_each_number);
                pieces = refine(&chars, pieces, |c, out| scan(c, out, Scanner::Gpt2));
            }
            Pre::Llama3 => pieces = refine(&chars, pieces, |c, out| scan(c, out, Scanner::Llama3)),
            Pre::Qwen2 => pieces = refine(&chars, pieces, |c, out| scan(c, out, Scanner::Qwen2)),
            Pre::Gpt4o => pieces = refine(&chars, pieces, gpt4o),
        }
        // Char ranges to byte ranges.
        let mut offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        offsets.push(text.len());
        pieces
            .into_iter()
            .map(|r| offsets[r.start]..offsets[r.end])
            .collect()
    }
}

/// Apply `stage` to each piece: it pushes the lengths (in chars) of the sub-pieces it cuts the
/// piece into.
fn refine(
    chars: &[char],
    pieces: Vec<Range<usize>>,
    stage: impl Fn(&[char], &mut Vec<usize>),
) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut lens = Vec::new();
    for piece in pieces {
        lens.clear();
        stage(&chars[piece.clone()], &mut lens);
        let mut at = piece.start;
        for &len in &lens {
            if len > 0 {
                out.push(at..at + len);
                at += len;
            }
        }
        debug_assert_eq!(at, piece.end);
    }
    out
}

// --- Unicode classes, as llama.cpp's tables give them (general categories and White_Space).

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const PUNCT: u8 = 4;
const SPACE: u8 = 8;

struct Classes {
    ascii: [u8; 128],
    /// Sorted, disjoint (first, last, class) code point ranges.
    ranges: Vec<(u32, u32, u8)>,
}

fn unicode_class(pattern: &str) -> Vec<(u32, u32)> {
    match regex_syntax::parse(pattern).map(|h| h.into_kind()) {
        Ok(HirKind::Class(Class::Unicode(c))) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut ranges = Vec::new();
        for (pattern, class) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\p{P}", PUNCT)] {
            ranges.extend(
                unicode_class(pattern)
                    .into_iter()
                    .map(|(a, b)| (a, b, class)),
            );
        }
        ranges.sort_unstable();
        let mut ascii = [0u8; 128];
        for (i, slot) in ascii.iter_mut().enumerate() {
            *slot = lookup(&ranges, i as u32) | space_bit(char::from(i as u8));
        }
        Classes { ascii, ranges }
    })
}

fn lookup(ranges: &[(u32, u32, u8)], cp: u32) -> u8 {
    let i = ranges.partition_point(|r| r.0 <= cp);
    match i.checked_sub(1).map(|i| ranges[i]) {
        Some((_, last, class)) if cp <= last => class,
        _ => 0,
    }
}

fn space_bit(c: char) -> u8 {
    if c.is_whitespace() {
        SPACE
    } else {
        0
    }
}

fn class(c: char) -> u8 {
    let t = classes();
    match t.ascii.get(c as usize) {
        Some(&f) => f,
        None => lookup(&t.ranges, c as u32) | space_bit(c),
    }
}

fn is_number(c: char) -> bool {
    class(c) & NUMBER != 0
}

/// `[\p{P}$+<=>^~|]` on llama.cpp's collapsed text: every ASCII punctuation or symbol but the
/// backtick, and non-ASCII punctuation.
fn is_default_punct(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation() && c != '`'
    } else {
        class(c) & PUNCT != 0 && class(c) & SPACE == 0
    }
}

// --- Simple stages.

/// Maximal runs of `pred` characters are pieces, and so is the text between them.
fn isolate_runs(chars: &[char], out: &mut Vec<usize>, pred: fn(char) -> bool) {
    let mut start = 0;
    while start < chars.len() {
        let inside = pred(chars[start]);
        let len = chars[start..]
            .iter()
            .take_while(|&&c| pred(c) == inside)
            .count();
        out.push(len);
        start += len;
    }
}

/// Each number character alone; the text between them in runs.
fn isolate_each_number(chars: &[char], out: &mut Vec<usize>) {
    let mut run = 0;
    for &c in chars {
        if is_number(c) {
            if run > 0 {
                out.push(run);
                run = 0;
            }
            out.push(1);
        } else {
            run += 1;
        }
    }
    if run > 0 {
        out.push(run);
    }
}

/// `[0-9][0-9][0-9]`: groups of three ASCII digits, from the left.
fn three_digits(chars: &[char], out: &mut Vec<usize>) {
    let (mut i, mut gap) = (0, 0);
    while i < chars.len() {
        if i + 3 <= chars.len() && chars[i..i + 3].iter().all(|c| c.is_ascii_digit()) {
            if gap > 0 {
                out.push(gap);
                gap = 0;
            }
            out.push(3);
            i += 3;
        } else {
            gap += 1;
            i += 1;
        }
    }
    if gap > 0 {
        out.push(gap);
    }
}

// --- The GPT-2, Llama 3 and Qwen 2 patterns, scanned as llama.cpp scans them.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scanner {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// As Llama 3 with `\p{N}` for `\p{N}{1,3}`.
    Qwen2,
}

/// The class of the character at `i`, or 0 past the piece.
fn class_at(chars: &[char], i: usize) -> u8 {
    chars.get(i).map_or(0, |&c| class(c))
}

/// The length of a contraction (`'s`, `'ll`, ...) starting at `pos`, or 0.
fn contraction(chars: &[char], pos: usize, any_case: bool) -> usize {
    let lower = |i: usize| {
        chars
            .get(i)
            .map(|&c| if any_case { c.to_ascii_lowercase() } else { c })
    };
    if chars[pos] != '\'' || pos + 1 >= chars.len() {
        return 0;
    }
    match (lower(pos + 1), lower(pos + 2)) {
        (Some('s' | 't' | 'm' | 'd'), _) => 2,
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
        _ => 0,
    }
}

/// The end of a whitespace run at `pos`, as the trailing patterns take it: up to the last
/// newline if it holds one (Llama 3, Qwen 2), else all but the last character when more
/// text follows, else all of it. `None` when `pos` is not whitespace.
fn whitespace_end(chars: &[char], pos: usize, newlines: bool) -> Option<usize> {
    let mut end = pos;
    let mut last_newline = None;
    while class_at(chars, end) & SPACE != 0 {
        if newlines && matches!(chars[end], '\r' | '\n') {
            last_newline = Some(end + 1);
        }
        end += 1;
    }
    let n = end - pos;
    if let Some(e) = last_newline {
        return Some(e);
    }
    if n > 1 && end < chars.len() {
        return Some(end - 1);
    }
    (n > 0).then_some(end)
}

/// Cut `chars` as llama.cpp's hand-written scanner for `which` does.
fn scan(chars: &[char], out: &mut Vec<usize>, which: Scanner) {
    let other = |f: u8| f & (SPACE | LETTER | NUMBER) == 0;
    let mut pos = 0;
    while pos < chars.len() {
        let start = pos;
        pos = scan_one(chars, pos, which, other);
        out.push(pos - start);
    }
}

/// Where the word starting at `pos` ends.
fn scan_one(chars: &[char], mut pos: usize, which: Scanner, other: impl Fn(u8) -> bool) -> usize {
    let cpt = chars[pos];
    let f = class(cpt);
    let n = contraction(chars, pos, which != Scanner::Gpt2);
    if n > 0 {
        return pos + n;
    }
    let space = usize::from(cpt == ' ');
    if which == Scanner::Gpt2 {
        let f2 = if cpt == ' ' {
            class_at(chars, pos + 1)
        } else {
            f
        };
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`; the last needs a character.
        let in_class: Option<fn(u8) -> bool> = if f2 & LETTER != 0 {
            Some(|f| f & LETTER != 0)
        } else if f2 & NUMBER != 0 {
            Some(|f| f & NUMBER != 0)
        } else if pos + space < chars.len() && other(f2) {
            Some(|f| f & (SPACE | LETTER | NUMBER) == 0)
        } else {
            None
        };
        if let Some(in_class) = in_class {
            pos += space;
            while pos < chars.len() && in_class(class(chars[pos])) {
                pos += 1;
            }
            return pos;
        }
        return whitespace_end(chars, pos, false).unwrap_or(pos + 1);
    }
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    if !(cpt == '\r' || cpt == '\n' || f & NUMBER != 0)
        && (f & LETTER != 0 || class_at(chars, pos + 1) & LETTER != 0)
    {
        pos += 1;
        while class_at(chars, pos) & LETTER != 0 {
            pos += 1;
        }
        return pos;
    }
    // `\p{N}{1,3}` or `\p{N}`
    if f & NUMBER != 0 {
        let most = if which == Scanner::Llama3 { 3 } else { 1 };
        let mut len = 0;
        while len < most && class_at(chars, pos + len) & NUMBER != 0 {
            len += 1;
        }
        return pos + len;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let f2 = if cpt == ' ' {
        class_at(chars, pos + 1)
    } else {
        f
    };
    if other(f2) {
        pos += space;
        while pos < chars.len() && other(class(chars[pos])) {
            pos += 1;
        }
        while matches!(chars.get(pos), Some('\r' | '\n')) {
            pos += 1;
        }
        return pos;
    }
    whitespace_end(chars, pos, true).unwrap_or(pos + 1)
}

// --- GPT-4o: a pattern llama.cpp runs with std::regex on the collapsed text.

/// Stand-ins for non-ASCII characters in the collapsed text.
const C_LETTER: char = '\u{E002}';
const C_NUMBER: char = '\u{E001}';
const C_OTHER: char = '\u{E000}';

fn collapse(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    let f = class(c);
    if f & SPACE != 0 {
        '\u{0B}'
    } else if f & LETTER != 0 {
        C_LETTER
    } else if f & NUMBER != 0 {
        C_NUMBER
    } else {
        C_OTHER
    }
}

fn gpt4o_regex() -> Option<&'static fancy_regex::Regex> {
    static RE: OnceLock<Option<fancy_regex::Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        // On the collapsed text, "a letter that is not a-z" is [A-Z] or a non-ASCII letter, and
        // "a letter that is not A-Z" is [a-z] or a non-ASCII letter.
        let upper = format!("[A-Z{C_LETTER}]");
        let lower = format!("[a-z{C_LETTER}]");
        let lead = format!("[^\\r\\nA-Za-z0-9{C_LETTER}{C_NUMBER}]");
        let suffix = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?";
        let pattern = format!(
            "{lead}?{upper}*{lower}+{suffix}|{lead}?{upper}+{lower}*{suffix}|[0-9{C_NUMBER}]{{1,3}}| ?[^\\sA-Za-z0-9{C_LETTER}{C_NUMBER}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
        );
        fancy_regex::Regex::new(&pattern).ok()
    })
    .as_ref()
}

fn gpt4o(chars: &[char], out: &mut Vec<usize>) {
    let collapsed: String = chars.iter().map(|&c| collapse(c)).collect();
    let Some(re) = gpt4o_regex() else {
        out.push(chars.len());
        return;
    };
    // Byte offsets in `collapsed` to char counts.
    let (mut byte, mut at) = (0usize, 0usize);
    let mut count_to = |to: usize| {
        at += collapsed[byte..to].chars().count();
        byte = to;
        at
    };
    let mut prev = 0;
    for m in re.find_iter(&collapsed) {
        let Ok(m) = m else { break };
        let start = count_to(m.start());
        let end = count_to(m.end());
        out.push(start - prev);
        out.push(end - start);
        prev = end;
    }
    out.push(chars.len() - prev);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: Pre, text: &str) -> Vec<&str> {
        pre.split(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_pattern() {
        assert_eq!(
            words(Pre::Gpt2, "Hello world's  end 123!!  \n"),
            ["Hello", " world", "'s", " ", " end", " 123", "!!", "  \n"]
        );
    }

    #[test]
    fn smollm_splits_digits() {
        assert_eq!(
            words(Pre::Smollm, "in 2024, x1"),
            ["in", " ", "2", "0", "2", "4", ",", " x", "1"]
        );
    }

    #[test]
    fn default_groups_digits_and_punctuation() {
        assert_eq!(
            words(Pre::Default, "a 12345 b... `c`"),
            ["a", " ", "123", "45", " b", "...", " `", "c", "`"]
        );
    }

    #[test]
    fn llama3_pattern() {
        assert_eq!(
            words(Pre::Llama3, "I'LL pay 12345 dollars!\n\n  ok"),
            ["I", "'LL", " pay", " ", "123", "45", " dollars", "!\n\n", " ", " ok"]
        );
        assert_eq!(words(Pre::Qwen2, "x 12"), ["x", " ", "1", "2"]);
        assert_eq!(words(Pre::Llama3, "a \n b"), ["a", " \n", " b"]);
    }

    #[test]
    fn gpt4o_pattern() {
        assert_eq!(
            words(Pre::Gpt4o, "HelloWorld HELLO isn't 12345 ÉtéÀ"),
            ["Hello", "World", " HELLO", " isn't", " ", "123", "45", " ÉtéÀ"]
        );
    }

    #[test]
    fn names() {
        assert_eq!(Pre::from_name(""), Some(Pre::Default));
        assert_eq!(Pre::from_name("llama-bpe"), Some(Pre::Llama3));
        assert_eq!(Pre::from_name("nope"), None);
        assert!(Pre::supported().contains("qwen2"));
    }
}
